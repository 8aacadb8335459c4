"""Shared fixtures: one real local Ray per test session (ray.init costs ~9 s on 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray workers at the test session's priority, as raylm's embedded start does (raylm.cluster._connect): also
# for the `ray start --head` clusters and CLI subprocesses tests start (Ray's default nice 15 starves them
# behind any other busy process on a shared CI machine).
os.environ.setdefault("RAY_worker_niceness", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # as the embedded start, too
SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
TESTS = Path(__file__).resolve().parent
# A test's tier is its folder: tests/unit -> unit (no Ray), tests/integration -> ray (a real local
# Ray), tests/e2e -> e2e (the CLI as a user runs it). `slow` and `gpu` stay explicit on the test.
FOLDER_MARKS = {"unit": "unit", "integration": "ray", "e2e": "e2e"}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path)).resolve()
        if TESTS in path.parents:
            mark = FOLDER_MARKS.get(path.relative_to(TESTS).parts[0])
            if mark:
                item.add_marker(getattr(pytest.mark, mark))


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray cluster shared by every integration test (8 logical CPUs)."""
    import ray

    from raylm.cluster._connect import init_ray

    if not ray.is_initialized():
        init_ray(  # ray.init, retried if the node is slow to start on a loaded machine
            # A new cluster of this session's own, never one another process started with
            # `ray start` on the same machine (CI machines are shared).
            address="local",
            num_cpus=8,
            # Ray Train frees the placement groups of trials Tune stops through the dashboard's
            # state API (see raylm.tuning.sweep.check_trial_cleanup); bound to localhost.
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
            log_to_driver=True,
        )
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture
def shared_dir():
    path = os.environ.get("RAYLM_SHARED", SHARED)
    if not os.path.isdir(path):
        pytest.skip(f"../shared not found at {path} (set RAYLM_SHARED)")
    return path


@pytest.fixture(scope="module")
def crds() -> Path:
    """The KubeRay v1.7 CRDs in ../shared (RAYLM_SHARED); tests that need them skip without them."""
    path = Path(os.environ.get("RAYLM_SHARED", SHARED)) / "kuberay" / "crds"
    if not path.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {path} (set RAYLM_SHARED to the shared/ folder)")
    return path


@pytest.fixture(scope="module")
def schemas(crds: Path) -> dict:
    from raylm.cluster._schema import load_crds

    return load_crds(crds)
