"""Ray Train: the per-worker loop, tasks, checkpoint state, metrics, export.

Names resolve lazily so that `raylm.config` can import the section models without pulling in
torch and Ray (and without an import cycle).
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ModelConfig": "raylm.trainers.config", "TrackingConfig": "raylm.trainers.config",
    "TrainerConfig": "raylm.trainers.config", "build_trainer": "raylm.trainers.driver",
    "export_model": "raylm.trainers.driver", "train": "raylm.trainers.driver",
    "train_loop_per_worker": "raylm.trainers.loop",
    "get_task": "raylm.tasks.registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
