"""Builds the sink for a worker: JSONL on rank 0 always, W&B on rank 0 when enabled."""

from __future__ import annotations

import logging
from typing import Any

from raylm.config import RootConfig
from raylm.trainers.sinks import JsonlSink, MultiSink, NullSink, Sink, WandbSink

log = logging.getLogger(__name__)


def make_sink(cfg: RootConfig, lc: Any, rank: int, resume_step: int = 0) -> Sink:
    """`lc` is the worker's LoopConfig (metrics_path, run_dir, run_id, cfg)."""
    if rank != 0:
        return NullSink()
    jsonl = JsonlSink(lc.metrics_path, resume_step=resume_step)
    sinks: list[Sink] = [jsonl]
    if cfg.tracking.wandb.mode != "disabled":
        try:
            sinks.append(WandbSink(cfg.tracking.wandb, lc.run_dir, lc.run_id, lc.cfg))
        except Exception as err:  # tracking must never take training down
            log.warning("W&B disabled for this run: %s", err)
    return MultiSink(sinks, jsonl_path=jsonl.path)
