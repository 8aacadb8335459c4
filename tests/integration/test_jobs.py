"""Ray Jobs for real: a `ray start --head` on 127.0.0.1 (its own ports and temp dir), jobs
submitted through the Jobs API, followed, resubmitted, failed and stopped.

The Jobs API lives in the Ray dashboard, which needs `ray[default]`. Where this Python lacks it,
set RAYLM_JOBS_PYTHON to a Python that has it (e.g. a venv made with --system-site-packages and
`pip install 'ray[default]'`); otherwise the tests skip.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from raylm.cluster import jobs

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
DASHBOARD_MODULES = "import aiohttp_cors, opencensus, prometheus_client, colorful"
# The job: reads the shipped config from its working_dir, joins the cluster through RAY_ADDRESS
# (set by Ray Jobs for the driver) and runs one task there.
OK_COMMAND = (
    "python -c \"import sys, yaml, ray; c = yaml.safe_load(open(sys.argv[1])); ray.init(); "
    "print('RUN', c['trainer']['run_name'], ray.get(ray.remote(lambda: 41 + 1).remote()), "
    "c['cluster']['address'])\""
)


def _ray_python() -> str | None:
    for py in (os.environ.get("RAYLM_JOBS_PYTHON"), sys.executable):
        if py and subprocess.run([py, "-c", DASHBOARD_MODULES], capture_output=True).returncode == 0:
            return py
    return None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait_jobs_api(address: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    # Through the Jobs client, not bare HTTP: Ray >= 2.5x turns token auth on for local clusters
    # and the client sends the token (~/.ray/auth_token) for us.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        try:
            jobs.list_jobs(address)
            return
        except Exception:  # not up yet: connection refused, 503 while the dashboard starts
            time.sleep(1)
    raise TimeoutError(f"the Jobs API at {address} did not answer within {timeout_s}s")


@pytest.fixture(scope="module")
def ray_head():
    py = _ray_python()
    if py is None:
        pytest.skip("the Ray Jobs API needs ray[default] (dashboard); set RAYLM_JOBS_PYTHON to a Python with it")
    gcs, dash, agent_http, agent_grpc, metrics, client, runtime_env = _free_ports(7)
    # A short temp dir of our own: Ray's unix sockets live under it (107-byte limit), and it
    # keeps this cluster apart from any other local Ray on the machine.
    temp = tempfile.mkdtemp(prefix="rlj", dir="/tmp")
    cmd = [
        py, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--disable-usage-stats",
        f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
        f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}", f"--ray-client-server-port={client}",
        f"--runtime-env-agent-port={runtime_env}", "--num-cpus=4", f"--temp-dir={temp}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{Path(py).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` in a job = this one
    log = open(Path(temp) / "ray-start.log", "w")
    # Its own process group, so that teardown ends exactly this cluster -- never `ray stop`,
    # which stops every Ray on the machine, other people's included.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_jobs_api(address, proc)
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of this group only
        except ProcessLookupError:
            pass
        log.close()


def _config(tmp_path: Path, run_name: str) -> Path:
    p = tmp_path / f"{run_name}.yaml"
    # cluster.address is set here on purpose: submit must clear it so the driver joins its own cluster.
    p.write_text(f"trainer: {{run_name: {run_name}, max_steps: 5, warmup_steps: 1}}\ncluster: {{address: auto}}\n")
    return p


def _app() -> typer.Typer:
    from raylm.cluster.cli import jobs_app, submit_cmd

    app = typer.Typer()
    app.command("submit")(submit_cmd)
    app.add_typer(jobs_app, name="jobs")
    return app


def test_submit_follow_succeeds_and_resubmit_does_not_duplicate(ray_head: str, tmp_path: Path, capfd) -> None:
    cfg = _config(tmp_path, "jobs-ok")
    code = jobs.submit(cfg, address=ray_head, follow_logs=True, command=OK_COMMAND)
    out = capfd.readouterr().out
    assert code == 0, out
    assert "RUN jobs-ok 42 None" in out  # the config arrived, with cluster.address cleared
    assert jobs.status("raylm-jobs-ok", ray_head) == "SUCCEEDED"

    # Same run name -> same submission id -> no second job, and the exit code of the first.
    code = jobs.submit(cfg, address=ray_head, follow_logs=True, command=OK_COMMAND)
    assert code == 0
    assert "job raylm-jobs-ok exists (SUCCEEDED): not submitting it again" in capfd.readouterr().out
    ids = [j["id"] for j in jobs.list_jobs(ray_head)]
    assert ids.count("raylm-jobs-ok") == 1

    res = CliRunner().invoke(_app(), ["jobs", "logs", "raylm-jobs-ok", "--address", ray_head])
    assert res.exit_code == 0
    assert "RUN jobs-ok 42" in res.output + capfd.readouterr().out


def test_failing_job_exits_non_zero(ray_head: str, tmp_path: Path) -> None:
    cfg = _config(tmp_path, "jobs-fail")
    res = CliRunner().invoke(
        _app(),
        ["submit", str(cfg), "--address", ray_head, "--follow", "--command", "python -c 'import sys; sys.exit(3)'"],
    )
    assert res.exit_code == 1, res.output
    status = CliRunner().invoke(_app(), ["jobs", "status", "raylm-jobs-fail", "--address", ray_head])
    assert status.exit_code == 1 and "FAILED" in status.output


def test_stop_a_running_job(ray_head: str, tmp_path: Path) -> None:
    cfg = _config(tmp_path, "jobs-stop")
    assert jobs.submit(cfg, address=ray_head, command="python -c 'import time; time.sleep(300)'") == 0
    deadline = time.monotonic() + 60
    while jobs.status("raylm-jobs-stop", ray_head) != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    res = CliRunner().invoke(_app(), ["jobs", "stop", "raylm-jobs-stop", "--address", ray_head])
    assert res.exit_code == 0 and "STOPPED" in res.output
    status = CliRunner().invoke(_app(), ["jobs", "status", "raylm-jobs-stop", "--address", ray_head])
    assert status.exit_code == 3
