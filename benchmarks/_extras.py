"""What the benchmarks share: a reference side that needs the `bench` extra says so in one line (exit 2), not a
traceback; a reference script run inside Ray Train (the platform without raylm)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable
from typing import Any


def require(*modules: str, extra: str = "bench") -> None:
    """Exit 2 naming the missing modules and the install command, when any of `modules` is not installed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        print(f"{sys.argv[0]}: needs {', '.join(missing)} (the reference side): pip install -e '.[{extra}]'",
              file=sys.stderr)
        raise SystemExit(2)


def on_ray_train(work: Callable[[], dict], threads: int, out: str, name: str) -> dict:
    """`work()` (a reference script: the HF Trainer, TRL) inside Ray Train, TorchTrainer with 1 worker of `threads`
    CPUs, on an embedded Ray started as raylm starts its own (8 logical CPUs at least, workers at nice 0, no
    dashboard, health checks every 0.5 s): what a Ray user runs without raylm. It shares raylm's platform (Ray's
    processes beside the worker, the Train controller, the worker's start), so raylm against it is raylm's own
    cost. Returns `work()`'s result."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    os.environ.setdefault("RAY_worker_niceness", "0")  # as raylm's embedded start (raylm.cluster._connect)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    for attempt in range(3):  # as raylm: a loaded machine can miss Ray's node start-up timeout
        try:
            ray.init(num_cpus=max(os.cpu_count() or 1, 8), include_dashboard=False,
                     runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
            break
        except Exception:  # noqa: BLE001
            ray.shutdown()
            if attempt == 2:
                raise

    def loop(config: dict) -> None:
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump(work(), f)

    os.makedirs(out, exist_ok=True)
    TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": threads}),
                 run_config=RunConfig(name=name, storage_path=os.path.join(out, "ray_runs"))).fit()
    ray.shutdown()
    with open(os.path.join(out, "result.json")) as f:
        return json.load(f)


def step_clock() -> Any:
    """A transformers TrainerCallback that records when each optimizer step ends (`.ends`, time.time())."""
    import time

    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN003
            self.ends.append(time.time())

    return StepClock()
