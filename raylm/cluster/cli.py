"""The commands of raylm.cluster: `raylm k8s render/validate/apply`, `raylm submit`, `raylm jobs
list/status/logs/stop`; raylm/cli.py's table registers them."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
import yaml

from raylm._cli import user_errors
from raylm.cli_options import (
    CONFIG,
    JOB_ID,
    JOBS_ADDRESS,
    OLD_JOBS_ADDRESS,
    OVERRIDES,
    build,
    jobs_api,
    load,
)
from raylm.cluster import jobs, k8s_kubectl, k8s_render, k8s_validate
from raylm.cluster._schema import load_crds
from raylm.errors import UserError

CRDS = typer.Option(None, "--crds", help="Folder of KubeRay CRD YAML (default: RAYLM_KUBERAY_CRDS, else kubectl).")


def _env_pairs(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--env '{item}': expected NAME=value")
        k, v = item.split("=", 1)
        out[k] = v
    return out


# --- raylm k8s ---------------------------------------------------------------------------------


@user_errors
def render_cmd(
    config: str = CONFIG,
    overrides: list[str] | None = OVERRIDES,
    output: Path | None = typer.Option(None, "-o", "--output", help="Write here instead of stdout."),
    crds: Path | None = typer.Option(None, "--crds", help="Validate the result against these CRDs too."),
) -> None:
    """Write the ConfigMap + RayJob (or RayCluster) for CONFIG."""
    docs = k8s_render.render(load(config, overrides, "k8s"), config)
    if crds:
        _report(k8s_validate.validate(docs, crds, origin=f"render({config})"))
    text = k8s_render.to_yaml(docs)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        typer.echo(f"wrote {output}", err=True)
    else:
        sys.stdout.write(text)


@user_errors
def validate_cmd(
    paths: list[str] = typer.Argument(..., help="Manifests, kustomization folders, raylm configs, or - (stdin)."),
    crds: Path | None = CRDS,
    strict: bool = typer.Option(False, "--strict", help="Fail (exit 2) on warnings too, not only on errors."),
) -> None:
    """Check manifests as KubeRay v1.7 takes them: errors (it would reject them) exit 2;
    warnings (raylm's advice on manifests KubeRay accepts) print and exit 0 unless --strict."""
    schemas = load_crds(crds)
    report = k8s_validate.Report()
    for p in paths:
        if p == "-":
            docs = list(yaml.safe_load_all(sys.stdin.read()))
            report += k8s_validate.validate(docs, origin="<stdin>", schemas=schemas)
        else:
            report += k8s_validate.validate_path(p, schemas)
    _report(report, strict)
    typer.echo(f"ok: {', '.join(paths)}")


def _report(report: k8s_validate.Report, strict: bool = False) -> None:
    """Print the warnings; raise the failing lines (errors, and warnings when strict) as a UserError."""
    failing = report.failing(strict)
    if not strict:  # strict: the warnings are among the failing lines
        for line in report.warnings:
            typer.echo(f"warning: {line}", err=True)
    if failing:
        counts = f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)"
        hint = f"{counts}{' (--strict: warnings fail too)' if strict else ''}; field paths follow the manifest"
        raise UserError(failing, hint=hint)


