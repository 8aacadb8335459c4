"""The Tune driver: one trial = one Ray Train V2 run built from the base config + the sample.

    Tuner(driver_fn, param_space={"train_loop_config": {...}}).fit()
      trial -> driver_fn(config) -> build_trainer(trial_cfg, callbacks=[TuneReportCallback()]).fit()

`Tuner(trainer)` is deprecated under Train V2; the trial function builds its own TorchTrainer.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raylm.cluster.storage import is_remote
from raylm.config import RootConfig, validate
from raylm.tuning.config import TuningConfig
from raylm.tuning.schedulers import EXPLOIT_KEY, clone_run_name
from raylm.tuning.space import apply_dotted, overrides_of

# The loop resumes from this checkpoint path when its own run has none (a PBT clone). Train V2
# dropped TorchTrainer(resume_from_checkpoint=...), so it travels in train_loop_config, through
# build_trainer(loop_overrides=...).
RESUME_KEY = "resume_from"
TrainerFactory = Callable[..., Any]


@dataclass(frozen=True)
class SweepPaths:
    """Where a sweep lives: Tune's experiment dir (= the sweep dir) and the Train runs."""

    root: str  # Tune storage_path (absolute)
    name: str

    @property
    def sweep_dir(self) -> Path:
        return Path(self.root) / self.name

    @property
    def train_storage(self) -> str:
        return str(self.sweep_dir / "train")


def sweep_paths(cfg: RootConfig) -> SweepPaths:
    t = cfg.tuning or TuningConfig()
    root = t.storage_path or os.path.join(cfg.cluster.storage_path, "tune")
    # Tune needs an absolute path (or a URI) for its storage.
    if not is_remote(root):
        root = os.path.abspath(root)
    return SweepPaths(root=root, name=t.name)


def trial_raw(base_raw: dict[str, Any], overrides: dict[str, Any], tuning: TuningConfig,
              trial_name: str) -> dict[str, Any]:
    """The trial's config: base + sample, with the sweep's resources and tracking group."""
    res = tuning.resources
    raw = apply_dotted(base_raw, overrides)
    raw = apply_dotted(raw, {
        "trainer.scaling.num_workers": res.workers_per_trial,
        "trainer.scaling.cpus_per_worker": res.cpus_per_worker,
        "trainer.scaling.use_gpu": res.gpus_per_worker > 0,
        "trainer.run_name": trial_name,
        # Retrying a diverged run repeats it; Tune's trial_max_failures owns retries.
        "trainer.scaling.max_failures": 0,
        # W&B: one run per trial, grouped by sweep (mode stays what the base config says).
        "tracking.wandb.group": tuning.name,
    })
    tags = list(((raw.get("tracking") or {}).get("wandb") or {}).get("tags") or [])
    raw["tracking"]["wandb"]["tags"] = tags + [t for t in ("tune", tuning.name) if t not in tags]
    raw["tuning"] = None
    return raw


def trial_data_dir(base_raw: dict[str, Any], raw: dict[str, Any]) -> str | None:
    """A prepared dir of the trial's own when the sample changes the data section (block_size,
    tokenizer, ...): shards differ per data config, and trials must not rewrite each other's."""
    if raw.get("data") == base_raw.get("data"):
        return None
    digest = hashlib.sha1(repr(sorted(raw["data"].items())).encode()).hexdigest()[:8]
    return f"{raw['data']['prepared_dir']}-{digest}"


def prepare_trial_data(cfg: RootConfig) -> None:
    """Prepare the trial's shards once, under a lock (two trials may share a data config)."""
    import fcntl

    from raylm.tasks.registry import prepare_data

    os.makedirs(os.path.dirname(cfg.data.prepared_dir) or ".", exist_ok=True)
    with open(cfg.data.prepared_dir + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        prepare_data(cfg.data, cfg.trainer.task)


def train_run_name(trial_id: str, resume_from: str | None) -> str:
    """The Train run of a trial; a PBT clone gets a fresh run so Train does not auto-resume
    the trial's own older checkpoints instead of the donor's."""
    if not resume_from:
        return trial_id
    return f"{trial_id}-from-{hashlib.sha1(resume_from.encode()).hexdigest()[:8]}"


def _resume_point(config: dict[str, Any], paths: SweepPaths, trial_id: str) -> tuple[str | None, str]:
    """(checkpoint to restore, Train run name) of a trial: a PBT clone restores the checkpoint
    its exploit recorded (schedulers.EXPLOIT_KEY); any other trial resumes its own run by name."""
    from ray import tune

    exploit = config.get(EXPLOIT_KEY)
    if exploit:
        return exploit["checkpoint"], clone_run_name(trial_id, exploit["n"])
    ckpt = tune.get_checkpoint()
    resume_from = ckpt.path if ckpt is not None else None
    # Tuner.restore of a trial resumes its own Train run by name; only a clone needs a path.
    if _own_checkpoint(resume_from, paths.train_storage, trial_id):
        resume_from = None
    return resume_from, train_run_name(trial_id, resume_from)


def _write_exploit(config: dict[str, Any], paths: SweepPaths, run_name: str) -> None:
    """The clone's run dir keeps the exploit it started from, beside the metrics whose first
    record (`resumed_from`) says which step the loop restored."""
    if config.get(EXPLOIT_KEY) and not is_remote(paths.train_storage):
        run_dir = os.path.join(paths.train_storage, run_name)
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "exploit.json"), "w") as f:
            json.dump(config[EXPLOIT_KEY], f)


def _own_checkpoint(resume_from: str | None, train_storage: str, trial_id: str) -> bool:
    if not resume_from:
        return False
    rel = os.path.relpath(resume_from, train_storage)
    return rel.split(os.sep)[0] == trial_id


def make_driver(base_raw: dict[str, Any], tuning: TuningConfig, paths: SweepPaths,
                factory: TrainerFactory, prepare_data: bool = True) -> Callable[[dict[str, Any]], None]:
    """The Tune trainable: validate the trial config, build the TorchTrainer, fit.

    `base_raw` must already hold absolute paths (absolute_paths) and prepared shards.
    """

    def driver(config: dict[str, Any]) -> None:
        from ray import tune
        from ray.tune.integration.ray_train import TuneReportCallback

        ctx = tune.get_context()
        trial_id, trial_name = ctx.get_trial_id(), ctx.get_trial_name()
        raw = trial_raw(base_raw, overrides_of(config), tuning, trial_name)
        own_data = trial_data_dir(base_raw, raw)
        if own_data:
            raw["data"]["prepared_dir"] = own_data
        cfg = validate(raw, origin=trial_name)
        if own_data and prepare_data:
            prepare_trial_data(cfg)
        resume_from, run_name = _resume_point(config, paths, trial_id)
        _write_exploit(config, paths, run_name)
        extra = {"loop_overrides": {RESUME_KEY: resume_from}} if resume_from else {}
        trainer = factory(cfg, callbacks=[TuneReportCallback()], name=run_name,
                          storage_path=paths.train_storage, **extra)
        trainer.fit()

    driver.__name__ = "raylm_trial"
    return driver


def is_bad_metric(value: Any) -> bool:
    return isinstance(value, float) and (math.isnan(value) or math.isinf(value))
