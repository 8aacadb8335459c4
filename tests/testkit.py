"""Test helpers: tiny synthetic prepared datasets and configs (no tokenizer, no prepare), and readers
of what a run leaves behind (sample-id logs, checkpoint state, Ray Train's checkpoint registry).

Importable as `testkit` from tests (tests/ is on sys.path through its conftest) and from
benchmarks/bench_train.py (which puts tests/ on its path).

The synthetic data is learnable, so "loss falls" is a real check: LM blocks count up from a random
token; a classification example's label says whether its tokens come from the upper half of the vocabulary.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raylm.config import RootConfig, apply_overrides, validate
from raylm.trainers.state import TrainState

PAD, EOS, MASK, CLS, SEP = 0, 1, 2, 3, 4


def _write(out: str, split: str, tables: list[pa.Table]) -> list[dict]:
    os.makedirs(os.path.join(out, split), exist_ok=True)
    files = []
    for i, table in enumerate(tables):
        rel = f"{split}/shard-{i:04d}.parquet"
        pq.write_table(table, os.path.join(out, rel))
        files.append({"path": rel, "rows": table.num_rows})
    return files


def _lm_rows(rng: np.random.Generator, n: int, block: int, vocab: int, first_id: int) -> pa.Table:
    starts = rng.integers(0, vocab - 5, size=(n, 1))
    ids = (5 + (starts + np.arange(block)) % (vocab - 5)).astype(np.int32)  # next token = this + 1
    return pa.table({"sample_id": pa.array(np.arange(first_id, first_id + n), pa.int64()),
                     "input_ids": pa.array(list(ids), pa.list_(pa.int32(), block))})


def _cls_rows(rng: np.random.Generator, n: int, max_len: int, vocab: int, first_id: int) -> pa.Table:
    seqs, labels = [], []
    for _ in range(n):
        label, mid = int(rng.integers(0, 2)), (6 + vocab) // 2
        s = rng.integers(6, mid, size=int(rng.integers(3, max_len - 2))) + (mid - 6) * label
        seqs.append(s.astype(np.int32))
        labels.append(label)
    return pa.table({"sample_id": pa.array(np.arange(first_id, first_id + n), pa.int64()),
                     "input_ids": pa.array(seqs, pa.list_(pa.int32())), "label": pa.array(labels, pa.int64())})


def write_synthetic(out: str, task: str = "causal-lm", n_train: int = 256, n_val: int = 64, files: int = 2,
                    block_size: int = 16, vocab: int = 64, max_length: int = 24, seed: int = 0) -> dict:
    """Shards + manifest.json in `out` (the layout `raylm prepare` writes); returns the manifest."""
    rng = np.random.default_rng(seed)
    make = _cls_rows if task == "sequence-classification" else _lm_rows
    width = max_length if task == "sequence-classification" else block_size
    splits = {}
    for split, n, base in (("train", n_train, 0), ("validation", n_val, 10**6)):
        per = [n // files + (i < n % files) for i in range(files)]
        starts = np.cumsum([0] + per[:-1])
        tables = [make(rng, k, width, vocab, base + int(s)) for k, s in zip(per, starts)]
        splits[split] = {"files": _write(out, split, tables), "rows": n}
    manifest = {"schema_version": 1, "task": task, "vocab_size": vocab, "eos_id": EOS, "pad_id": PAD,
                "mask_id": MASK, "block_size": block_size, "max_length": max_length, "splits": splits,
                "tokenizer_dir": None}
    if task == "sequence-classification":
        manifest.update(num_labels=2, cls_id=CLS, sep_id=SEP)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return manifest


def tiny_config(prepared_dir: str, storage: str, task: str = "causal-lm", overrides: list[str] | None = None,
                **trainer: Any) -> RootConfig:
    """A 2-layer, 32-dim model, 2 workers, a few steps; `trainer` keys and dotted `overrides` override
    (a section's keys are merged: `eval={"every": 2}` keeps eval.batches)."""
    arch = {"causal-lm": "gpt2", "masked-lm": "bert", "sequence-classification": "bert"}[task]
    t: dict[str, Any] = {
        "task": task, "run_name": "t", "batch_size": 4, "max_steps": 6, "log_every": 1,
        "scaling": {"num_workers": 2, "max_failures": 0}, "optimizer": {"lr": 3e-3},
        "schedule": {"warmup_steps": 0}, "eval": {"every": 3, "batches": 2}, "checkpoint": {"every": 3},
    }
    for key, value in trainer.items():
        t[key] = {**t[key], **value} if isinstance(value, dict) and isinstance(t.get(key), dict) else value
    raw = {"cluster": {"storage_path": storage}, "data": {"prepared_dir": prepared_dir, "block_size": 16},
           "model": {"arch": arch, "n_layer": 2, "n_embd": 32, "n_head": 2}, "trainer": t,
           "tracking": {"wandb": {"mode": "disabled"}, "progress_every_s": 60}}
    return validate(apply_overrides(raw, overrides or []), origin="tiny_config")


def read_sample_log(base: str, world: int) -> dict[int, list[tuple[int, int, list[int]]]]:
    """{rank: [(epoch, step, ids)]} from the per-rank files written by support.observers.SampleLog (a run
    whose config has `support.observers.sample_log_spec(base)` among its trainer.observers)."""
    out: dict[int, list[tuple[int, int, list[int]]]] = {}
    for r in range(world):
        rows = []
        for line in open(f"{base}.rank{r}"):
            if not line.startswith("#"):
                e, s, *ids = line.split()
                rows.append((int(e), int(s), [int(i) for i in ids]))
        out[r] = rows
    return out


def ledger_headers(base: str, rank: int) -> list[dict[str, str]]:
    """The `# pid=... resumed_from=... node=...` lines of one rank's sample log, one dict per attempt
    of that rank ([] while the file does not exist yet). Complete lines only: a worker may be writing it."""
    path = f"{base}.rank{rank}"
    if not os.path.exists(path):
        return []
    lines = open(path).read().split("\n")[:-1]
    return [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in lines if line.startswith("#")]


def wait_until(what: str, cond: Callable[[], Any], timeout_s: float = 600, poll_s: float = 0.2) -> Any:
    """Poll `cond` until it returns something truthy and return that; TimeoutError naming `what` after
    `timeout_s`. Deadlines are generous (a loaded 2-core machine): a test waits on a condition, never on
    a fixed sleep. `cond` may raise to give up early (e.g. a process it depends on died)."""
    deadline = time.monotonic() + timeout_s
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f}s for {what}")
        time.sleep(poll_s)
    return value


