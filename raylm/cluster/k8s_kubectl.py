"""kubectl, the one door to a cluster: `kustomize` (offline), `apply`, and following a RayJob.

The binary is $RAYLM_KUBECTL, else `kubectl` on PATH, so tests can stand a script in for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from raylm.errors import UserError


def _kubectl() -> str:
    exe = os.environ.get("RAYLM_KUBECTL") or shutil.which("kubectl")
    if not exe:
        raise UserError("kubectl not found on PATH", hint="install kubectl or set RAYLM_KUBECTL")
    return exe


def kustomize(path: str | Path) -> str:
    """`kubectl kustomize PATH` (works offline)."""
    res = subprocess.run([_kubectl(), "kustomize", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        raise UserError(f"{path}: kubectl kustomize failed: {res.stderr.strip().splitlines()[-1:]}")
    return res.stdout


def apply(manifest: str, namespace: str | None = None, dry_run: bool = False) -> None:
    """`kubectl apply -f -` with the rendered YAML (server-side dry run with `dry_run`)."""
    cmd = [_kubectl(), "apply", "-f", "-"]
    if namespace:
        cmd += ["-n", namespace]
    if dry_run:
        cmd.append("--dry-run=server")
    res = subprocess.run(cmd, input=manifest, text=True, capture_output=True)
    sys.stdout.write(res.stdout)
    if res.returncode != 0:
        raise UserError(f"kubectl apply failed: {res.stderr.strip()}")


def follow_rayjob(name: str, namespace: str | None = None, poll_s: float = 5.0, timeout_s: float | None = None) -> str:
    """Print the RayJob's status transitions until it ends; return the Ray job status."""
    cmd = [_kubectl(), "get", "rayjob", name, "-o", "jsonpath={.status.jobDeploymentStatus} {.status.jobStatus}"]
    if namespace:
        cmd += ["-n", namespace]
    last, start = None, time.monotonic()
    while True:
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise UserError(f"kubectl get rayjob {name} failed: {res.stderr.strip()}")
        deploy, _, job = res.stdout.strip().partition(" ")
        if (deploy, job) != last:
            print(f"rayjob/{name}: deployment={deploy or '-'} job={job or '-'}", flush=True)
            last = (deploy, job)
        if deploy in ("Complete", "Failed") or job in ("SUCCEEDED", "FAILED", "STOPPED"):
            return job or "FAILED"
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            return "TIMEOUT"
        time.sleep(poll_s)
