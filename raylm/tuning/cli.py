"""`raylm tune CONFIG [overrides...]`: one entry point, callable from tests and the CLI."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import typer

from raylm._cli import setup_logging, user_errors
from raylm.cli_options import CONFIG, OVERRIDES, RAY_ADDRESS, VERBOSE, load
from raylm.cluster import connect
from raylm.config import RootConfig
from raylm.errors import UserError
from raylm.preflight import preflight
from raylm.tuning.searchers import require_extra
from raylm.tuning.space import space_problems

if TYPE_CHECKING:  # raylm.tuning.driver imports ray.tune (~1.5 s): not for `raylm --help`
    from raylm.tuning.driver import TrainerFactory


def main(cfg: RootConfig, *, address: str | None = None, factory: TrainerFactory | None = None) -> int:
    """Run or resume the sweep; print the table and where the outputs are.

    0: at least one trial produced a usable result; 1: none did; 130: the sweep was
    interrupted (run the same command again to resume).
    """
    from raylm.tuning.results import markdown  # ray.tune
    from raylm.tuning.sweep import run_sweep

    with connect(cfg.cluster, address):
        summary = run_sweep(cfg, factory=factory)
    print(markdown(summary))
    for row in summary.failed:
        print(f"failed: trial {row.trial_id}: {row.reason}")
    if summary.interrupted:
        print(f"sweep interrupted; run the same command again to resume ({summary.sweep_dir})")
        return 130
    if summary.best_trial is None:
        print(f"no trial finished with a usable {summary.metric}; see {summary.sweep_dir}")
        return 1
    best = summary.row(summary.best_trial)
    print(f"best: trial {best.trial_id} {summary.metric}={best.final:.4g}")
    print(f"best config: {summary.best_config}  (raylm train {summary.best_config})")
    if summary.best_model:
        print(f"best model (HF): {summary.best_model}")
    for p in summary.plots:
        print(f"plot: {p}")
    return 0


@user_errors
def tune_cmd(config: str = CONFIG, overrides: list[str] = OVERRIDES, address: str = RAY_ADDRESS,
             verbose: bool = VERBOSE) -> None:
    """Sweep hyperparameters with Ray Tune (the config's `tuning` section); rerun to resume."""
    cfg = load(config, overrides, "tune", check=lambda c: check_before_ray(c, config))
    from raylm.tuning.driver import sweep_paths  # ray.tune, after the config is known good

    setup_logging(verbose, os.path.join(str(sweep_paths(cfg).sweep_dir), "ray.log"))
    code = main(cfg, address=address)
    if code:
        raise typer.Exit(code)


def check_before_ray(cfg: RootConfig, origin: str = "config") -> None:
    """Every input problem (search space, searcher extra, data, model) in one UserError, in a
    second, before a cluster starts: `raylm tune`'s preflight."""
    if cfg.tuning is None:
        raise UserError(f"{origin}: no 'tuning' section to sweep", hint="see configs/tune-*.yaml")
    problems = space_problems(cfg.tuning, cfg.model_dump(mode="json"))
    hint = "see configs/tune-*.yaml for a valid search space" if problems else None
    for check in (lambda: preflight(cfg, "tune"), lambda: require_extra(cfg.tuning.searcher.type)):  # type: ignore[union-attr]
        try:
            check()
        except UserError as err:
            problems += err.problems
            hint = hint or err.hint
    if problems:
        raise UserError(problems, hint=hint)

