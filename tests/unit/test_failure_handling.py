"""Elastic worker counts and preemption, without a cluster: the config, what the driver hands Ray,
the SIGTERM handler's chaining, and that Ray's own failure policy charges `Preempted` to the
preemption budget (and a crash to max_failures)."""

from __future__ import annotations

import os
import pickle
import signal
import threading

import pytest
import torch

from raylm.errors import UserError
from raylm.trainers import preemption
from raylm.trainers.loop import stop_reason
from raylm.trainers.step import Window

from testkit import tiny_config


def test_num_workers_is_an_int_or_an_elastic_range(tmp_path):
    cfg = tiny_config(str(tmp_path), str(tmp_path), overrides=["trainer.scaling.num_workers=[1, 3]"])
    assert cfg.trainer.scaling.num_workers == (1, 3)
    from raylm.datasets.sharding import sharding_for

    assert sharding_for(cfg.data.stream.sharding, cfg.trainer.scaling.num_workers) == "stride"  # auto: a position that holds at any worker count
    with pytest.raises(UserError, match=r"1 <= min <= max"):
        tiny_config(str(tmp_path), str(tmp_path), overrides=["trainer.scaling.num_workers=[3, 1]"])
    with pytest.raises(UserError, match="num_workers"):
        tiny_config(str(tmp_path), str(tmp_path), overrides=["trainer.scaling.num_workers=0"])


def test_scaling_and_failure_config_for_ray(tmp_path, monkeypatch):
    import ray

    from raylm.trainers.driver import failure_config, scaling_config

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4})
    cfg = tiny_config(str(tmp_path), str(tmp_path), overrides=[
        "trainer.scaling.num_workers=[1, 2]", "trainer.scaling.resources_per_worker={trainslot: 1}",
        "trainer.scaling.elastic_resize_s=5", "trainer.scaling.max_failures=1", "trainer.scaling.max_preemptions=3"])
    sc = scaling_config(cfg)
    assert sc.num_workers == (1, 2) and sc.elasticity_enabled and sc.elastic_resize_monitor_interval_s == 5
    assert sc.resources_per_worker == {"trainslot": 1, "CPU": 1.0}
    fc = failure_config(cfg)
    assert (fc.max_failures, fc.max_preemption_failures) == (1, 3)


def test_ray_charges_preempted_to_the_preemption_budget_and_crashes_to_max_failures():
    """Ray Train's DefaultFailurePolicy, as the controller calls it, with the errors our workers raise."""
    from ray.train import FailureConfig
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2._internal.execution.failure_handling import FailureDecision
    from ray.train.v2._internal.execution.failure_handling.default import DefaultFailurePolicy
    from ray.train.v2.api.exceptions import WorkerGroupError

    def group_error(exc: BaseException) -> WorkerGroupError:
        wrapped = pickle.loads(pickle.dumps(UserExceptionWithTraceback(exc, "tb")))  # as it crosses processes
        return WorkerGroupError("boom", {0: wrapped._base_exc, 1: wrapped._base_exc})

    policy = DefaultFailurePolicy(FailureConfig(max_failures=1, max_preemption_failures=2))
    preempted = group_error(preemption.Preempted("SIGTERM to 1 worker(s): checkpointed step 7"))
    assert str(preempted.worker_failures[0]).startswith("SIGTERM") and preempted.worker_failures[0].preempted
    decisions = [policy.make_decision(preempted) for _ in range(3)]
    assert decisions == [FailureDecision.RETRY, FailureDecision.RETRY, FailureDecision.RAISE]
    crash = group_error(ValueError("a bug"))
    assert [policy.make_decision(crash) for _ in range(2)] == [FailureDecision.RETRY, FailureDecision.RAISE]


