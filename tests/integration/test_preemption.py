"""Preemption on a real local Ray: a SIGTERM to one worker makes every rank checkpoint at the next
sync step and exit; the restart is charged to trainer.scaling.max_preemptions (the run has max_failures=0)
and resumes from that checkpoint sample for sample. A run whose code fails stops after max_failures."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from raylm.trainers.driver import build_trainer

from support.observers import observed, sample_log_spec
from testkit import ledger_headers, read_sample_log, tiny_config, write_synthetic

pytestmark = [pytest.mark.long, pytest.mark.timeout(900)]  # `bash scripts/test.sh -m long`


def _steps(path: str) -> int:
    return sum(1 for l in open(path) if not l.startswith("#"))


def test_sigterm_checkpoints_at_that_step_and_the_resumed_run_loses_nothing(ray_session, tmp_path):
    data, runs = str(tmp_path / "data"), str(tmp_path / "runs")
    manifest = write_synthetic(data, n_train=320, n_val=16, files=4)  # one epoch = 40 steps x 2 workers x 4
    # Checkpoints only every 20 steps: one written at the SIGTERM's step is the preemption's. No failure budget:
    # the restart must be charged to the preemption budget.
    cfg = tiny_config(data, runs, max_steps=40, checkpoint={"every": 20, "num_to_keep": 5},
                      eval={"every": 20, "batches": 1}, scaling={"max_failures": 0, "max_preemptions": 1},
                      schedule={"type": "constant"})
    ids = f"{runs}/ids"
    trainer = build_trainer(observed(cfg, sample_log_spec(ids)), manifest=manifest)
    out: list = []
    fit = threading.Thread(target=lambda: out.append(trainer.fit()))
    fit.start()
    deadline = time.time() + 600
    while fit.is_alive() and time.time() < deadline and (not os.path.exists(f"{ids}.rank1")
                                                          or _steps(f"{ids}.rank1") < 6):
        time.sleep(0.05)
    started = _steps(f"{ids}.rank1")  # steps begun by rank 1 when it is told to stop
    os.kill(int(ledger_headers(ids, 1)[0]["pid"]), signal.SIGTERM)  # what Kubernetes sends a pod
    fit.join(timeout=700)
    result = out[0]
    assert result.error is None, result.error
    assert result.metrics["step"] == 40
    resumed = [int(h["resumed_from"]) for h in ledger_headers(ids, 1)]
    assert len(resumed) == 2, resumed  # one restart
    at = resumed[1]
    assert started <= at < 20, (started, at)  # a checkpoint at the signal's step (or the next): nothing lost
    assert os.path.isdir(f"{runs}/t/checkpoint_{at:08d}")  # not on the every-20 cadence: the preemption's
    logs = read_sample_log(ids, 2)
    seen = [i for rows in logs.values() for (_e, _s, batch) in rows for i in batch]
    assert sorted(seen) == list(range(320))  # every sample of the epoch exactly once
    assert [s for _, s, _ in logs[0]] == list(range(40))


def test_failing_code_stops_after_max_failures(ray_session, tmp_path):
    """lr=1e30 makes step 2's loss non-finite on every attempt (nan_policy=stop raises): 1 + max_failures attempts."""
    data, runs = str(tmp_path / "data"), str(tmp_path / "runs")
    manifest = write_synthetic(data, n_train=64, n_val=16)
    cfg = tiny_config(data, runs, max_steps=6, optimizer={"lr": 1e30}, eval={"batches": 1},
                      scaling={"max_failures": 1, "max_preemptions": -1})
    ids = f"{runs}/ids"
    from ray.train import TrainingFailedError

    with pytest.raises(TrainingFailedError, match="non-finite"):
        build_trainer(observed(cfg, sample_log_spec(ids)), manifest=manifest).fit()
    assert len(ledger_headers(ids, 0)) == 2  # the first attempt and one retry, then the run failed
