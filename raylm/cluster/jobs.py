"""Ray Jobs: submit `raylm train CONFIG` to a running cluster, follow it, list/status/logs/stop.

The submission id is stable (derived from trainer.run_name), and a job that already exists
under that id is followed rather than submitted again -- what KubeRay's submitter does -- so a
retried `raylm submit` never starts a duplicate run.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from raylm.cluster.storage import is_remote
from raylm.errors import UserError

if TYPE_CHECKING:  # raylm.config imports this package: no runtime import
    from raylm.config import RootConfig

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Exit code of `raylm submit --follow` / `raylm jobs status` per final job status.
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}
# runtime_env is stored by the job server and shown in the dashboard: no secrets in it.
_SECRET_WORDS = {"KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "CREDENTIALS"}
# RAY_OVERRIDE_JOB_RUNTIME_ENV: `raylm train` calls ray.init with a runtime_env of its own
# (raylm.cluster.connect); without it Ray refuses to merge that with the job's when a key repeats.
BASE_ENV = {"RAY_TRAIN_V2_ENABLED": "1", "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}


def resolve_address(address: str | None = None) -> str:
    """--address > RAY_ADDRESS (when it is a Jobs API URL) > http://127.0.0.1:8265."""
    if address:
        return address
    env = os.environ.get("RAY_ADDRESS", "")
    return env if env.startswith(("http://", "https://")) else DEFAULT_ADDRESS


def _use_token_if_available() -> None:
    # Ray >= 2.52 turns token auth on for clusters it starts; the Jobs client only sends the
    # token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) in token mode. Do what
    # ray.init does when it joins an existing cluster: token mode when a token is there, unless
    # RAY_AUTH_MODE says otherwise.
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # older Ray: no token auth
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def client(address: str | None = None) -> Any:
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    _use_token_if_available()
    try:
        return JobSubmissionClient(url)
    except AuthenticationError:
        raise UserError(
            f"the Ray cluster at {url} wants an auth token",
            hint="set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token, and RAY_AUTH_MODE=token",
        ) from None
    except (ConnectionError, RuntimeError) as err:
        raise UserError(
            f"cannot reach the Ray Jobs API at {url}: {str(err).splitlines()[0]}",
            hint="start a cluster (ray start --head) or forward its port "
            "(kubectl port-forward svc/<cluster>-head-svc 8265:8265), or pass --jobs-address",
        ) from None


def submission_id_for(run_name: str) -> str:
    return f"raylm-{run_name}"


def job_status(c: Any, job_id: str) -> str | None:
    """The job's status, or None when no job has that id."""
    try:
        return str(c.get_job_status(job_id).value)
    except RuntimeError as err:
        if "does not exist" in str(err) or "404" in str(err):
            return None
        raise UserError(f"job {job_id}: {err}") from None


def check_env(env: dict[str, str]) -> None:
    bad = sorted(k for k in env if _SECRET_WORDS & set(re.split(r"[_\W]+", k.upper())))
    if bad:
        raise UserError(
            [f"env {k}: looks like a secret; runtime_env is stored by the job server and shown in "
             "the dashboard" for k in bad],
            hint="set secrets on the cluster itself (a Kubernetes Secret, k8s.wandb_secret) instead",
        )


def runtime_env(working_dir: str, env: dict[str, str] | None = None, pip: list[str] | None = None) -> dict[str, Any]:
    env = {**BASE_ENV, **(env or {})}
    check_env(env)
    out: dict[str, Any] = {"working_dir": working_dir, "env_vars": env}
    if pip:
        out["pip"] = list(pip)
    return out


def submit_entrypoint(
    c: Any, entrypoint: str, submission_id: str, runtime_env: dict[str, Any] | None = None,
    resubmit_failed: bool = False, log: Callable[[str], None] = print, metadata: dict[str, str] | None = None,
) -> tuple[str, bool]:
    """Submit unless a job with this id exists; returns (id, submitted now)."""
    status = job_status(c, submission_id)
    if status is not None and not (resubmit_failed and status in ("FAILED", "STOPPED")):
        log(f"job {submission_id} exists ({status}): not submitting it again")
        return submission_id, False
    if status is not None:
        log(f"job {submission_id} ended {status}: deleting it to submit again")
        c.delete_job(submission_id)
        _wait_supervisor_gone(c, submission_id)
    job_id = c.submit_job(
        entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env,
        metadata={"submitted_by": "raylm", **(metadata or {})},
    )
    log(f"submitted job {job_id}")
    return job_id, True


def _wait_supervisor_gone(c: Any, job_id: str, timeout_s: float = 60.0) -> None:
    """Ray Jobs names a job's supervisor actor after the job's id, and the old one outlives its job's
    end by a moment: a job submitted again under that id meanwhile fails at once ("Job supervisor
    actor died"). Wait until it is gone (asked through the dashboard's state API)."""
    from ray.util.state import list_actors

    name, deadline = f"_ray_internal_job_actor_{job_id}", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            alive = list_actors(address=c.get_address(), filters=[("name", "=", name), ("state", "=", "ALIVE")],
                                raise_on_missing_output=False)
        except Exception:  # noqa: BLE001 -- no state API here: submit as before
            return
        if not alive:
            return
        time.sleep(0.5)


