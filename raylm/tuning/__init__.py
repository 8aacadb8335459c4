"""Ray Tune sweeps over any config key: search spaces, schedulers, searchers, driver, outputs.

Only the config models load eagerly: raylm.config imports them, and loading a config must
neither import Ray nor import raylm.config back (the rest is resolved on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

from raylm.tuning.config import (
    ParamSpec,
    ResourcesConfig,
    SchedulerConfig,
    SearcherConfig,
    TuningConfig,
)

_LAZY = {
    "check_space": "raylm.tuning.space",
    "param_space": "raylm.tuning.space",
    "space_problems": "raylm.tuning.space",
    "run_sweep": "raylm.tuning.sweep",
    "main": "raylm.tuning.cli",
    "tune_cmd": "raylm.tuning.cli",
}

__all__ = [
    "ParamSpec",
    "ResourcesConfig",
    "SchedulerConfig",
    "SearcherConfig",
    "TuningConfig",
    "check_space",
    "main",
    "param_space",
    "run_sweep",
    "space_problems",
    "tune_cmd",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'raylm.tuning' has no attribute {name!r}")
