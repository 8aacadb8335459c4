"""PNG plots of a sweep: the metric along training per trial, and each hyperparameter vs the
final metric. Early-stopped trials end with a cross, failed ones are drawn in red."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raylm.tuning.results import SweepSummary, TrialRow

_STYLE = {  # status -> (line style, end marker, alpha)
    "completed": ("-", "o", 1.0),
    "stopped early": ("--", "x", 0.6),
    "failed": (":", "X", 0.8),
    "unfinished": ("-.", ">", 0.6),
}


def _label(row: TrialRow) -> str:
    from raylm.tuning.space import format_value

    params = ", ".join(f"{k.split('.')[-1]}={format_value(v)}" for k, v in row.params.items())
    return f"{row.trial_id[-5:]} {params} ({row.status})"


def progress_plot(summary: SweepSummary, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for row in summary.rows:
        if not row.history:
            continue
        ls, marker, alpha = _STYLE.get(row.status, ("-", "o", 1.0))
        xs = [h["step"] for h in row.history]
        ys = [h["value"] for h in row.history]
        color = "tab:red" if row.status == "failed" else None
        width = 2.5 if row.trial_id == summary.best_trial else 1.2
        (line,) = ax.plot(xs, ys, ls, alpha=alpha, lw=width, color=color, label=_label(row))
        ax.plot(xs[-1:], ys[-1:], marker, color=line.get_color(), ms=9, alpha=alpha)
    _mark_exploits(ax, summary)
    ax.axvline(summary.budget_steps, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(summary.metric)
    ax.set_title(f"{Path(summary.sweep_dir).name}: {summary.metric} per trial (x = stopped early)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _mark_exploits(ax: object, summary: SweepSummary) -> None:
    """PBT: a star where a weak trial took over a donor's checkpoint."""
    for i, ex in enumerate(summary.exploits):
        donor = next((r for r in summary.rows if r.trial_id == ex["donor"]), None)
        point = next((h for h in (donor.history if donor else []) if h["step"] == ex["donor_step"]), None)
        if point:
            ax.plot([point["step"]], [point["value"]], "*", color="black", ms=12,  # type: ignore[attr-defined]
                    label="PBT exploit (clone restarts here)" if i == 0 else None)


def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def params_plot(summary: SweepSummary, path: Path) -> str | None:
    import matplotlib.pyplot as plt

    keys = sorted({k for r in summary.rows for k in r.params})
    rows = [r for r in summary.rows if r.final is not None]
    if not keys or not rows:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for status, (_, marker, alpha) in _STYLE.items():
            pts = [(r.params.get(key), r.final) for r in rows if r.status == status and key in r.params]
            if pts:
                xs = [p[0] if _numeric([p[0]]) else str(p[0]) for p in pts]
                ax.scatter(xs, [p[1] for p in pts], marker=marker, alpha=alpha, label=status)
        values = [r.params.get(key) for r in rows if key in r.params]
        if _numeric(values) and min(values) > 0 and max(values) / min(values) >= 50:
            ax.set_xscale("log")  # loguniform ranges read better on a log axis
        ax.set_xlabel(key)
        ax.set_ylabel(f"final {summary.metric}")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def write_plots(summary: SweepSummary, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # headless: sweeps run on cluster heads and CI
    out_dir.mkdir(parents=True, exist_ok=True)
    out = [progress_plot(summary, out_dir / "progress.png")]
    params = params_plot(summary, out_dir / "params.png")
    return out + ([params] if params else [])
