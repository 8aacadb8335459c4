"""Starting the embedded Ray on a loaded machine (no cluster is started: ray.init is replaced)."""

from __future__ import annotations

import pytest

from raylm.cluster import _connect


def _fake_ray(monkeypatch, failures: int, message: str) -> list[dict]:
    import ray

    calls: list[dict] = []

    def init(**kw):
        calls.append(kw)
        if len(calls) <= failures:
            raise Exception(message)

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    # Would kill this process's Ray children: the test session's own cluster, if any.
    monkeypatch.setattr(_connect, "_stop_started_ray_processes", lambda: None)
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
