"""Sweep outputs: results table (CSV + markdown), best config YAML, best HF model, summary JSON.

Everything is written into the sweep directory (Tune's experiment dir):

    results.csv  results.md  summary.json  best_config.yaml  best_model/  plots/*.png
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raylm.cluster.storage import is_remote
from raylm.config import RootConfig, dump_config, validate
from raylm.tuning.config import TuningConfig
from raylm.tuning.driver import SweepPaths, is_bad_metric
from raylm.tuning.schedulers import CHECKPOINT_PATH_KEY, EXPLOITS_FILE, TIME_ATTR
from raylm.tuning.space import apply_dotted, format_value, overrides_of

log = logging.getLogger(__name__)

COMPLETED, STOPPED, FAILED, UNFINISHED = "completed", "stopped early", "failed", "unfinished"


@dataclass
class TrialRow:
    trial_id: str
    status: str
    params: dict[str, Any]
    final: float | None  # metric at the last report
    best: float | None  # best metric over the trial's reports
    step: int  # last step reported
    reports: int
    reason: str = ""  # why it failed
    checkpoint: str | None = None  # best checkpoint still on disk
    history: list[dict[str, float]] = field(default_factory=list)  # [{step, metric}]


@dataclass
class SweepSummary:
    sweep_dir: str
    metric: str
    mode: str
    budget_steps: int
    rows: list[TrialRow]
    best_trial: str | None
    best_config: str | None = None
    best_model: str | None = None
    resumed: bool = False
    interrupted: bool = False
    plots: list[str] = field(default_factory=list)
    exploits: list[dict[str, Any]] = field(default_factory=list)  # PBT: clone <- donor checkpoint

    def row(self, trial_id: str) -> TrialRow:
        return next(r for r in self.rows if r.trial_id == trial_id)

    @property
    def failed(self) -> list[TrialRow]:
        return [r for r in self.rows if r.status == FAILED]


def _first_line(err: Any) -> str:
    text = str(err).strip()
    # Ray wraps trial errors in tracebacks; the last non-empty line holds the cause.
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:300]


def _history(df: Any, metric: str) -> list[dict[str, Any]]:
    if df is None or metric not in getattr(df, "columns", []) or TIME_ATTR not in df.columns:
        return []
    cols = [TIME_ATTR, metric] + ([CHECKPOINT_PATH_KEY] if CHECKPOINT_PATH_KEY in df.columns else [])
    out = []
    for rec in df[cols].to_dict("records"):
        ckpt = rec.get(CHECKPOINT_PATH_KEY)
        out.append({"step": int(rec[TIME_ATTR]), "value": float(rec[metric]),
                    "checkpoint": ckpt if isinstance(ckpt, str) and ckpt else None})
    return out


def _best_value(values: list[float], mode: str) -> float | None:
    ok = [v for v in values if not is_bad_metric(v)]
    if not ok:
        return None
    return min(ok) if mode == "min" else max(ok)


def _best_checkpoint(history: list[dict[str, Any]], mode: str) -> str | None:
    """The best-scoring checkpoint that still exists (Train keeps only num_to_keep)."""
    sign = 1.0 if mode == "min" else -1.0
    kept = [h for h in history if h["checkpoint"] and os.path.isdir(h["checkpoint"])]
    kept = [h for h in kept if not is_bad_metric(h["value"])]
    if not kept:
        return None
    return min(kept, key=lambda h: (sign * h["value"], -h["step"]))["checkpoint"]


def _status(trial: Any, error: Any, history: list[dict[str, Any]], budget: int) -> tuple[str, str]:
    if error is not None:
        return FAILED, _first_line(error)
    if history and is_bad_metric(history[-1]["value"]):
        return FAILED, f"metric is {history[-1]['value']} at step {history[-1]['step']}"
    if trial.status in ("PENDING", "RUNNING", "PAUSED"):
        return UNFINISHED, ""
    if not history:
        return FAILED, "no metrics reported"
    return (COMPLETED if history[-1]["step"] >= budget else STOPPED), ""


def trial_rows(grid: Any, metric: str, mode: str, base_steps: int) -> list[TrialRow]:
    """One row per trial; `base_steps` is trainer.max_steps unless the trial sampled its own."""
    rows = []
    # ResultGrid keeps results in the order of its trials; the Trial carries the status.
    for trial, result in zip(grid._experiment_analysis.trials, grid):
        history = _history(result.metrics_dataframe, metric)
        params = overrides_of(result.config or {})
        budget = int(params.get("trainer.max_steps", base_steps))
        status, reason = _status(trial, result.error, history, budget)
        values = [h["value"] for h in history]
        rows.append(TrialRow(
            trial_id=trial.trial_id, status=status, params=params,
            final=values[-1] if values else None, best=_best_value(values, mode),
            step=history[-1]["step"] if history else 0, reports=len(history), reason=reason,
            checkpoint=_best_checkpoint(history, mode),
            history=[{"step": h["step"], "value": h["value"]} for h in history],
        ))
    return rows


def pick_best(rows: list[TrialRow], mode: str) -> TrialRow | None:
    """Best final metric, full-budget trials first (an early-stopped trial lost at a rung)."""
    sign = 1.0 if mode == "min" else -1.0
    for group in ([r for r in rows if r.status == COMPLETED], [r for r in rows if r.status == STOPPED]):
        scored = [r for r in group if r.final is not None and not is_bad_metric(r.final)]
        if scored:
            return min(scored, key=lambda r: sign * r.final)  # type: ignore[operator]
    return None


def best_config(cfg: RootConfig, best: TrialRow) -> RootConfig:
    """The base config with the best trial's values, runnable by `raylm train` as is."""
    raw = apply_dotted(cfg.model_dump(mode="json"), best.params)
    raw["tuning"] = None
    raw["trainer"]["run_name"] = f"{(cfg.tuning.name if cfg.tuning else 'sweep')}-best"
    return validate(raw, origin="best config")


