"""`raylm train`: build a TorchTrainer from the config, fit, export the final model."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from raylm.cluster.storage import is_remote
from raylm.config import RootConfig, absolute_paths, save_config
from raylm.datasets.sharding import sharding_for
from raylm.errors import UserError
from raylm.tasks.objectives import best_checkpoint_rule

# The task registry, the loop and export import torch and transformers (~3 s on 2 cores): they are imported
# where used, after `raylm train` has started Ray beside the preflight (start-up time), not here.

log = logging.getLogger(__name__)


def storage_root(cfg: RootConfig, storage_path: str | None = None) -> str:
    path = storage_path or cfg.cluster.storage_path
    return path if is_remote(path) else os.path.abspath(path)


def _train_logging() -> object:
    """Ray Train's console at WARNING unless --verbose: "Reporting training result N" and
    "Checkpoint successfully created" stay in Ray's session logs (logs/train/)."""
    from ray.train import LoggingConfig

    from raylm._cli import verbose

    return LoggingConfig(log_level="INFO" if verbose() else "WARNING")


def local_run_dir(cfg: RootConfig, name: str | None = None, storage_path: str | None = None) -> str:
    """Where the driver keeps config, metrics and plots (the run directory when storage is local)."""
    root = storage_root(cfg, storage_path)
    base = root if not is_remote(root) else os.path.abspath(os.path.join("runs", "_remote"))
    return os.path.join(base, name or cfg.trainer.run_name)


def check_compatible(cfg: RootConfig, manifest: dict) -> None:
    from raylm.tasks.registry import get_task  # task modules import torch: the CLI imports this module at start
    from raylm.trainers.adapters import check as adapter_problems

    task = get_task(cfg.trainer.task)
    problems = task.check_prepared(cfg, manifest) + task.check_config(cfg) + adapter_problems(cfg)
    if problems:
        raise UserError(problems)


def scaling_config(cfg: RootConfig) -> Any:
    import ray
    from ray.train import ScalingConfig

    s = cfg.trainer.scaling
    low = s.num_workers if isinstance(s.num_workers, int) else s.num_workers[0]
    gpu = s.use_gpu if isinstance(s.use_gpu, bool) else ray.cluster_resources().get("GPU", 0) >= low
    elastic = {} if isinstance(s.num_workers, int) else {"elastic_resize_monitor_interval_s": s.elastic_resize_s}
    return ScalingConfig(num_workers=s.num_workers, use_gpu=gpu,
                         resources_per_worker={**s.resources_per_worker, "CPU": s.cpus_per_worker}, **elastic)


def failure_config(cfg: RootConfig) -> Any:
    """Failures of the run and preemptions have separate budgets (Ray charges a restart to
    max_preemption_failures when a worker died with its node drained for preemption, or exited
    with `raylm.trainers.preemption.Preempted`)."""
    from ray.train import FailureConfig

    s = cfg.trainer.scaling
    return FailureConfig(max_failures=s.max_failures, max_preemption_failures=s.max_preemptions)


def build_trainer(cfg: RootConfig, *, manifest: dict | None = None, callbacks: list | None = None,
                  name: str | None = None, storage_path: str | None = None,
                  loop_overrides: dict | None = None, loop: Callable[[dict], None] | None = None) -> Any:
    """A TorchTrainer for this config (used by `raylm train` and by the Tune driver). `loop` replaces the
    per-worker entry point (tests wrap it to inject a fault into one worker)."""
    from ray.train import CheckpointConfig, DataConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from raylm.cluster.storage import run_storage
    from raylm.datasets.prepare import load_manifest
    from raylm.datasets.streaming import open_split, read_small_split
    from raylm.trainers.loop import LoopConfig, train_loop_per_worker

    manifest = manifest or load_manifest(cfg.data.prepared_dir)
    t, name = cfg.trainer, name or cfg.trainer.run_name
    run_dir = local_run_dir(cfg, name, storage_path)
    # Local paths absolute: workers run in another directory (model.init_from read there as a hub id otherwise).
    from raylm.tasks.registry import model_meta

    loop_config = LoopConfig(cfg=absolute_paths(cfg.model_dump(mode="json")), meta=model_meta(cfg, manifest), run_dir=run_dir,
                             metrics_path=os.path.join(run_dir, "metrics.jsonl"), run_id=name,
                             **(loop_overrides or {}))
    metric, mode = best_checkpoint_rule(cfg)
    prepared = cfg.data.prepared_dir
    # Workers evaluate on the first eval_batches x batch x workers rows only: read those once here, so
    # that no worker starts a Ray Data execution of the whole split before its first step (start-up).
    # Small local splits are read without a Ray Data execution at all (seconds of start-up each).
    val = read_small_split(prepared, "validation", manifest, limit=eval_rows(cfg))
    if val is None:
        val = open_split(prepared, "validation", manifest).limit(eval_rows(cfg)).materialize()
    train_mb = manifest["splits"]["train"].get("tokens_out", 0) * 4 / 2**20
    resident = train_mb <= cfg.data.stream.materialize_max_mb  # small corpus: skip the per-epoch re-read (~seconds each)
    train = read_small_split(prepared, "train", manifest) if resident else None
    if train is None:
        train = open_split(prepared, "train", manifest)
        train = train.materialize() if resident else train
    datasets = {"train": train, "validation": val}
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True  # a deterministic order makes "skip what was consumed" exact on resume
    return TorchTrainer(
        loop or train_loop_per_worker,
        train_loop_config=loop_config.to_dict(),
        # The process group's timeout: a collective another rank never joins fails the attempt (gloo; NCCL with
        # Ray's TORCH_NCCL_ASYNC_ERROR_HANDLING=1) instead of hanging it (raylm.trainers.watchdog).
        torch_config=TorchConfig(timeout_s=t.watchdog.collective_timeout_s),
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            name=name,
            **run_storage(storage_root(cfg, storage_path)),
            failure_config=failure_config(cfg),
            # Ray ranks checkpoints by the metric but never deletes the latest: resume uses it.
            checkpoint_config=CheckpointConfig(num_to_keep=t.checkpoint.num_to_keep, checkpoint_score_attribute=metric,
                                               checkpoint_score_order=mode),
            callbacks=callbacks,
            logging_config=_train_logging(),
        ),
        datasets=datasets,
        # stride: every worker reads the whole split and takes its share itself (raylm.datasets.sharding)
        dataset_config=DataConfig(datasets_to_split=["train"] if _split_on_ray(cfg) else [],
                                  execution_options={"train": ingest}),
    )


