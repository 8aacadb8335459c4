"""A real multi-process Ray on this machine through `ray start --block`: a head and optional
worker nodes, each in its own process group, with their own ports and temp dir.

For tests and for trying multi-node locally. Everything binds 127.0.0.1. Teardown ends exactly
the processes started here -- never `ray stop`, which stops every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raylm.cluster._connect import DASHBOARD_TIMEOUT_ENV, EMBEDDED_DASHBOARD_TIMEOUT_S

STARTED = "Ray runtime started."  # what `ray start` prints once its node is registered


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _kill_group(p: subprocess.Popen) -> None:
    """SIGKILL what is left of one node's process group (ours: started with a new session)."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class StartFailed(RuntimeError):
    """A `ray start` exited before its node was up; its logs stay in `temp_dir`."""

    def __init__(self, returncode: int, temp_dir: str) -> None:
        super().__init__(f"`ray start` exited with {returncode} (logs in {temp_dir})")
        self.temp_dir = temp_dir

    @property
    def agent_timed_out(self) -> bool:
        """The raylet gave up waiting for its dashboard agent: Ray 2.60's raylet allows the agent a fixed
        15 s to start (not configurable), which ~15 Python processes starting at once on a loaded 2-core
        machine can exceed."""
        return any("Timed out waiting for file" in log.read_text(errors="replace")
                   for log in Path(self.temp_dir).glob("**/logs/raylet.out"))