@user_errors
def apply_cmd(
    config: str = CONFIG,
    overrides: list[str] | None = OVERRIDES,
    crds: Path | None = CRDS,
    follow: bool = typer.Option(True, "--follow/--no-follow", help="Follow the RayJob to its end."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Server-side dry run: nothing is created."),
) -> None:
    """Render, validate, `kubectl apply`, then follow the RayJob; the exit code mirrors its end."""
    cfg = load(config, overrides, "k8s")
    docs = k8s_render.render(cfg, config)
    _report(k8s_validate.validate(docs, crds, origin=f"render({config})"))
    k8s_kubectl.apply(k8s_render.to_yaml(docs), cfg.k8s.namespace, dry_run=dry_run)
    if dry_run or not follow or cfg.k8s.kind != "RayJob":
        return
    name = k8s_render.resource_name(cfg)
    status = k8s_kubectl.follow_rayjob(name, cfg.k8s.namespace)
    typer.echo(f"logs: kubectl logs -l job-name={name} --tail=-1")
    raise typer.Exit(jobs.exit_code(status) if status != "TIMEOUT" else 1)


# --- raylm submit / jobs -----------------------------------------------------------------------


@user_errors
def submit_cmd(
    config: str = CONFIG,
    overrides: list[str] | None = OVERRIDES,
    jobs_address: str | None = JOBS_ADDRESS,
    follow: bool = typer.Option(False, "--follow", "-f", help="Stream the logs; exit code mirrors the job."),
    env: list[str] | None = typer.Option(None, "--env", help="NAME=value for the job (no secrets)."),
    pip: list[str] | None = typer.Option(None, "--pip", help="Extra pip requirement for the job."),
    submission_id: str | None = typer.Option(None, "--id", help="Submission id (default: raylm-<run_name>)."),
    resubmit_failed: bool = typer.Option(False, "--resubmit-failed", help="Replace a FAILED/STOPPED job of the same id."),
    command: str = typer.Option("raylm train", "--command", help="What the job runs on the config."),
    old_address: str | None = OLD_JOBS_ADDRESS,
) -> None:
    """Submit CONFIG through the Ray Jobs API; the same run name never starts a second job."""
    with jobs_api(jobs_address, old_address) as address:
        code = jobs.submit(
            config, overrides, address, follow_logs=follow, env=_env_pairs(env), pip=pip,
            submission_id=submission_id, resubmit_failed=resubmit_failed, command=command,
        )
    raise typer.Exit(code)


@user_errors
def list_cmd(jobs_address: str | None = JOBS_ADDRESS, old_address: str | None = OLD_JOBS_ADDRESS) -> None:
    """Jobs on the cluster, oldest first."""
    with jobs_api(jobs_address, old_address) as address:
        for r in jobs.list_jobs(address):
            typer.echo(f"{r['id']:<40} {r['status']:<10} {r['entrypoint']}")


@user_errors
def status_cmd(job_id: str = JOB_ID, jobs_address: str | None = JOBS_ADDRESS,
               old_address: str | None = OLD_JOBS_ADDRESS) -> None:
    """Print the job's status and the checkpoint its run resumes from; exit 0 SUCCEEDED or still
    running, 1 FAILED, 3 STOPPED."""
    with jobs_api(jobs_address, old_address) as address:
        s = jobs.status(job_id, address)
        typer.echo(s)
        resume = jobs.resume_point(job_id, address)
    if resume:
        typer.echo(f"checkpoint: {resume}")
    raise typer.Exit(jobs.exit_code(s))


@user_errors
def logs_cmd(
    job_id: str = JOB_ID,
    jobs_address: str | None = JOBS_ADDRESS,
    follow: bool = typer.Option(False, "--follow", "-f", help="Stream until the job ends; exit code mirrors it."),
    old_address: str | None = OLD_JOBS_ADDRESS,
) -> None:
    """Print (or stream) the job's logs."""
    with jobs_api(jobs_address, old_address) as address:
        code = jobs.logs(job_id, address, follow_logs=follow)
    raise typer.Exit(code)


@user_errors
def stop_cmd(job_id: str = JOB_ID, jobs_address: str | None = JOBS_ADDRESS,
             old_address: str | None = OLD_JOBS_ADDRESS) -> None:
    """Stop the job and wait (up to 30 s) until it has stopped."""
    with jobs_api(jobs_address, old_address) as address:
        typer.echo(jobs.stop(job_id, address))


# For callers that assemble an app of their own from these sub-apps (tests/unit/test_kuberay.py,
# test_k8s_validate.py, test_kuberay_jobs_storage.py, tests/integration/test_jobs.py): the `k8s` and `jobs`
# rows of raylm/cli.py's table, which registers them for `raylm` (tests/unit/test_cli_table.py holds the two equal).
k8s_app = build({"render": render_cmd, "validate": validate_cmd, "apply": apply_cmd})
jobs_app = build({"list": list_cmd, "status": status_cmd, "logs": logs_cmd, "stop": stop_cmd})