def _split_on_ray(cfg: RootConfig) -> bool:
    """Ray Data splits the training split between workers (`streaming_split`, a coordinator actor) for
    sharding "split" with more than one worker. One worker reads the whole split by itself: the same
    batches, without the coordinator actor's start (~1.5 s before the first step here)."""
    workers = cfg.trainer.scaling.num_workers
    return sharding_for(cfg.data.stream.sharding, workers) == "split" and workers != 1


def export_model(checkpoint_dir: str, tokenizer_dir: str | None, out_dir: str, dtype: str | None = None,
                 cfg: RootConfig | None = None) -> str:
    """A checkpoint (sharded or hf) and the tokenizer in one directory transformers loads (`raylm export`);
    an adapter run's (model.adapter, `cfg`): the adapter directory on its base."""
    from raylm.serving.export import export_checkpoint

    return export_checkpoint(checkpoint_dir, out_dir, tokenizer_dir, dtype, cfg=cfg)


def eval_rows(cfg: RootConfig) -> int:
    """Validation rows the workers read (see streaming.eval_batches): an upper bound when batch_size is auto."""
    from raylm.trainers.autobatch import MAX_BATCH

    t = cfg.trainer
    n = t.scaling.num_workers
    workers = n if isinstance(n, int) else max(n)
    return t.eval.batches * (t.batch_size if isinstance(t.batch_size, int) else MAX_BATCH) * workers


def train(cfg: RootConfig, started_at: float | None = None) -> dict:
    """Fit (resuming the run of the same name if it has checkpoints), export, summarise."""
    from raylm.tasks.registry import prepare_data  # task modules import torch: the CLI imports this module at start

    manifest = prepare_data(cfg.data, cfg.trainer.task)  # no-op when the shards are up to date
    check_compatible(cfg, manifest)
    run_dir = local_run_dir(cfg)
    os.makedirs(run_dir, exist_ok=True)
    save_config(cfg, os.path.join(run_dir, "config.yaml"))
    # started_at: when the command started (the CLI's process), for the start-up time the loop reports.
    trainer = build_trainer(cfg, manifest=manifest, loop_overrides={"started_at": started_at or time.time()})
    result = trainer.fit()
    if result.error:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    export_dir = cfg.trainer.export.dir or os.path.join(run_dir, "export")
    chosen = result.checkpoint
    if cfg.trainer.export.checkpoint == "best" and result.best_checkpoints:
        metric, mode = best_checkpoint_rule(cfg)
        pick = max if mode == "max" else min
        chosen = pick(result.best_checkpoints, key=lambda cm: cm[1].get(metric, float("nan")))[0]
    with chosen.as_directory() as d:
        export_model(d, manifest["tokenizer_dir"], export_dir, cfg=cfg)
        if is_remote(cfg.cluster.storage_path) and os.path.exists(os.path.join(d, "metrics.jsonl")):
            shutil.copy(os.path.join(d, "metrics.jsonl"), os.path.join(run_dir, "metrics.jsonl"))
    summary = {"run_dir": run_dir, "export_dir": export_dir, "checkpoint": chosen.path,
               "metrics": {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float, str))}}
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
