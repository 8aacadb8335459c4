"""Exact resume: after a stop or a killed worker, training continues where it was, sample for sample."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from raylm.trainers.driver import build_trainer

from support.observers import observed, sample_log_spec
from testkit import fit_and_kill, is_registered, read_sample_log, tiny_config, write_synthetic


def _losses(run_dir: str) -> dict[int, float]:
    rows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    steps = [r["step"] for r in rows if "train_loss" in r]
    assert len(steps) == len(set(steps)), "a step was logged twice: the JSONL was not cut on resume"
    return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


def test_train_split_keeps_file_order_when_read_tasks_finish_out_of_order(ray_session, tmp_path):
    """The driver materializes small train splits; their block order decides which worker gets which rows.

    Without preserve_order a later file that finished first became block 0, so two runs of the same
    config could hand rank 0 different rows and a resumed run skipped the wrong batches (seen in CI).
    """
    from raylm.datasets.streaming import open_split

    def _slow_first_file(batch: dict) -> dict:  # nested: pickled by value for the Ray workers
        if 0 in batch["sample_id"]:
            time.sleep(3)  # the first file's task finishes last, as on a loaded machine
        return batch

    manifest = write_synthetic(str(tmp_path), n_train=64, files=4)
    ds = open_split(str(tmp_path), "train", manifest).map_batches(_slow_first_file, batch_format="numpy")
    ids = [int(i) for b in ds.materialize().iter_batches(batch_format="numpy") for i in b["sample_id"]]
    assert ids == list(range(64))


def test_resume_continues_step_optimizer_state_and_data_position(ray_session, tmp_path):
    data, runs = str(tmp_path / "data"), str(tmp_path / "runs")
    manifest = write_synthetic(data, n_train=256)
    common = dict(schedule={"type": "constant"}, optimizer={"lr": 1e-2}, eval={"every": 3}, checkpoint={"every": 3})

    def fit(name: str, steps: int) -> None:
        cfg = tiny_config(data, runs, run_name=name, max_steps=steps, **common)
        cfg = observed(cfg, sample_log_spec(f"{runs}/{name}.ids"))
        result = build_trainer(cfg, manifest=manifest).fit()
        assert result.error is None, result.error

    fit("straight", 6)
    fit("resumed", 3)  # stops at step 3 with a checkpoint...
    fit("resumed", 6)  # ...and the same run name continues from it
    straight, resumed = _losses(f"{runs}/straight"), _losses(f"{runs}/resumed")
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    # Same weights, same Adam moments, same next batches: the same losses as an uninterrupted run.
    assert resumed == pytest.approx(straight, rel=1e-5)
    headers = [l for l in open(f"{runs}/resumed.ids.rank1") if l.startswith("#")]
    assert "resumed_from=3" in headers[-1].split()
    assert read_sample_log(f"{runs}/resumed.ids", 2) == read_sample_log(f"{runs}/straight.ids", 2)
    state = torch.load(f"{runs}/resumed/checkpoint_00000006/state.pt", weights_only=True)
    assert state["state"]["step"] == 6 and state["state"]["batches_in_epoch"] == 6
    assert all(int(s["step"]) == 6 for s in state["optimizer"]["state"].values())  # Adam's own step count


def test_sigkilled_worker_restarts_from_checkpoint_and_every_sample_is_trained_once(ray_session, tmp_path):
    data, runs = str(tmp_path / "data"), str(tmp_path / "runs")
    manifest = write_synthetic(data, n_train=320, n_val=16, files=4)  # one epoch = 40 steps x 2 workers x 4
    cfg = tiny_config(data, runs, max_steps=40, checkpoint={"every": 5}, eval={"every": 5, "batches": 1},
                      scaling={"max_failures": 2}, schedule={"type": "constant"})
    ids = f"{runs}/ids"
    trainer = build_trainer(observed(cfg, sample_log_spec(ids)), manifest=manifest)
    # a worker process dies mid-run, as on a lost node
    result = fit_and_kill(trainer, lambda: is_registered(f"{runs}/t", "checkpoint_00000010"), ids)
    assert result.error is None, result.error
    assert result.metrics["step"] == 40
    headers = [l.split() for l in open(f"{ids}.rank1") if l.startswith("#")]
    assert len(headers) == 2 and int(headers[1][2].split("=")[1]) >= 10  # restarted, from a checkpoint
    logs = read_sample_log(ids, 2)
    seen = [i for rows in logs.values() for (epoch, _step, batch) in rows for i in batch]
    assert sorted(seen) == list(range(320))  # every sample of the epoch exactly once
    assert [s for _, s, _ in logs[0]] == list(range(40))  # rolled-back steps were cut from the log


@pytest.mark.long  # two Train runs; stride positions are unit-tested (test_sharding), exact resume is the test above
def test_stride_position_resumes_with_another_worker_count_and_every_sample_once(ray_session, tmp_path):
    """data.sharding=stride: 2 workers train 6 steps, the run resumes with 1 worker and finishes the epoch;
    the sample ledger holds every row exactly once (issues 11 and 13: resharding, elastic runs)."""
    data, runs = str(tmp_path / "data"), str(tmp_path / "runs")
    manifest = write_synthetic(data, n_train=96, n_val=16, files=2)  # 24 global micro-batches of 4
    ids = f"{runs}/ids"

    def fit(workers: int, steps: int) -> None:
        cfg = tiny_config(data, runs, overrides=["data.sharding=stride"], scaling={"num_workers": workers},
                          max_steps=steps, checkpoint={"every": 6}, eval={"every": 6, "batches": 1},
                          schedule={"type": "constant"})
        result = build_trainer(observed(cfg, sample_log_spec(ids)), manifest=manifest).fit()
        assert result.error is None, result.error

    fit(2, 6)  # 2 x 6 x 4 = 48 rows
    fit(1, 18)  # resumed at step 6 with one worker: 12 x 4 = the other 48
    logs = read_sample_log(ids, 2)
    assert [s for _, s, _ in logs[0]] == list(range(18)) and [s for _, s, _ in logs[1]] == list(range(6))
    seen = [i for rows in logs.values() for (_e, _s, batch) in rows for i in batch]
    assert sorted(seen) == list(range(96))