def jobs_api_up(address: str) -> bool:
    """The Ray Jobs API at `address` answers (through the Jobs client: it sends the auth token)."""
    from raylm.cluster import jobs

    try:
        jobs.list_jobs(address)
        return True
    except Exception:  # noqa: BLE001 -- not up yet: connection refused, 503 while the dashboard starts
        return False


def wait_jobs_api(cluster: Any, timeout_s: float = 180) -> None:
    """Wait until the Jobs API of a `support.localray.LocalRay (tests/support)` with a dashboard answers; fail at
    once if one of its `ray start` processes exited."""
    def up() -> bool:
        dead = [p.returncode for p in cluster.procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"`ray start` exited with {dead[0]} (logs in {cluster.temp_dir})")
        return jobs_api_up(cluster.dashboard_url)

    wait_until(f"the Jobs API at {cluster.dashboard_url}", up, timeout_s, poll_s=1)


def wait_job(address: str, job_id: str, statuses: tuple[str, ...] | None = None, timeout_s: float = 300) -> str:
    """Wait until Ray job `job_id` is in one of `statuses` (default: ended); return its status."""
    from raylm.cluster import jobs

    want = statuses or jobs.TERMINAL
    return wait_until(f"job {job_id} to be {'/'.join(want)}",
                      lambda: (s := jobs.status(job_id, address)) in want and s, timeout_s, poll_s=0.5)


def fit_and_kill(trainer: Any, ready: Callable[[], bool], ids: str, rank: int = 1,
                 sig: signal.Signals = signal.SIGKILL, timeout_s: float = 600) -> Any:
    """`trainer.fit()` on a thread; once `ready()` (or when the fit ends), signal `sig` (SIGKILL: a worker dies
    as on a lost node) to rank `rank`'s worker, named by its sample log `ids`; the fit's result."""
    out: list = []
    fit = threading.Thread(target=lambda: out.append(trainer.fit()))
    fit.start()
    deadline = time.time() + timeout_s
    while not ready() and fit.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(int(ledger_headers(ids, rank)[0]["pid"]), sig)
    fit.join(timeout=timeout_s)
    return out[0]


def is_registered(run_dir: str, name: str) -> bool:
    """Ray Train has registered checkpoint `name` of a run (a directory alone may still be in flight)."""
    try:
        snap = json.load(open(os.path.join(run_dir, "checkpoint_manager_snapshot.json")))
    except (OSError, ValueError):
        return False
    return any(c["checkpoint_dir_name"] == name for c in snap["checkpoint_results"])


def read_state(dirpath: str) -> TrainState:
    """The training state saved in checkpoint directory `dirpath`."""
    import torch

    blob = torch.load(os.path.join(dirpath, "state.pt"), map_location="cpu", weights_only=True)
    return TrainState.from_dict(blob["state"])