class LocalRay:
    """`with LocalRay(num_cpus=4, dashboard=True) as ray_: ray_.add_worker(...)`."""

    def __init__(self, num_cpus: int = 1, dashboard: bool = False, python: str | None = None,
                 resources: dict[str, float] | None = None) -> None:
        self.python = python or sys.executable
        # Short: Ray's unix sockets live under it (107-byte limit).
        self.temp_dir = tempfile.mkdtemp(prefix="rl", dir="/tmp")
        self.gcs_port = self.dashboard_port = 0
        self.procs: list[subprocess.Popen] = []
        self._logs: list[Any] = []
        self._env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self._env["RAY_USAGE_STATS_ENABLED"] = "0"
        self._env.setdefault(DASHBOARD_TIMEOUT_ENV, EMBEDDED_DASHBOARD_TIMEOUT_S)  # as the embedded Ray (see there)
        self._env["PYTHONUNBUFFERED"] = "1"  # `ray start`'s lines reach its log as printed (see _wait_started)
        # Ray >= 2.52 starts heads with token auth on; worker nodes and drivers only present the
        # token (~/.ray/auth_token, made by the head if missing) in token mode.
        self._env.setdefault("RAY_AUTH_MODE", "token")
        # `python` inside a Ray job is this one.
        self._env["PATH"] = f"{Path(self.python).parent}{os.pathsep}{self._env.get('PATH', '')}"
        try:
            self._retrying(lambda attempt: self._start_head(attempt, num_cpus, dashboard, resources))
        except BaseException:
            self.stop()
            raise

    def _start_head(self, attempt: int, num_cpus: int, dashboard: bool, resources: dict[str, float] | None) -> None:
        self.gcs_port, self.dashboard_port = free_ports(2)
        head = ["--head", f"--port={self.gcs_port}", "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}",
                f"--include-dashboard={'true' if dashboard else 'false'}", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}"]
        self._start(f"head-{attempt}", head, num_cpus, resources)

    def _retrying(self, start: Callable[[int], None]) -> None:
        """Start a node and wait until it is up; up to three times: a raylet gives up after 30 s
        ("timed out during startup"), which a loaded 2-core machine can exceed."""
        for attempt in (1, 2, 3):
            start(attempt)
            try:
                self._wait_started(self.procs[-1], self._logs[-1].name)
                return
            except StartFailed:
                if attempt == 3:
                    raise
                _kill_group(self.procs.pop())  # what it left behind; its log stays in temp_dir

    @property
    def env(self) -> dict[str, str]:
        """Environment for a driver process that joins this cluster."""
        return dict(self._env)

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def add_worker(self, num_cpus: int = 1, resources: dict[str, float] | None = None) -> None:
        """Start a worker node and wait until it is alive (one at a time)."""
        # Its own temp dir, as on a machine of its own: nodes sharing one would share (and garbage-collect)
        # each other's runtime_env files, e.g. a job's working_dir while the job runs in it.
        node_dir = os.path.join(self.temp_dir, f"n{len(self.procs)}")
        args = [f"--address={self.gcs_address}", "--node-ip-address=127.0.0.1", f"--temp-dir={node_dir}"]
        self._retrying(lambda attempt: self._start(f"worker{len(self.procs)}-{attempt}", args, num_cpus, resources))

    def _start(self, name: str, args: list[str], num_cpus: int, resources: dict[str, float] | None) -> None:
        agent_http, agent_grpc, metrics, runtime_env = free_ports(4)
        cmd = [
            self.python, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats", *args,
            f"--num-cpus={num_cpus}", f"--dashboard-agent-listen-port={agent_http}",
            f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={runtime_env}",
        ]
        if resources:
            cmd.append(f"--resources={json.dumps(resources)}")
        log = open(Path(self.temp_dir) / f"ray-start-{name}.log", "w")
        self._logs.append(log)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self._env, start_new_session=True)
        self.procs.append(proc)

    def _wait_started(self, proc: subprocess.Popen, log_path: str, timeout_s: float = 300) -> None:
        """Wait for `ray start` to print that its node is up: it does so once the node is registered
        with the GCS. Read from its log rather than asked of the cluster: a probe is a Python that
        imports Ray and connects (~13 s of CPU here), which on a loaded machine slows the very start
        it waits for."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StartFailed(proc.returncode, self.temp_dir)
            if STARTED in Path(log_path).read_text(errors="replace"):
                return
            time.sleep(0.5)
        raise TimeoutError(f"`ray start` did not report its node up within {timeout_s}s (log: {log_path})")

    def node_running(self, pid: int) -> subprocess.Popen:
        """The `ray start` process of the node that runs process `pid`."""
        import psutil

        parents = {p.pid for p in psutil.Process(pid).parents()}
        return next(p for p in self.procs if p.pid in parents)

    def kill_node(self, node: subprocess.Popen) -> None:
        """SIGKILL a whole node (its `ray start`, raylet and workers): a lost machine. It leaves `procs`:
        nodes added later are counted and checked without it."""
        import psutil

        try:
            tree = [psutil.Process(node.pid), *psutil.Process(node.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for proc in tree:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        node.wait()
        _kill_group(node)  # whatever the node started since the tree was listed
        self.procs.remove(node)

    def drain(self, node_id: str, deadline_s: int, reason: str = "PREEMPTION") -> None:
        """Ask the GCS to drain a node, as KubeRay's autoscaler and spot handlers do before a node goes."""
        subprocess.run([self.python, "-m", "ray.scripts.scripts", "drain-node", f"--address={self.gcs_address}",
                        f"--node-id={node_id}", f"--reason=DRAIN_NODE_REASON_{reason}",
                        "--reason-message=raylm test", f"--deadline-remaining-seconds={deadline_s}"],
                       check=True, capture_output=True, env=self._env, timeout=120)

    def stop(self) -> None:
        """SIGTERM every node, then SIGKILL what is left after a few seconds. `ray start --block` takes
        ~30 s to wind down on SIGTERM (measured: the teardown of tests/integration/test_jobs.py); the
        processes are listed first, since Ray starts some in sessions of their own and they would
        outlive their node's process group."""
        import psutil

        tree: list = []
        for p in self.procs:
            with contextlib.suppress(psutil.Error):
                tree += [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
        for p in reversed(self.procs):  # workers first, the head last
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        _gone, alive = psutil.wait_procs(tree, timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=10)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
            _kill_group(p)
        for log in self._logs:
            log.close()

    def __enter__(self) -> "LocalRay":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
