"""Starting the embedded Ray on a loaded machine (no cluster is started: ray.init is replaced)."""

from __future__ import annotations

import os

import pytest

from raylm.cluster import _connect


class _Calls(list):
    """ray.init's keyword arguments per call, and RAY_worker_niceness as the raylet would have seen it."""

    niceness: list
    health: list  # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S


def _fake_ray(monkeypatch, failures: int, message: str) -> _Calls:
    import ray

    calls, niceness, health = _Calls(), [], []

    def init(**kw):
        calls.append(kw)
        niceness.append(os.environ.get(_connect.WORKER_NICENESS_ENV))
        health.append(os.environ.get(_connect.HEALTH_CHECK_ENV))
        if len(calls) <= failures:
            raise Exception(message)

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    # Would kill this process's Ray children: the test session's own cluster, if any.
    monkeypatch.setattr(_connect, "_stop_started_ray_processes", lambda: None)
    calls.niceness, calls.health = niceness, health
    return calls


SLOW = "The current node timed out during startup. This could happen because ..."


def test_a_node_slow_to_register_is_retried(monkeypatch):
    calls = _fake_ray(monkeypatch, failures=2, message=SLOW)
    _connect.init_ray(num_cpus=8)
    assert len(calls) == 3 and all(c == {"num_cpus": 8} for c in calls)


def test_retries_are_bounded_and_other_errors_are_not_retried(monkeypatch):
    calls = _fake_ray(monkeypatch, failures=99, message=SLOW)
    with pytest.raises(Exception, match="timed out during startup"):
        _connect.init_ray(num_cpus=8)
    assert len(calls) == _connect.STARTUP_ATTEMPTS

    calls = _fake_ray(monkeypatch, failures=1, message="something else")
    with pytest.raises(Exception, match="something else"):
        _connect.init_ray(num_cpus=8)
    assert len(calls) == 1

    calls = _fake_ray(monkeypatch, failures=1, message=SLOW)  # joining a cluster: not ours to restart
    with pytest.raises(Exception, match="timed out"):
        _connect.init_ray(address="127.0.0.1:6379")
    assert len(calls) == 1


def test_the_embedded_ray_runs_its_workers_at_the_commands_priority(monkeypatch):
    """Ray's default worker niceness (15) starves training behind any other busy process."""
    monkeypatch.delenv(_connect.WORKER_NICENESS_ENV, raising=False)
    monkeypatch.delenv(_connect.HEALTH_CHECK_ENV, raising=False)
    calls = _fake_ray(monkeypatch, failures=0, message="")
    _connect.init_ray(num_cpus=8)
    assert calls.niceness == ["0"]
    assert calls.health == ["0.5"]  # the controller sees a finished run within 0.5 s, not 2 s
    monkeypatch.setenv(_connect.WORKER_NICENESS_ENV, "10")  # the user's choice stands
    _connect.init_ray(num_cpus=8)
    assert calls.niceness[-1] == "10"


def test_joining_a_cluster_leaves_its_worker_priority_alone(monkeypatch):
    monkeypatch.delenv(_connect.WORKER_NICENESS_ENV, raising=False)
    monkeypatch.delenv(_connect.HEALTH_CHECK_ENV, raising=False)
    calls = _fake_ray(monkeypatch, failures=0, message="")
    _connect.init_ray(address="auto")
    assert calls.niceness == [None] and calls.health == [None]


def test_a_node_started_here_waits_minutes_for_its_dashboard(monkeypatch):
    """Ray gives the dashboard it starts 60 s; on a loaded 2-core machine it took 2-3 minutes and
    ray.init failed (`raylm prepare` in a CI run with two busy processes beside it). The address
    "local" (the test session's own cluster) starts a node too, and is retried like the embedded one."""
    from ray._private import ray_constants

    monkeypatch.setattr(ray_constants, "RAY_DASHBOARD_STARTUP_TIMEOUT_S", 60)  # restored after the test
    monkeypatch.delenv(_connect.DASHBOARD_TIMEOUT_ENV, raising=False)
    calls = _fake_ray(monkeypatch, failures=1, message=SLOW)
    _connect.init_ray(address="local", num_cpus=8)
    assert len(calls) == 2 and ray_constants.RAY_DASHBOARD_STARTUP_TIMEOUT_S == 600
    monkeypatch.setenv(_connect.DASHBOARD_TIMEOUT_ENV, "90")  # the user's choice stands
    _connect.init_ray(num_cpus=8)
    assert ray_constants.RAY_DASHBOARD_STARTUP_TIMEOUT_S == 90


def test_joining_a_cluster_leaves_the_dashboard_wait_alone(monkeypatch):
    from ray._private import ray_constants

    monkeypatch.setattr(ray_constants, "RAY_DASHBOARD_STARTUP_TIMEOUT_S", 60)
    monkeypatch.delenv(_connect.DASHBOARD_TIMEOUT_ENV, raising=False)
    _fake_ray(monkeypatch, failures=0, message="")
    _connect.init_ray(address="auto")
    assert ray_constants.RAY_DASHBOARD_STARTUP_TIMEOUT_S == 60
