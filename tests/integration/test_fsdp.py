"""FSDP2 on CPU with gloo: sharded asynchronous checkpoints that survive a crash mid-write and resume
exactly, `raylm export`, and checkpoints that move between DDP and FSDP and to fewer workers."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from raylm.trainers.checkpoint import is_sharded
from raylm.trainers.driver import build_trainer

from support.observers import observed, sample_log_spec, write_hold_spec
from testkit import is_registered, ledger_headers, read_state, tiny_config, write_synthetic

pytestmark = pytest.mark.long  # minutes of multi-process runs: `bash scripts/test.sh -m long`

# All 64 validation rows in every evaluation (16 batches of 4 over 2 workers): val_loss is then the
# mean over the whole split, whatever rank saw which batch, and an exported model can be held to it.
COMMON = dict(max_steps=6, checkpoint={"every": 2}, eval={"every": 2, "batches": 8},
              schedule={"type": "constant"}, optimizer={"lr": 1e-2},
              overrides=["data.sharding=stride"])  # a data position that holds at any worker count


def _losses(run_dir: str, key: str = "train_loss") -> dict[int, float]:
    rows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    steps = [r["step"] for r in rows if key in r]
    assert len(steps) == len(set(steps)), "a step was logged twice: the JSONL was not cut on resume"
    return {r["step"]: r[key] for r in rows if key in r}


def _fit(cfg, manifest) -> None:
    result = build_trainer(cfg, manifest=manifest).fit()
    assert result.error is None, result.error


@pytest.fixture(scope="module")
def straight(ray_session, tmp_path_factory):
    """An uninterrupted 6-step FSDP run: the reference the other runs are held to."""
    root = tmp_path_factory.mktemp("fsdp")
    data, runs = str(root / "data"), str(root / "runs")
    manifest = write_synthetic(data, n_train=96)  # 24 global micro-batches of 4
    _fit(tiny_config(data, runs, run_name="straight", scaling={"strategy": "fsdp"}, **COMMON), manifest)
    return SimpleNamespace(data=data, runs=runs, manifest=manifest, losses=_losses(f"{runs}/straight"))


def _partial_checkpoint(run_dir: str) -> int | None:
    """Step of a checkpoint whose shards are on disk but whose DCP metadata is not (a write in flight)."""
    for name in sorted(os.listdir(run_dir)):
        dcp = os.path.join(run_dir, name, "dcp")
        if name.startswith("checkpoint_") and os.path.exists(os.path.join(dcp, "__1_0.distcp")) \
                and not os.path.exists(os.path.join(dcp, ".metadata")) and int(name[11:]) >= 4:
            return int(name[11:])
    return None


def test_worker_killed_mid_async_write_resumes_from_the_previous_checkpoint_exactly_and_exports(straight):
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from raylm.cli import app

    runs, ids, run_dir = straight.runs, f"{straight.runs}/crash.ids", f"{straight.runs}/crash"
    cfg = tiny_config(straight.data, runs, run_name="crash", scaling={"strategy": "fsdp", "max_failures": 1}, **COMMON)
    # Each sharded write holds 3 s before its metadata: the window a crash lands in.
    trainer = build_trainer(observed(cfg, sample_log_spec(ids), write_hold_spec(3.0)), manifest=straight.manifest)
    out: list = []
    fit = threading.Thread(target=lambda: out.append(trainer.fit()))
    fit.start()
    partial, deadline = None, time.time() + 600
    while fit.is_alive() and time.time() < deadline:
        partial = _partial_checkpoint(run_dir) if os.path.isdir(run_dir) else None
        if partial and is_registered(run_dir, "checkpoint_00000002"):
            break
        time.sleep(0.05)
    assert partial, "never saw a checkpoint write in flight"
    # A worker dies while checkpoint `partial` is being written.
    os.kill(int(ledger_headers(ids, 1)[0]["pid"]), signal.SIGKILL)
    fit.join(timeout=600)
    assert out and out[0].error is None, out and out[0].error
    headers = ledger_headers(ids, 1)
    resumed_from = int(headers[-1]["resumed_from"])
    assert len(headers) == 2 and 2 <= resumed_from < partial  # the half-written checkpoint was never used
    # Sharded model + Adam moments + data position + RNG per rank: the losses of the uninterrupted run.
    assert _losses(run_dir) == pytest.approx(straight.losses, rel=1e-5)
    last = f"{run_dir}/checkpoint_00000006"
    assert is_sharded(last) and not os.path.exists(f"{last}/model") and read_state(last).step == 6

    res = CliRunner().invoke(app, ["export", run_dir])
    assert res.exit_code == 0, res.output
    model = AutoModelForCausalLM.from_pretrained(f"{run_dir}/export").eval()
    ids_val = torch.tensor(_validation(straight), dtype=torch.long)
    with torch.no_grad():
        loss = model(input_ids=ids_val, labels=ids_val).loss.item()
    # The exported weights give the logits the training model had: the same validation loss.
    assert loss == pytest.approx(_losses(run_dir, "val_loss")[6], rel=1e-5)
    bad = CliRunner().invoke(app, ["export", f"{runs}/no-such-run"])
    assert bad.exit_code == 2 and "no such run directory" in bad.output


def _validation(straight) -> list:
    import pyarrow.parquet as pq

    files = straight.manifest["splits"]["validation"]["files"]
    return [row for f in files for row in pq.read_table(os.path.join(straight.data, f["path"])).column("input_ids").to_pylist()]


def test_checkpoints_move_between_ddp_and_fsdp_and_to_fewer_workers_keeping_the_sample_ledger(straight):
    from testkit import read_sample_log

    runs, ids = straight.runs, f"{straight.runs}/mixed.ids"

    def fit(steps: int, **trainer) -> None:
        opts = {**COMMON, "max_steps": steps, "checkpoint": {"every": 3}, **trainer}
        cfg = tiny_config(straight.data, runs, run_name="mixed", **opts)
        _fit(observed(cfg, sample_log_spec(ids)), straight.manifest)

    fit(3, scaling={"strategy": "ddp"})  # an hf checkpoint (model/ + full optimizer)...
    assert os.path.isdir(f"{runs}/mixed/checkpoint_00000003/model")
    fit(6, scaling={"strategy": "fsdp"})  # ...resumes under FSDP (streamed into the shards) and writes a sharded one...
    assert is_sharded(f"{runs}/mixed/checkpoint_00000006")
    # The same seeded init under DDP and FSDP, and the DDP state carried into FSDP: the FSDP run's losses
    # up to the order of floating-point reductions.
    assert _losses(f"{runs}/mixed") == pytest.approx(straight.losses, rel=1e-4)
    one = dict(eval={"every": 6, "batches": 8}, checkpoint={"every": 6})
    fit(12, scaling={"strategy": "fsdp", "num_workers": 1}, **one)  # ...which FSDP resumes on one worker (DCP
    last = f"{runs}/mixed/checkpoint_00000012"  # reshards 2 -> 1), writing a sharded checkpoint of one rank...
    assert is_sharded(last) and torch.load(f"{last}/state.pt", weights_only=True)["world_size"] == 1
    fit(18, scaling={"strategy": "ddp", "num_workers": 1}, **one)  # ...which DDP restores; to the end of the epoch
    state = torch.load(f"{runs}/mixed/checkpoint_00000018/state.pt", weights_only=True)
    assert state["state"]["step"] == 18
    assert all(int(s["step"]) == 18 for s in state["optimizer"]["state"].values())  # Adam kept counting
    after = _losses(f"{runs}/mixed")
    assert sorted(after) == list(range(1, 19)) and after[7] < straight.losses[1] - 0.3  # trained weights
    logs = read_sample_log(ids, 2)
    seen = [i for rows in logs.values() for (_e, _s, batch) in rows for i in batch]
    assert sorted(seen) == list(range(96))  # every sample of the epoch exactly once, across the resize
