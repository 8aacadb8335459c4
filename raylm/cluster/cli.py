"""CLI pieces of raylm.cluster, wired into the root app by raylm/cli.py:

    app.add_typer(k8s_app, name="k8s"); app.add_typer(jobs_app, name="jobs")
    app.command("submit")(submit_cmd)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
import yaml

from raylm._cli import user_errors
from raylm.errors import UserError

if TYPE_CHECKING:
    from raylm.cluster import k8s_validate

k8s_app = typer.Typer(help="KubeRay manifests: render, validate, apply.", no_args_is_help=True)
jobs_app = typer.Typer(help="Ray Jobs on a running cluster: list, status, logs, stop.", no_args_is_help=True)

ADDRESS = typer.Option(None, "--address", help="Ray Jobs API (default: RAY_ADDRESS, else http://127.0.0.1:8265).")
CRDS = typer.Option(None, "--crds", help="Folder of KubeRay CRD YAML (default: RAYLM_KUBERAY_CRDS, else kubectl).")
OVERRIDES = typer.Argument(None, help="Overrides as section.key=value, e.g. trainer.max_steps=20.")


def _env_pairs(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--env '{item}': expected NAME=value")
        k, v = item.split("=", 1)
        out[k] = v
    return out


# --- raylm k8s ---------------------------------------------------------------------------------


@k8s_app.command("render")
@user_errors
def render_cmd(
    config: Path = typer.Argument(..., help="raylm config (YAML)."),
    overrides: list[str] | None = OVERRIDES,
    output: Path | None = typer.Option(None, "-o", "--output", help="Write here instead of stdout."),
    crds: Path | None = typer.Option(None, "--crds", help="Validate the result against these CRDs too."),
) -> None:
    """Write the ConfigMap + RayJob (or RayCluster) for CONFIG."""
    from raylm.cluster import k8s_render, k8s_validate
    from raylm.config import load_config

    docs = k8s_render.render(load_config(config, overrides), config)
    if crds:
        _report(k8s_validate.validate(docs, crds, origin=f"render({config})"))
    text = k8s_render.to_yaml(docs)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        typer.echo(f"wrote {output}", err=True)
    else:
        sys.stdout.write(text)


@k8s_app.command("validate")
@user_errors
def validate_cmd(
    paths: list[str] = typer.Argument(..., help="Manifests, kustomization folders, raylm configs, or - (stdin)."),
    crds: Path | None = CRDS,
    strict: bool = typer.Option(False, "--strict", help="Fail (exit 2) on warnings too, not only on errors."),
) -> None:
    """Check manifests as KubeRay v1.7 takes them: errors (it would reject them) exit 2;
    warnings (raylm's advice on manifests KubeRay accepts) print and exit 0 unless --strict."""
    from raylm.cluster import k8s_validate
    from raylm.cluster._schema import load_crds

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


@k8s_app.command("apply")
@user_errors
def apply_cmd(
    config: Path = typer.Argument(..., help="raylm config (YAML)."),
    overrides: list[str] | None = OVERRIDES,
    crds: Path | None = CRDS,
    follow: bool = typer.Option(True, "--follow/--no-follow", help="Follow the RayJob to its end."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Server-side dry run: nothing is created."),
) -> None:
    """Render, validate, `kubectl apply`, then follow the RayJob; the exit code mirrors its end."""
    from raylm.cluster import jobs, k8s_kubectl, k8s_render, k8s_validate
    from raylm.config import load_config

    cfg = load_config(config, overrides)
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
    config: Path = typer.Argument(..., help="raylm config (YAML) to run with `raylm train` on the cluster."),
    overrides: list[str] | None = OVERRIDES,
    address: str | None = ADDRESS,
    follow: bool = typer.Option(False, "--follow", "-f", help="Stream the logs; exit code mirrors the job."),
    env: list[str] | None = typer.Option(None, "--env", help="NAME=value for the job (no secrets)."),
    pip: list[str] | None = typer.Option(None, "--pip", help="Extra pip requirement for the job."),
    submission_id: str | None = typer.Option(None, "--id", help="Submission id (default: raylm-<run_name>)."),
    resubmit_failed: bool = typer.Option(False, "--resubmit-failed", help="Replace a FAILED/STOPPED job of the same id."),
    command: str = typer.Option("raylm train", "--command", help="What the job runs on the config."),
) -> None:
    """Submit CONFIG through the Ray Jobs API; the same run name never starts a second job."""
    from raylm.cluster import jobs

    code = jobs.submit(
        config, overrides, address, follow_logs=follow, env=_env_pairs(env), pip=pip,
        submission_id=submission_id, resubmit_failed=resubmit_failed, command=command,
    )
    raise typer.Exit(code)


@jobs_app.command("list")
@user_errors
def list_cmd(address: str | None = ADDRESS) -> None:
    """Jobs on the cluster, oldest first."""
    from raylm.cluster import jobs

    for r in jobs.list_jobs(address):
        typer.echo(f"{r['id']:<40} {r['status']:<10} {r['entrypoint']}")


@jobs_app.command("status")
@user_errors
def status_cmd(job_id: str = typer.Argument(...), address: str | None = ADDRESS) -> None:
    """Print the job's status and the checkpoint its run resumes from; exit 0 SUCCEEDED or still
    running, 1 FAILED, 3 STOPPED."""
    from raylm.cluster import jobs

    s = jobs.status(job_id, address)
    typer.echo(s)
    resume = jobs.resume_point(job_id, address)
    if resume:
        typer.echo(f"checkpoint: {resume}")
    raise typer.Exit(jobs.exit_code(s))


@jobs_app.command("logs")
@user_errors
def logs_cmd(
    job_id: str = typer.Argument(...),
    address: str | None = ADDRESS,
    follow: bool = typer.Option(False, "--follow", "-f", help="Stream until the job ends; exit code mirrors it."),
) -> None:
    """Print (or stream) the job's logs."""
    from raylm.cluster import jobs

    raise typer.Exit(jobs.logs(job_id, address, follow_logs=follow))


@jobs_app.command("stop")
@user_errors
def stop_cmd(job_id: str = typer.Argument(...), address: str | None = ADDRESS) -> None:
    """Stop the job and wait (up to 30 s) until it has stopped."""
    from raylm.cluster import jobs

    typer.echo(jobs.stop(job_id, address))
