"""Search algorithms by `type:` (random, optuna, hyperopt); the last two are optional extras."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from raylm.errors import UserError
from raylm.tuning.config import TuningConfig

# type -> (module Tune needs, pip extra that installs it)
_EXTRAS = {"optuna": ("optuna", "raylm[optuna]"), "hyperopt": ("hyperopt", "raylm[hyperopt]")}


def require_extra(kind: str) -> None:
    """UserError (exit 2) with the install line when the searcher's package is missing."""
    if kind not in _EXTRAS:
        return
    module, extra = _EXTRAS[kind]
    if importlib.util.find_spec(module) is None:
        raise UserError(
            f"tuning.searcher.type={kind} needs the '{module}' package, which is not installed",
            hint=f"pip install '{extra}' (or choose tuning.searcher.type=random)",
        )


def _random(t: TuningConfig, max_concurrent: int) -> Any:
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Tune's default generator (random sampling + grid expansion), seeded for repeatable sweeps.
    return BasicVariantGenerator(max_concurrent=max_concurrent, random_state=t.searcher.seed)


def _limited(searcher: Any, max_concurrent: int) -> Any:
    from ray.tune.search import ConcurrencyLimiter

    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def _optuna(t: TuningConfig, max_concurrent: int) -> Any:
    from ray.tune.search.optuna import OptunaSearch

    return _limited(OptunaSearch(seed=t.searcher.seed), max_concurrent)


def _hyperopt(t: TuningConfig, max_concurrent: int) -> Any:
    from ray.tune.search.hyperopt import HyperOptSearch

    return _limited(HyperOptSearch(random_state_seed=t.searcher.seed), max_concurrent)


SEARCHERS: dict[str, Callable[[TuningConfig, int], Any]] = {
    "random": _random,
    "optuna": _optuna,
    "hyperopt": _hyperopt,
}


def build_searcher(tuning: TuningConfig, max_concurrent: int) -> Any:
    """The Tune search algorithm, already limited to `max_concurrent` running trials.

    The limit lives here rather than in TuneConfig.max_concurrent_trials because Tune ignores
    that field when it is handed a generator such as the seeded BasicVariantGenerator.
    """
    require_extra(tuning.searcher.type)
    return SEARCHERS[tuning.searcher.type](tuning, max_concurrent)
