"""Metric sinks: JSONL always, W&B on rank 0 (offline unless told), or nothing. One interface."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Sink(Protocol):
    jsonl_path: str | None  # the run's metrics.jsonl when this sink writes it (rank 0), else None

    def log(self, metrics: dict[str, Any], step: int) -> None: ...
    def close(self) -> None: ...


class NullSink:
    jsonl_path: str | None = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlSink:
    """Appends one JSON object per line; on resume, rows after the restored step are cut."""

    def __init__(self, path: str, resume_step: int = 0) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path):
            keep = [l for l in open(path) if l.strip() and json.loads(l).get("step", 0) <= resume_step]
            with open(path, "w") as f:
                f.writelines(keep)
        self._f = open(path, "a", buffering=1)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._f.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")

    def close(self) -> None:
        self._f.close()


class WandbSink:
    def __init__(self, cfg: Any, run_dir: str, run_id: str, config: dict) -> None:
        import wandb

        mode = cfg.mode
        if mode == "online" and not os.environ.get("WANDB_API_KEY"):
            log.warning("tracking.wandb.mode=online but WANDB_API_KEY is not set: logging offline")
            mode = "offline"
        os.makedirs(run_dir, exist_ok=True)
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, group=cfg.group, tags=cfg.tags,
                              name=run_id, id=run_id, resume="allow", mode=mode, dir=run_dir, config=config,
                              settings=wandb.Settings(silent=True, console="off"))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log({k: v for k, v in metrics.items() if v is not None}, step=step)

    def close(self) -> None:
        self.run.finish()


class MultiSink:
    def __init__(self, sinks: list[Sink], jsonl_path: str | None = None) -> None:
        self.sinks, self.jsonl_path = sinks, jsonl_path

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for s in self.sinks:
            s.log(metrics, step)

    def close(self) -> None:
        for s in self.sinks:
            s.close()
