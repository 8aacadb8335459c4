"""Connect to Ray: an embedded local Ray by default, or an existing cluster."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from raylm.cluster.config import ClusterConfig

log = logging.getLogger(__name__)


def resolve_address(cfg: ClusterConfig, address: str | None = None) -> str | None:
    """CLI flag > config > RAY_ADDRESS; None means: start an embedded local Ray."""
    return address or cfg.address or os.environ.get("RAY_ADDRESS") or None


_EMBEDDED: dict[str, int] = {}  # {"cores": n} while this process runs the embedded Ray it started


def machine_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def usable_cpus() -> int:
    """CPUs a pool of CPU-bound actors should size itself by: the cluster's CPU resources, but on the
    embedded Ray (whose logical CPUs oversubscribe a small machine on purpose: max(cores, 8)) the
    machine's real cores. `raylm prepare` on 2 cores started 8 tokenizer actors: 29.2 s for 100 MB,
    against 18.5 s with 2."""
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return min(cpus, _EMBEDDED["cores"]) if "cores" in _EMBEDDED else cpus


def embedded_num_cpus(cfg: ClusterConfig) -> int:
    # Logical CPUs: training workers and Ray Data tasks oversubscribe a small machine on purpose.
    return cfg.num_cpus or max(os.cpu_count() or 1, 8)


def init_kwargs(cfg: ClusterConfig, address: str | None = None) -> dict:
    addr = resolve_address(cfg, address)
    from raylm._cli import QUIET_WORKER_ENV, verbose

    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore::DeprecationWarning",
                        **({} if verbose() else QUIET_WORKER_ENV)}}
    quiet = {} if verbose() else {"logging_config": _quiet_logging()}
    if addr:
        if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):  # inside a Ray job: its runtime_env applies; Ray refuses to merge another
            return {"address": addr, "log_to_driver": True, **quiet}
        return {"address": addr, "runtime_env": env, "log_to_driver": True, **quiet}
    kw = {
        "num_cpus": embedded_num_cpus(cfg),
        "include_dashboard": cfg.include_dashboard,
        "dashboard_host": cfg.dashboard_host,
        "runtime_env": env,
        # Workers' prints (raylm's rank-0 progress lines) reach this console through it.
        "log_to_driver": True,
        **quiet,
    }
    if cfg.object_store_memory_mb:
        kw["object_store_memory"] = cfg.object_store_memory_mb * 1024 * 1024
    return kw


STARTUP_ATTEMPTS = 3
WORKER_NICENESS_ENV = "RAY_worker_niceness"  # read by the raylet it starts (RayConfig worker_niceness)
# How often Ray Train's controller polls its workers (default 2 s): how long a finished (or failed) run
# waits before the controller sees it. Read by the controller, a process of the raylet started here.
HEALTH_CHECK_ENV, EMBEDDED_HEALTH_CHECK_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"
# How long `ray.init` waits for the dashboard it starts (Ray's default 60 s). The dashboard is ~10 Python
# processes; on a loaded 2-core machine they took 2-3 minutes (seen in a CI run with two busy processes
# beside it) and `ray.init` failed. A broken dashboard (a missing dependency) exits, which Ray sees at
# once: a longer wait only ever waits for a slow one.
DASHBOARD_TIMEOUT_ENV, EMBEDDED_DASHBOARD_TIMEOUT_S = "RAY_DASHBOARD_STARTUP_TIMEOUT_S", "600"


def init_ray(**kw: Any) -> None:
    """`ray.init`, retried when a new local node does not register in time.

    Ray gives a starting raylet a fixed 30 s to register with the GCS ("The current node timed out
    during startup"); on a loaded machine (a shared CI runner, a laptop compiling) that can pass
    with nothing wrong. The half-started node's processes are stopped before the next attempt.
    """
    import ray

    starts_a_node = kw.get("address") in (None, "local")  # not joining a running cluster
    if starts_a_node:
        _wait_longer_for_the_dashboard()
    if "address" not in kw:
        # Ray starts its workers at nice 15 (RayConfig worker_niceness), so on a machine with any other
        # busy process (a shared CI runner, a laptop compiling) the training workers get a few percent of
        # a core and a 2-minute run takes an hour. The embedded Ray is the user's job: its workers run at
        # the priority of the command that started it (RAY_worker_niceness set by the user still wins).
        os.environ.setdefault(WORKER_NICENESS_ENV, "0")
        # One machine, a few workers: a poll every 0.5 s costs nothing and a short fine-tune ends ~2 s sooner
        # (SST-2, 30 steps: checkpoint reported to the result in the driver 4.6 s -> 1.3 s).
        os.environ.setdefault(HEALTH_CHECK_ENV, EMBEDDED_HEALTH_CHECK_S)
    for attempt in range(1, STARTUP_ATTEMPTS + 1):
        try:
            ray.init(**kw)
            return
        except Exception as e:
            if "timed out during startup" not in str(e) or not starts_a_node or attempt == STARTUP_ATTEMPTS:
                raise
            log.warning("ray: the local node did not start within Ray's 30 s (a loaded machine?); "
                        "retrying (%d of %d)", attempt + 1, STARTUP_ATTEMPTS)
            _stop_started_ray_processes()
            with contextlib.suppress(Exception):
                ray.shutdown()


def _wait_longer_for_the_dashboard() -> None:
    """Ray reads RAY_DASHBOARD_STARTUP_TIMEOUT_S once, when it is imported; a value the user set wins."""
    from ray._private import ray_constants

    os.environ.setdefault(DASHBOARD_TIMEOUT_ENV, EMBEDDED_DASHBOARD_TIMEOUT_S)
    with contextlib.suppress(ValueError):
        ray_constants.RAY_DASHBOARD_STARTUP_TIMEOUT_S = int(os.environ[DASHBOARD_TIMEOUT_ENV])


def _stop_started_ray_processes() -> None:
    """The GCS, raylet, dashboard... this process started for a node that never came up."""
    import psutil

    kids = [p for p in psutil.Process().children(recursive=True)
            if any(k in " ".join(_cmdline(p)) for k in ("ray", "gcs_server", "raylet", "plasma"))]
    for p in kids:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(kids, timeout=10)


def _cmdline(p: Any) -> list[str]:
    try:
        return p.cmdline()
    except Exception:
        return []


@contextlib.contextmanager
def connect(cfg: ClusterConfig, address: str | None = None) -> Iterator[None]:
    """Start or join Ray for the duration of a command; reuse one already initialised."""
    import ray

    from raylm._cli import route_library_logs

    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    kw = init_kwargs(cfg, address)
    log.info("ray: %s", f"joining {kw['address']}" if "address" in kw else f"embedded, {kw['num_cpus']} CPUs")
    init_ray(**kw)
    if "address" not in kw:
        _EMBEDDED["cores"] = machine_cores()
        _start_autoscaling_coordinator()
    _quiet_data()
    route_library_logs()  # ray.data set up its own console handler on import
    try:
        yield
    finally:
        _EMBEDDED.clear()
        ray.shutdown()


def _start_autoscaling_coordinator() -> None:
    """Start Ray Data's AutoscalingCoordinator actor now, without waiting for it (embedded Ray only).

    Ray Train's controller blocks on a request to this named actor before it starts any worker, and
    creates it itself when missing: a new worker process started only then (~2 s of `raylm train`'s
    start-up on 2 cores). Created here, its process starts while the driver prepares and the controller
    starts, and is up by the time the controller asks. Best effort: an internal Ray API, so a Ray that
    moved it just leaves the controller to create it as before."""
    try:
        from ray.data._internal.cluster_autoscaler import get_or_create_autoscaling_coordinator

        get_or_create_autoscaling_coordinator()
    except Exception as e:  # noqa: BLE001 - an optimisation only
        log.debug("ray: AutoscalingCoordinator not started ahead (%s)", e)


def _quiet_logging() -> object:
    """Ray's Python loggers in every task and actor of the job at WARNING: their INFO chatter
    (Ray Data's "execution finished", ...) stays in Ray's session logs; `--verbose` keeps it."""
    import ray

    return ray.LoggingConfig(log_level="WARNING")


def _quiet_data() -> None:
    """raylm prints its own progress lines; Ray Data's bars would interleave with them."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
