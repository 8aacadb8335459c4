"""How many trials fit at once: each trial's Train workers must all be placeable.

Under Train V2 the Tune trial is a thin driver; its TorchTrainer asks the cluster for the
workers' resources on its own. Tune does not know about them, so without a limit it would
start more trials than the cluster can place and they would wait on each other's workers.
"""

from __future__ import annotations

import math

from raylm.errors import UserError
from raylm.tuning.config import ResourcesConfig


def per_trial(res: ResourcesConfig) -> dict[str, float]:
    """CPUs and GPUs one trial's worker group holds."""
    return {
        "CPU": res.workers_per_trial * res.cpus_per_worker,
        "GPU": res.workers_per_trial * res.gpus_per_worker,
    }


def fit_trials(cluster: dict[str, float], res: ResourcesConfig) -> int:
    """Trials whose worker groups fit in `cluster` (ray.cluster_resources()) at the same time."""
    need = per_trial(res)
    counts = [math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
    return min(counts) if counts else 1


def max_concurrent(cluster: dict[str, float], res: ResourcesConfig, requested: int | None) -> int:
    """The concurrency limit: what fits, lowered to `requested` when that is smaller."""
    fits = fit_trials(cluster, res)
    if fits < 1:
        need = per_trial(res)
        have = {k: cluster.get(k, 0.0) for k in need}
        raise UserError(
            f"one trial needs {need['CPU']:g} CPU and {need['GPU']:g} GPU "
            f"but the cluster has {have['CPU']:g} CPU and {have['GPU']:g} GPU",
            hint="lower tuning.resources.workers_per_trial / cpus_per_worker / gpus_per_worker",
        )
    return min(fits, requested) if requested else fits
