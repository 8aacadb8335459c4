"""Connect to Ray: an embedded local Ray by default, or an existing cluster."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from raylm.cluster.config import ClusterConfig

log = logging.getLogger(__name__)


def resolve_address(cfg: ClusterConfig, address: str | None = None) -> str | None:
    """CLI flag > config > RAY_ADDRESS; None means: start an embedded local Ray."""
    return address or cfg.address or os.environ.get("RAY_ADDRESS") or None


def embedded_num_cpus(cfg: ClusterConfig) -> int:
    # Logical CPUs: training workers and Ray Data tasks oversubscribe a small machine on purpose.
    return cfg.num_cpus or max(os.cpu_count() or 1, 8)


def init_kwargs(cfg: ClusterConfig, address: str | None = None) -> dict:
    addr = resolve_address(cfg, address)
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore::DeprecationWarning"}}
    if addr:
        if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):  # inside a Ray job: its runtime_env applies; Ray refuses to merge another
            return {"address": addr, "log_to_driver": True}
        return {"address": addr, "runtime_env": env, "log_to_driver": True}
    kw = {
        "num_cpus": embedded_num_cpus(cfg),
        "include_dashboard": cfg.include_dashboard,
        "dashboard_host": cfg.dashboard_host,
        "runtime_env": env,
        "log_to_driver": True,
    }
    if cfg.object_store_memory_mb:
        kw["object_store_memory"] = cfg.object_store_memory_mb * 1024 * 1024
    return kw


@contextlib.contextmanager
def connect(cfg: ClusterConfig, address: str | None = None) -> Iterator[None]:
    """Start or join Ray for the duration of a command; reuse one already initialised."""
    import ray

    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    kw = init_kwargs(cfg, address)
    log.info("ray: %s", f"joining {kw['address']}" if "address" in kw else f"embedded, {kw['num_cpus']} CPUs")
    ray.init(**kw)
    _quiet_data()
    try:
        yield
    finally:
        ray.shutdown()


def _quiet_data() -> None:
    """raylm prints its own progress lines; Ray Data's bars would interleave with them."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
