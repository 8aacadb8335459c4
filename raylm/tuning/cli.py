"""`raylm tune CONFIG [overrides...]`: one entry point, callable from tests and the CLI."""

from __future__ import annotations

import os

import typer

from raylm.config import RootConfig
from raylm.errors import UserError
from raylm.tuning.driver import TrainerFactory


def main(cfg: RootConfig, *, address: str | None = None, factory: TrainerFactory | None = None) -> int:
    """Run or resume the sweep; print the table and where the outputs are.

    0: at least one trial produced a usable result; 1: none did; 130: the sweep was
    interrupted (run the same command again to resume).
    """
    from raylm.cluster import connect
    from raylm.tuning.results import markdown
    from raylm.tuning.sweep import run_sweep

    with connect(cfg.cluster, address):
        summary = run_sweep(cfg, factory=factory)
    print(markdown(summary))
    for row in summary.failed:
        print(f"failed: trial {row.trial_id}: {row.reason}")
    if summary.interrupted:
        print(f"sweep interrupted; run the same command again to resume ({summary.sweep_dir})")
        return 130
    if summary.best_trial is None:
        print(f"no trial finished with a usable {summary.metric}; see {summary.sweep_dir}")
        return 1
    best = summary.row(summary.best_trial)
    print(f"best: trial {best.trial_id} {summary.metric}={best.final:.4g}")
    print(f"best config: {summary.best_config}  (raylm train {summary.best_config})")
    if summary.best_model:
        print(f"best model (HF): {summary.best_model}")
    for p in summary.plots:
        print(f"plot: {p}")
    return 0


OVERRIDES = typer.Argument(None, help="Dotted overrides, e.g. tuning.num_samples=4 trainer.max_steps=50")
ADDRESS = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS, else embedded Ray).")


def tune_cmd(config: str, overrides: list[str] = OVERRIDES, address: str = ADDRESS,
             verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray's messages on the console too.")) -> None:
    """Sweep hyperparameters with Ray Tune (the config's `tuning` section); rerun to resume."""
    from raylm.config import load_config

    cfg = load_config(config, overrides or [])
    check_before_ray(cfg, config)
    from raylm._cli import setup_logging
    from raylm.tuning.driver import sweep_paths

    setup_logging(verbose, os.path.join(str(sweep_paths(cfg).sweep_dir), "ray.log"))
    code = main(cfg, address=address)
    if code:
        raise typer.Exit(code)


def check_before_ray(cfg: RootConfig, origin: str = "config") -> None:
    """Every input problem (search space, searcher extra, data, model) in one UserError, in a
    second, before a cluster starts."""
    from raylm.preflight import preflight
    from raylm.tuning.searchers import require_extra
    from raylm.tuning.space import space_problems

    if cfg.tuning is None:
        raise UserError(f"{origin}: no 'tuning' section to sweep", hint="see configs/tune-*.yaml")
    problems = space_problems(cfg.tuning, cfg.model_dump(mode="json"))
    hint = "see configs/tune-*.yaml for a valid search space" if problems else None
    for check in (lambda: preflight(cfg, "tune"), lambda: require_extra(cfg.tuning.searcher.type)):  # type: ignore[union-attr]
        try:
            check()
        except UserError as err:
            problems += err.problems
            hint = hint or err.hint
    if problems:
        raise UserError(problems, hint=hint)

