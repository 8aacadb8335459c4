"""`raylm tune CONFIG [overrides...]`: one entry point, callable from tests and the CLI."""

from __future__ import annotations

from raylm.config import RootConfig, load_config
from raylm.errors import EXIT_USER_ERROR, UserError
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


def tune_cmd(config: str, overrides: list[str] | None = None, address: str | None = None) -> int:
    """Typer-compatible body of `raylm tune`; returns the exit code (2 on a user error)."""
    try:
        cfg = load_config(config, overrides or [])
        return main(cfg, address=address)
    except UserError as err:
        for line in err.lines():
            print(line)
        return EXIT_USER_ERROR
