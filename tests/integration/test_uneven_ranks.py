"""Issue 27 on a real local Ray (2 workers, gloo): FSDP training whose validation split does not divide
over the ranks evaluates and finishes, with the validation loss of a one-process evaluation of the same
rows; a rank that hangs in a collective fails its attempt through the process group's timeout, leaves
every worker's stacks in the run directory and the run resumes from its last checkpoint.

The matrix of every task x {DDP, FSDP} x uneven splits is `long` (test_uneven_ranks_matrix.py); CI keeps
FSDP x causal LM here and every task's evaluation path on two FSDP ranks (tests/unit/test_uneven_eval.py).
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
import torch

from raylm.trainers.driver import build_trainer

from support.observers import observed, sample_log_spec
from testkit import ledger_headers, tiny_config, write_synthetic

pytestmark = pytest.mark.ray


def _rows(path: str) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def _validation_ids(data: str, manifest: dict) -> list:
    import pyarrow.parquet as pq

    files = manifest["splits"]["validation"]["files"]
    return [r for f in files for r in pq.read_table(os.path.join(data, f["path"])).column("input_ids").to_pylist()]


# fewer batches than ranks: `long` here; CI covers it on two FSDP ranks in tests/unit/test_uneven_eval.py
@pytest.mark.parametrize("n_val", [20, pytest.param(3, marks=pytest.mark.long)],
                         ids=["5-batches-over-2-ranks", "fewer-batches-than-ranks"])
def test_fsdp_with_an_uneven_validation_split_evaluates_twice_and_matches_one_process(ray_session, tmp_path,
                                                                                       n_val):
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from raylm.cli import app

    data, runs = str(tmp_path / "data"), str(tmp_path / "runs")
    manifest = write_synthetic(data, n_train=64, n_val=n_val)  # batch 4: 5 batches (3 + 2), or 1 (1 + 0)
    cfg = tiny_config(data, runs, run_name="uneven", max_steps=4, eval={"every": 2, "batches": 8},
                      checkpoint={"every": 2}, scaling={"strategy": "fsdp"})
    result = build_trainer(cfg, manifest=manifest).fit()
    assert result.error is None, result.error
    evals = {r["step"]: r["val_loss"] for r in _rows(f"{runs}/uneven/metrics.jsonl") if "val_loss" in r}
    assert sorted(evals) == [2, 4]

    res = CliRunner().invoke(app, ["export", f"{runs}/uneven"])
    assert res.exit_code == 0, res.output
    model = AutoModelForCausalLM.from_pretrained(f"{runs}/uneven/export").eval()
    ids = torch.tensor(_validation_ids(data, manifest), dtype=torch.long)
    with torch.no_grad():  # every validation row in one process: HF's token-weighted mean loss
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert evals[4] == pytest.approx(loss, rel=1e-5)


# ---------------------------------------------------------------- a forced hang


HANG_S = 900.0  # far past the test's timeouts: only the timeout policy can end this attempt


def hang_once(loop_config: dict) -> None:
    """The real loop; on the first attempt, rank 1 sleeps in its third log-step sync (step 3), before the
    all-reduce rank 0 then waits in. Later attempts note when they started."""
    import ray.train

    import raylm.trainers.step as step
    from raylm.trainers.loop import train_loop_per_worker

    run_dir, rank = loop_config["run_dir"], ray.train.get_context().get_world_rank()
    hung = os.path.join(run_dir, "hung_at")
    if os.path.exists(hung):
        with open(os.path.join(run_dir, f"restarted_at.rank{rank}"), "w") as f:
            f.write(str(time.time()))
    elif rank == 1:
        real_sync, calls = step.Window.sync, []

        def sync(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                with open(hung, "w") as f:
                    f.write(str(time.time()))
                time.sleep(HANG_S)
            return real_sync(self, *args, **kwargs)

        step.Window.sync = sync
    train_loop_per_worker(loop_config)


@pytest.mark.timeout(600)
def test_a_rank_hung_in_a_collective_fails_the_attempt_leaves_stacks_and_the_run_resumes(ray_session, tmp_path):
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    data, runs = str(tmp_path / "data"), str(tmp_path / "runs")
    manifest = write_synthetic(data, n_train=64, n_val=16)
    timeout_s = 10
    cfg = tiny_config(data, runs, run_name="hang", max_steps=6, eval={"every": 2, "batches": 2},
                      checkpoint={"every": 2}, scaling={"strategy": "fsdp", "max_failures": 1},
                      watchdog={"collective_timeout_s": timeout_s, "min_stall_s": 2, "stall_factor": 2})
    ids = str(tmp_path / "ids")
    result = build_trainer(observed(cfg, sample_log_spec(ids)), manifest=manifest, loop=hang_once).fit()
    assert result.error is None, result.error
    run_dir = f"{runs}/hang"

    # The attempt failed through the timeout policy, far sooner than the hang would have ended it.
    hung_at = float(open(f"{run_dir}/hung_at").read())
    restarted = float(open(f"{run_dir}/restarted_at.rank0").read()) - hung_at
    assert restarted < timeout_s + 240, restarted
    # Every worker left its stacks, each file naming its rank; the hung rank's shows where it slept.
    stacks = sorted(os.listdir(f"{run_dir}/stacks"))
    by_rank = {int(name.split("-")[0][4:]): open(f"{run_dir}/stacks/{name}").read() for name in stacks}
    assert set(by_rank) == {0, 1}, stacks
    assert by_rank[1].startswith("# rank 1 of 2") and "in sync" in by_rank[1]
    assert by_rank[0].startswith("# rank 0 of 2") and "step 3" in by_rank[0]
    # The run resumed from its last checkpoint (step 2) and finished.
    headers = ledger_headers(ids, 0)
    assert [h["resumed_from"] for h in headers] == ["0", "2"]
    steps = [r["step"] for r in _rows(f"{run_dir}/metrics.jsonl") if "train_loss" in r]
    assert sorted(steps) == list(range(1, 7))


# ---------------------------------------------------------------- a hung trial in a sweep


HUNG_LR = 2e-3  # the trial whose rank 1 hangs


def hang_in_one_trial(cfg, **kw):
    """The sweep's trainer factory: raylm's, with rank 1 of the HUNG_LR trial hung in its third sync."""
    from raylm.trainers.driver import build_trainer

    return build_trainer(cfg, loop=hang_always if cfg.trainer.optimizer.lr == HUNG_LR else None, **kw)


def hang_always(loop_config: dict) -> None:
    import ray.train

    import raylm.trainers.step as step
    from raylm.trainers.loop import train_loop_per_worker

    if ray.train.get_context().get_world_rank() == 1:
        real_sync, calls = step.Window.sync, []

        def sync(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                time.sleep(HANG_S)
            return real_sync(self, *args, **kwargs)

        step.Window.sync = sync
    train_loop_per_worker(loop_config)


@pytest.mark.long  # a sweep of two 2-worker trials (~3 min on 2 cores); the timeout itself is in CI above
@pytest.mark.timeout(900)
def test_a_hung_trial_fails_with_its_reason_and_the_sweep_goes_on(ray_session, tmp_path):
    import ray

    from raylm.config import validate
    from raylm.tuning.results import COMPLETED, FAILED
    from raylm.tuning.sweep import run_sweep

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    data = str(tmp_path / "data")
    write_synthetic(data, n_train=64, n_val=16)
    raw = tiny_config(data, str(tmp_path / "runs"), max_steps=6, eval={"every": 2, "batches": 2},
                      checkpoint={"every": 2}, watchdog={"collective_timeout_s": 10, "min_stall_s": 2,
                                                         "stall_factor": 2}).model_dump(mode="json")
    raw["tuning"] = {"name": "hang", "num_samples": 1, "max_concurrent_trials": 1, "scheduler": {"type": "fifo"},
                     "resources": {"workers_per_trial": 2},
                     "space": {"trainer.optimizer.lr": {"type": "grid", "values": [HUNG_LR, 3e-3]}}}
    summary = run_sweep(validate(raw), factory=hang_in_one_trial)
    rows = {r.params["trainer.optimizer.lr"]: r for r in summary.rows}
    assert rows[HUNG_LR].status == FAILED and rows[3e-3].status == COMPLETED
    assert "CollectiveTimeout" in rows[HUNG_LR].reason and "step 3" in rows[HUNG_LR].reason, rows[HUNG_LR].reason