def follow(c: Any, job_id: str, out: TextIO | None = None, poll_s: float = 1.0) -> str:
    """Stream the job's logs until it ends; return its final status."""
    out = out or sys.stdout

    async def _tail() -> None:
        async for chunk in c.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(_tail())
    # The log stream closes when the job ends; the status may lag it by a moment.
    while (status := job_status(c, job_id)) not in TERMINAL:
        time.sleep(poll_s)
    return status


def exit_code(status: str | None) -> int:
    return EXIT_CODES.get(status or "", 0)


def submit(
    config_path: str | Path,
    overrides: list[str] | None = None,
    address: str | None = None,
    follow_logs: bool = False,
    env: dict[str, str] | None = None,
    pip: list[str] | None = None,
    submission_id: str | None = None,
    resubmit_failed: bool = False,
    command: str = "raylm train",
) -> int:
    """`raylm submit`: ship the resolved config in a working_dir and run `<command> <config>` on it
    (`raylm train` unless told otherwise, e.g. `python -m raylm train`)."""
    from raylm.config import load_config, save_config

    cfg = load_config(config_path, overrides)
    check_env(env or {})
    # The driver runs on the cluster and joins it through RAY_ADDRESS (set by Ray Jobs).
    cfg = cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"address": None})})
    _warn_relative_paths(cfg)
    c = client(address)
    job_id = submission_id or submission_id_for(cfg.trainer.run_name)
    name = Path(config_path).name
    with tempfile.TemporaryDirectory(prefix="raylm-submit-") as tmp:
        save_config(cfg, Path(tmp) / name)
        job_id, _ = submit_entrypoint(
            c, f"{command} {name}", job_id, runtime_env(tmp, env, pip), resubmit_failed=resubmit_failed,
            metadata={"raylm_storage_path": cfg.cluster.storage_path, "raylm_run_name": cfg.trainer.run_name},
        )
    if not follow_logs:
        print(f"follow it: raylm jobs logs {job_id} --follow  (status: raylm jobs status {job_id})")
        return 0
    return exit_code(follow(c, job_id))


def _warn_relative_paths(cfg: RootConfig) -> None:
    # A relative path resolves inside the job's working dir on the cluster: a temporary copy
    # that Ray may clean up, and one that other nodes do not see.
    for key, path in (("cluster.storage_path", cfg.cluster.storage_path), ("data.prepared_dir", cfg.data.prepared_dir)):
        if not is_remote(path) and not Path(path).is_absolute():
            print(f"warning: {key} '{path}' is relative: on the cluster it lands in the job's temporary "
                  "working dir; use shared storage (an absolute path on a shared volume, s3://, gs://)",
                  file=sys.stderr)


# --- list / status / logs / stop ---------------------------------------------------------------


def list_jobs(address: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for j in client(address).list_jobs():
        rows.append({
            "id": j.submission_id or j.job_id, "status": str(j.status.value),
            "entrypoint": j.entrypoint, "start_time": j.start_time, "end_time": j.end_time,
        })
    return sorted(rows, key=lambda r: r["start_time"] or 0)


def status(job_id: str, address: str | None = None) -> str:
    s = job_status(client(address), job_id)
    if s is None:
        raise UserError(f"no job {job_id} at {resolve_address(address)}", hint="see raylm jobs list")
    return s


def resume_point(job_id: str, address: str | None = None) -> str | None:
    """Where a (re)submitted run of this job starts: its latest registered checkpoint, read from the
    run's storage (`checkpoint_manager_snapshot.json`, what Ray Train itself resumes from).
    None when the job was not submitted by `raylm submit` or its storage cannot be read from here."""
    meta = client(address).get_job_info(job_id).metadata or {}
    storage, run = meta.get("raylm_storage_path"), meta.get("raylm_run_name")
    if not storage or not run or ("://" not in storage and not Path(storage).is_absolute()):
        return None  # a relative path lives in the job's temporary working dir
    snapshot = latest_checkpoint(storage, run)
    if snapshot is None:
        return f"no checkpoint yet in {storage.rstrip('/')}/{run}: a resubmitted run starts from step 0"
    name, step = snapshot
    return f"{storage.rstrip('/')}/{run}/{name} (step {step}): a resubmitted run resumes from it"


def latest_checkpoint(storage_path: str, run_name: str) -> tuple[str, int | None] | None:
    """(directory name, step) of the run's latest registered checkpoint, or None."""
    import json

    from raylm.cluster.storage import resolve

    fs, root = resolve(storage_path)
    try:
        with fs.open_input_stream(f"{root}/{run_name}/checkpoint_manager_snapshot.json") as f:
            latest = json.loads(f.read()).get("latest_checkpoint_result")
    except (OSError, ValueError):
        return None
    if not latest:
        return None
    return latest["checkpoint_dir_name"], latest.get("metrics", {}).get("step")


def logs(job_id: str, address: str | None = None, follow_logs: bool = False) -> int:
    c = client(address)
    if job_status(c, job_id) is None:
        raise UserError(f"no job {job_id} at {resolve_address(address)}", hint="see raylm jobs list")
    if follow_logs:
        return exit_code(follow(c, job_id))
    sys.stdout.write(c.get_job_logs(job_id))
    return 0


def stop(job_id: str, address: str | None = None, wait_s: float = 30.0) -> str:
    c = client(address)
    if job_status(c, job_id) is None:
        raise UserError(f"no job {job_id} at {resolve_address(address)}", hint="see raylm jobs list")
    c.stop_job(job_id)
    deadline = time.monotonic() + wait_s
    while (s := job_status(c, job_id)) not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
    return s or "STOPPED"

