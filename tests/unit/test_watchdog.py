"""Issue 27 without Ray: validation batches dealt so every rank runs as many forward passes, the
progress watchdog's decisions (on an injected clock) and its stack dump, and collective timeouts that
name the rank, the collective and the step."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from raylm.datasets.streaming import deal_eval_batches
from raylm.trainers.config import WatchdogSection
from raylm.trainers.watchdog import CollectiveTimeout, Watchdog, is_collective_timeout


def _batches(sizes: list[int]) -> list[dict]:
    """Batches of the given row counts; row ids count up, lengths vary (id % 5 + 1 tokens)."""
    out, start = [], 0
    for n in sizes:
        ids = np.empty(n, dtype=object)
        ids[:] = [np.arange(i % 5 + 1) for i in range(start, start + n)]
        out.append({"input_ids": ids, "sample_id": np.arange(start, start + n)})
        start += n
    return out


def _ids(dealt: list[tuple[dict, bool]], counted: bool = True) -> list[int]:
    return [int(i) for b, c in dealt if c == counted for i in b["sample_id"]]


@pytest.mark.parametrize("sizes,world", [([4, 4, 4, 4, 1], 2),  # 5 batches over 2 ranks (the demo's 73 rows)
                                         ([3], 2),  # fewer batches than ranks
                                         ([4, 4, 4, 4, 4, 4, 4, 2], 3), ([], 2)])
@pytest.mark.parametrize("sort_by_length", [False, True])
def test_every_rank_gets_as_many_batches_and_the_real_rows_exactly_once(sizes, world, sort_by_length):
    dealt = [deal_eval_batches(iter(_batches(sizes)), 4, r, world, limit=10, sort_by_length=sort_by_length)
             for r in range(world)]
    assert len({len(d) for d in dealt}) == 1  # the same number of forward passes on every rank
    real = sorted(i for d in dealt for i in _ids(d))
    assert real == list(range(sum(sizes)))  # every row counted once: the metrics of a 1-rank evaluation
    for d in dealt:
        for b, counted in d:
            if not counted:  # a filler: the split's first batch, run and not counted
                assert list(b["sample_id"]) == list(range(min(4, sum(sizes), sizes[0])))
    if sizes == [3]:
        assert [c for _b, c in dealt[1]] == [False]  # rank 1 has no row, yet runs one forward


def test_the_limit_bounds_the_batches_read():
    dealt = [deal_eval_batches(iter(_batches([2] * 9)), 2, r, 2, limit=2) for r in range(2)]
    assert sorted(i for d in dealt for i in _ids(d)) == list(range(8))  # 2 batches a rank of the 9


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watchdog(tmp_path, clock: Clock, **cfg) -> Watchdog:
    return Watchdog(WatchdogSection(**{"min_stall_s": 10, "stall_factor": 4, "collective_timeout_s": 60, **cfg}),
                    rank=1, world=2, stacks_dir=str(tmp_path / "stacks"), log=lambda _line: None, clock=clock)


def test_no_dump_before_the_first_step_then_after_a_stall_then_the_worker_ends(tmp_path):
    clock = Clock()
    wd = _watchdog(tmp_path, clock)
    wd.beat("setup", 0)
    clock.now += 3600  # start-up and the first step (compile) are never measured
    assert wd.check(clock.now) == "ok"
    wd.beat("train step", 1)
    wd.arm()
    for step in range(2, 6):  # steps of 5 s: the threshold is max(10, 4 x 5) = 20 s
        clock.now += 5
        wd.beat("train step", step)
    assert wd.threshold() == 20
    clock.now += 19
    assert wd.check(clock.now) == "ok"
    clock.now += 2
    assert wd.check(clock.now) == "dump"
    path = wd.dump()
    assert wd.check(clock.now) == "ok"  # dumped once per stall
    clock.now += 59
    assert wd.check(clock.now) == "ok"
    clock.now += 2  # a collective timeout after the dump and still stuck: no collective will end it
    assert wd.check(clock.now) == "end"
    text = open(path).read()
    assert os.path.basename(path).startswith("rank1-step5-") and "# rank 1 of 2" in text
    assert "no progress for 21s since: train step (step 5)" in text
    assert "test_no_dump_before_the_first_step" in text  # this thread's Python stack
    wd.beat("train step", 6)  # progress again: watching starts over
    assert wd.check(clock.now) == "ok"


def test_the_minimum_holds_for_a_first_evaluation_without_history(tmp_path):
    clock = Clock()
    wd = _watchdog(tmp_path, clock, min_stall_s=300)
    wd.beat("train step", 1)
    wd.arm()
    for k in range(1, 40):  # fast steps, then a slow evaluation batch
        clock.now += 0.1
        wd.beat("train step", k + 1)
    clock.now += 299
    assert wd.check(clock.now) == "ok"


def test_the_watch_thread_dumps_every_thread_and_ends_a_worker_stuck_outside_collectives(tmp_path):
    ended, lines = threading.Event(), []
    wd = Watchdog(WatchdogSection(min_stall_s=0.2, stall_factor=2, collective_timeout_s=1), rank=0, world=1,
                  stacks_dir=str(tmp_path / "stacks"), log=lines.append, end_worker=ended.set)
    with wd.guard():
        wd.beat("train step", 1)
        wd.arm()
        assert ended.wait(120), "the watchdog never ended the stuck worker"
    files = os.listdir(tmp_path / "stacks")
    assert len(files) == 1 and files[0].startswith("rank0-step1-")
    assert any("Python stacks of every thread" in line and files[0] in line for line in lines)
    text = open(tmp_path / "stacks" / files[0]).read()
    assert "Current thread 0x" in text and "Thread 0x" in text  # the watchdog's own and the stuck main thread
    assert "test_the_watch_thread_dumps_every_thread" in text  # where the main thread waits


def test_a_collective_timeout_names_the_rank_the_collective_and_the_step(tmp_path):
    clock = Clock()
    wd = _watchdog(tmp_path, clock, enabled=False)
    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting "
                        "60000ms for recv operation to complete")
    with pytest.raises(CollectiveTimeout) as err:
        with wd.guard():
            wd.beat("the log step's all-reduce of the window", 7)
            raise gloo
    text = str(err.value)
    assert text.startswith("rank 1 of 2 waited more than 60s") and "all-reduce of the window at step 7" in text
    assert "(Timed out waiting 60000ms for recv operation to complete)" in text  # gloo's source prefix dropped
    assert err.value.__cause__ is gloo
    assert is_collective_timeout(gloo) and not is_collective_timeout(RuntimeError("Connection closed by peer"))
    assert is_collective_timeout(RuntimeError("[Rank 0] Watchdog caught collective operation timeout: WorkNCCL"))
    assert not is_collective_timeout(RuntimeError("read timeout from s3://bucket/shard-0.parquet"))
    with pytest.raises(ValueError):  # other errors pass through unchanged
        with wd.guard():
            raise ValueError("not a timeout")


def test_a_dump_names_its_remote_copy_and_returns_the_local_file(tmp_path):
    lines: list[str] = []
    wd = Watchdog(WatchdogSection(), rank=0, world=2, stacks_dir=str(tmp_path / "stacks"), log=lines.append,
                  publish=lambda path: f"s3://bucket/run/stacks/{os.path.basename(path)}")
    wd.beat("train step", 4)
    path = wd.dump()
    assert os.path.isfile(path) and wd.stacks == [path]
    assert lines[-1].endswith(f"{path} and s3://bucket/run/stacks/{os.path.basename(path)}")
