"""`raylm report RUN`: loss curves (train, validation) as PNG and a summary table."""

from __future__ import annotations

import json
import os

from raylm.errors import UserError


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"no metrics in '{run_dir}' (metrics.jsonl missing)", hint="pass a run directory, e.g. runs/demo")
    return [json.loads(line) for line in open(path) if line.strip()]


def plot_losses(rows: list[dict], out_png: str, title: str = "") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def summary_table(rows: list[dict]) -> str:
    last = {}
    for r in rows:
        last.update({k: v for k, v in r.items() if isinstance(v, (int, float)) and v is not None})
    keys = [k for k in ("step", "train_loss", "val_loss", "val_ppl", "val_accuracy", "val_f1", "val_bleu", "val_rougeL",
                        "tokens_per_s",
                        "mfu", "tokens_seen", "peak_mem_mb") if k in last]
    lines = ["| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {last[k]:.4g} |" if isinstance(last[k], float) else f"| {k} | {last[k]} |" for k in keys]
    return "\n".join(lines)


def report(run_dir: str) -> dict:
    rows = read_metrics(run_dir)
    png = plot_losses(rows, os.path.join(run_dir, "loss.png"), title=os.path.basename(run_dir.rstrip("/")))
    table = summary_table(rows)
    with open(os.path.join(run_dir, "summary.md"), "w") as f:
        f.write(table + "\n")
    return {"png": png, "table": table}