def test_sigterm_sets_the_flag_while_a_loop_is_armed_and_chains_otherwise(monkeypatch):
    seen: list[int] = []
    monkeypatch.setattr(preemption, "_installed", False)
    old = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        assert preemption.install()  # this test runs on the main thread
        os.kill(os.getpid(), signal.SIGTERM)  # no loop armed: the previous handler runs
        assert seen == [signal.SIGTERM] and not preemption.requested()

        done, go = threading.Event(), threading.Event()

        def loop() -> None:
            preemption.arm()
            go.set()
            done.wait(10)

        t = threading.Thread(target=loop)
        t.start()
        go.wait(10)
        os.kill(os.getpid(), signal.SIGTERM)  # armed: only the flag
        assert preemption.requested() and seen == [signal.SIGTERM]
        os.kill(os.getpid(), signal.SIGTERM)  # a second one: the previous handler again
        assert seen == [signal.SIGTERM, signal.SIGTERM]
        done.set()
        t.join()
    finally:
        signal.signal(signal.SIGTERM, old)
        preemption._requested.clear()
        preemption._armed_by = None


def test_window_sync_counts_the_ranks_told_to_stop():
    w = Window(torch.device("cpu"))
    assert w.sync(False).stop_ranks == 0
    assert Window(torch.device("cpu")).sync(False, stop=True).stop_ranks == 1
    assert stop_reason(0, False) is None
    assert stop_reason(1, True) == "SIGTERM to 1 worker(s)"
    assert stop_reason(0, True) == "a node is drained for preemption"


def test_sample_log_of_a_run_resumed_with_fewer_workers_cuts_the_ranks_it_lost(tmp_path):
    from support.observers import SampleLog
    from testkit import read_sample_log

    base = str(tmp_path / "ids")
    for rank in (0, 1):
        log = SampleLog(base, rank, 0, world=2)
        for step in range(5):
            log.on_batch(0, step, torch.tensor([10 * rank + step]))
        log.close()
    SampleLog(base, 0, 3, world=1).close()  # a node lost after step 4; resumed from step 3 on one worker
    logs = read_sample_log(base, 2)
    assert [s for _, s, _ in logs[0]] == [0, 1, 2] and [s for _, s, _ in logs[1]] == [0, 1, 2]


def test_observers_named_in_the_config_are_built_by_import_path_and_see_a_sharded_write_before_its_metadata(tmp_path):
    """trainer.observers -> hooks.Observers (as on a worker: by import path); the checkpoint writer calls them
    with every shard written and the metadata not yet (the window test_fsdp's crash lands in)."""
    import torch.distributed.checkpoint as dcp

    from raylm.trainers.checkpoint import _writer
    from raylm.trainers.hooks import Observers

    from support.observers import observed, sample_log_spec

    base, dcp_dir = str(tmp_path / "ids"), str(tmp_path / "dcp")
    cfg = observed(tiny_config(str(tmp_path), str(tmp_path)), sample_log_spec(base))
    observers = Observers.load(cfg.trainer.observers, 0, 1, 0, str(tmp_path))
    observers.on_batch(0, 0, torch.tensor([7, 8]))
    seen = []
    observers.observers.append(type("Spy", (), {"on_batch": lambda *a: None, "close": lambda *a: None,
                                                "on_checkpoint_write": lambda self, path: seen.append(
                                                    sorted(os.listdir(path)))})())
    dcp.save({"w": torch.ones(3)}, storage_writer=_writer(dcp_dir, observers.on_checkpoint_write))
    observers.close()
    assert seen == [["__0_0.distcp"]] and os.path.exists(f"{dcp_dir}/.metadata")
    assert open(f"{base}.rank0").read().splitlines()[1:] == ["0 0 7 8"]
    with pytest.raises(TypeError, match="print returned NoneType, which lacks on_batch"):
        Observers.load(observed(cfg, {"factory": "builtins:print"}).trainer.observers, 0, 1, 0, str(tmp_path))


def test_latest_checkpoint_is_read_from_the_runs_storage(tmp_path):
    import json

    from raylm.cluster.jobs import latest_checkpoint

    assert latest_checkpoint(str(tmp_path), "run") is None
    (tmp_path / "run").mkdir()
    snap = {"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_00000012", "metrics": {"step": 12}}}
    (tmp_path / "run" / "checkpoint_manager_snapshot.json").write_text(json.dumps(snap))
    assert latest_checkpoint(str(tmp_path), "run") == ("checkpoint_00000012", 12)