def _write_best_config(cfg: RootConfig, best: TrialRow, sweep_dir: Path) -> str:
    path = sweep_dir / "best_config.yaml"
    scheduler = cfg.tuning.scheduler.type if cfg.tuning else "asha"
    note = " (PBT: the values the best trial ended with)" if scheduler == "pbt" else ""
    header = (f"# Best configuration of sweep '{sweep_dir.name}', trial {best.trial_id}{note}.\n"
              f"# Run it with: raylm train {path}\n")
    path.write_text(header + dump_config(best_config(cfg, best)))
    return str(path)


def _export_model(best: TrialRow, sweep_dir: Path, cfg: RootConfig, merge: bool) -> str | None:
    if not best.checkpoint or is_remote(best.checkpoint):
        return None
    from raylm.serving.export import export_checkpoint, is_adapter_checkpoint, manifest_tokenizer

    if is_adapter_checkpoint(best.checkpoint):  # a few hundred KB: the adapter directory, and merged on request
        trial_cfg, tok = best_config(cfg, best), manifest_tokenizer(cfg.data.prepared_dir)
        dst = sweep_dir / "best_model"
        export_checkpoint(best.checkpoint, str(dst), tok, cfg=trial_cfg)
        if merge:
            export_checkpoint(best.checkpoint, str(sweep_dir / "best_model_merged"), tok, merge=True, cfg=trial_cfg)
        return str(dst)
    src = Path(best.checkpoint) / "model"
    src = src if src.is_dir() else Path(best.checkpoint)
    dst = sweep_dir / "best_model"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return str(dst)


def _fmt(v: float | None) -> str:
    return "" if v is None else format_value(v)


def table(summary: SweepSummary) -> tuple[list[str], list[list[str]]]:
    keys = sorted({k for r in summary.rows for k in r.params})
    head = ["trial", "status", *keys, f"{summary.metric} (final)", f"{summary.metric} (best)", "step", "reason"]
    body = []
    for r in summary.rows:
        mark = " *" if r.trial_id == summary.best_trial else ""
        body.append([r.trial_id + mark, r.status, *[format_value(r.params.get(k, "")) for k in keys],
                     _fmt(r.final), _fmt(r.best), str(r.step), r.reason])
    return head, body


def markdown(summary: SweepSummary) -> str:
    head, body = table(summary)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in body]
    return "\n".join(lines)


def _write_tables(summary: SweepSummary, sweep_dir: Path) -> None:
    head, body = table(summary)
    with open(sweep_dir / "results.csv", "w", newline="") as f:
        csv.writer(f).writerows([head, *body])
    (sweep_dir / "results.md").write_text(markdown(summary) + "\n")
    data = asdict(summary)
    (sweep_dir / "summary.json").write_text(json.dumps(data, indent=1, default=str))


def expected_trials(t: TuningConfig) -> int:
    """Trials a complete sweep has: num_samples x the grid (grid keys multiply, Tune-style)."""
    grid = 1
    for spec in t.space.values():
        if spec.type == "grid":
            grid *= len(spec.values or [])
    return t.num_samples * grid


def _interrupted(rows: list[TrialRow], t: TuningConfig) -> bool:
    # Trials are created lazily: a sweep stopped by Ctrl+C may simply lack the later ones.
    if any(r.status == UNFINISHED for r in rows):
        return True
    return t.time_budget_s is None and len(rows) < expected_trials(t)


def summarise(grid: Any, cfg: RootConfig, paths: SweepPaths, budget: int, *, resumed: bool = False,
              plot: Callable[[SweepSummary, Path], list[str]] | None = None) -> SweepSummary:
    """Collect the trials, pick the best, write every output file into the sweep dir (`plot` draws the
    PNGs, raylm.tuning.plots.write_plots, before the tables that list them)."""
    t = cfg.tuning
    assert t is not None
    rows = trial_rows(grid, t.metric, t.mode, cfg.trainer.max_steps)
    best = pick_best(rows, t.mode)
    sweep_dir = paths.sweep_dir
    sweep_dir.mkdir(parents=True, exist_ok=True)
    summary = SweepSummary(
        sweep_dir=str(sweep_dir), metric=t.metric, mode=t.mode, budget_steps=budget, rows=rows,
        best_trial=best.trial_id if best else None, resumed=resumed,
        interrupted=_interrupted(rows, t),
        exploits=read_exploits(sweep_dir),
    )
    if best is not None:
        summary.best_config = _write_best_config(cfg, best, sweep_dir)
        summary.best_model = _export_model(best, sweep_dir, cfg, t.merge_best) if t.export_best else None
    if plot is not None:
        summary.plots = plot(summary, sweep_dir / "plots")
    _write_tables(summary, sweep_dir)
    return summary


def read_exploits(sweep_dir: Path) -> list[dict[str, Any]]:
    path = sweep_dir / EXPLOITS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
