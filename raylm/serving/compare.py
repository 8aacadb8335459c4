"""`raylm eval A B ... --input FILE`: several models' metrics on one file as one table, each metric with its
value per model, its delta to the first model and which way is better; written as JSON and Markdown beside
the console table.

`evaluate` scores each model through `raylm.serving.dispatch.evaluate_file` (the export's task, as
`raylm eval MODEL --input FILE` does); the rest is torch-free: `compare` takes the result dicts, as `(label,
result)` pairs, and never loads a model.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from typing import Any

from raylm.errors import UserError
from raylm.tasks.objectives import HIGHER_IS_BETTER

# Keys that count what was scored (or describe it): shown, never given a delta; so is a key whose values are all
# integers (a task's own counts: sft's trained_tokens, generated), or none a number (f1_average: "binary").
COUNT_KEYS = frozenset({"examples", "rejected", "tokens", "masked_tokens", "pairs", "decoded", "rows"})
# sft's `answered`: the share of generated replies with a final answer
HIGHER = frozenset(m.removeprefix("val_") for m in HIGHER_IS_BETTER) | {"exact_match", "nsp_accuracy", "answered"}
LOWER = frozenset({"loss", "perplexity", "ppl", "nats_per_char", "bits_per_byte"})
ARROWS = {"higher": "↑ higher", "lower": "↓ lower", None: ""}  # Markdown only: the console stays ASCII


def better(metric: str) -> str | None:
    """Which way a metric improves: "higher" (accuracy, f1, exact_match, bleu, rouge*), "lower" (loss,
    perplexity, ...), None when raylm does not know it (a task of one's own): shown without a direction."""
    name = metric.removeprefix("val_")
    if name in HIGHER or name.startswith(("f1_", "rouge", "accuracy")):
        return "higher"
    if name in LOWER or name.endswith("loss"):
        return "lower"
    return None


def labels(model_dirs: list[str]) -> list[str]:
    """A short label per model: its directory's basename, with as many parents as it takes to tell equal
    basenames apart (`runs/a/export`, `runs/b/export` -> `a/export`, `b/export`); the same directory twice gets
    `#2`, `#3`..."""
    parts = [os.path.normpath(os.path.abspath(d)).strip(os.sep).split(os.sep) for d in model_dirs]
    depth = [1] * len(parts)
    while True:
        names = ["/".join(p[-k:]) for p, k in zip(parts, depth)]
        clash = {i for i, n in enumerate(names) for j, m in enumerate(names) if n == m and parts[i] != parts[j]}
        grow = [i for i in clash if depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _verdict(delta: float, direction: str | None) -> str | None:
    if direction is None or not math.isfinite(delta):
        return None
    if delta == 0:
        return "same"
    return "better" if (delta > 0) == (direction == "higher") else "worse"


def same_task(tasks: dict[str, str | None]) -> str | None:
    """The one task of these models ({label: task}; None: not known, e.g. a directory the dispatcher resolves
    itself), or a UserError naming each model's task when they differ."""
    known = {t for t in tasks.values() if t is not None}
    if len(known) > 1:
        raise UserError("models of different tasks cannot be compared on one file: "
                        + ", ".join(f"{label} ({t or 'unknown task'})" for label, t in tasks.items()),
                        hint="compare exports of one task (a base model, its adapters, a merged export), or score them "
                             "all as one task: --task sft")
    return next(iter(known), None)


def compare(results: list[tuple[str, dict]], input_file: str | None = None) -> dict:
    """The comparison table of `(label, evaluate_file result)` pairs, the first model the baseline.

    rows: the counts (examples, rejected, ...) and descriptive keys first (values only), then each numeric metric
    every model has, with its values, deltas (value - the first model's; the first's is 0) and `better`
    ("higher", "lower" or None) and per model whether it is better, worse or the same as the first.
    Metrics only some models report are listed in `skipped`. Models of different tasks -> UserError.
    """
    if len(results) < 2:
        raise UserError("a comparison takes at least two models")
    task = same_task({label: res.get("task") for label, res in results})
    names = [label for label, _ in results]
    keys: list[str] = []
    for _, res in results:  # the first model's order, then keys only later models have
        keys += [k for k in res if k != "task" and k not in keys]
    counts, metrics, skipped = [], [], {}
    for key in keys:
        values = [res.get(key) for _, res in results]
        if key in COUNT_KEYS or not any(_is_number(v) for v in values) or all(_is_int(v) for v in values):
            counts.append({"metric": key, "kind": "count", "values": values})
        elif all(_is_number(v) for v in values):
            base = float(values[0])
            deltas = [float(v) - base for v in values]
            direction = better(key)
            metrics.append({"metric": key, "kind": "metric", "better": direction, "values": values,
                            "deltas": deltas, "verdicts": [_verdict(d, direction) for d in deltas]})
        else:
            skipped[key] = [label for label, v in zip(names, values) if _is_number(v)]
    if not metrics:
        raise UserError(f"the models share no numeric metric to compare ({', '.join(names)})")
    return {"task": task, "input": input_file, "models": names, "baseline": names[0], "rows": counts + metrics,
            "skipped": skipped}


def evaluate(model_dirs: list[str], input_file: str, progress: Callable[[str], None] = lambda line: None,
             task: str | None = None) -> dict:
    """`raylm eval A B ... --input FILE`: each model scored on the file, then `compare`d. Directories that are
    missing or of different tasks are refused before any model loads (unless `task` scores them all as one task);
    `progress` gets a line per model."""
    from raylm.serving.dispatch import evaluate_file  # the task modules import torch
    from raylm.tasks.registry import task_of_export

    missing = [d for d in model_dirs if not os.path.isdir(d)]
    if missing:
        raise UserError([f"'{d}' is not a directory" for d in missing], hint="pass exported model directories")
    names = labels(model_dirs)
    tasks: dict[str, str | None] = {}
    for name, model_dir in zip(names, model_dirs):
        if task:
            tasks[name] = task
            continue
        try:
            tasks[name] = task_of_export(model_dir)
        except UserError:  # not a full export (e.g. an adapter directory): the dispatcher's eval says what it is
            tasks[name] = None
    same_task(tasks)
    results = []
    for i, (name, model_dir) in enumerate(zip(names, model_dirs)):
        progress(f"eval {name} ({i + 1}/{len(model_dirs)}): {model_dir}")
        res = evaluate_file(model_dir, input_file, task)
        results.append((name, {"task": res.get("task") or tasks[name], **res}))
    return compare(results, input_file)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _fmt_delta(row: dict, i: int, pad: bool) -> str:
    """+0.1234 better / -0.1234 worse; `pad`: the word padded to one width, so that the numbers line up."""
    if row["kind"] != "metric":
        return ""
    verdict = row["verdicts"][i] if row["verdicts"][i] in ("better", "worse") else ""
    if pad:
        return f"{row['deltas'][i]:+.4f} {verdict:<6}"
    return f"{row['deltas'][i]:+.4f} {verdict}".rstrip()


def _grid(table: dict, arrows: dict[str | None, str], pad: bool) -> list[list[str]]:
    """Header + one line per row: metric, better, the first model, then each other model and its delta."""
    first, *others = table["models"]
    head = ["metric", "better", first]
    for name in others:
        head += [name, f"delta {name}"]
    lines = [head]
    for row in table["rows"]:
        values = row["values"]
        line = [row["metric"], arrows[row.get("better")] if row["kind"] == "metric" else "", _fmt(values[0])]
        for i in range(1, len(values)):
            line += [_fmt(values[i]), _fmt_delta(row, i, pad)]
        lines.append(line)
    return lines


def _header(table: dict) -> str:
    bits = [f"task: {table['task'] or 'unknown'}"]
    if table.get("input"):
        bits.append(f"input: {table['input']}")
    bits.append(f"baseline: {table['baseline']}")
    return ", ".join(bits)


def _skipped_note(table: dict) -> list[str]:
    return [f"not compared (not every model reports it): {k} ({', '.join(v) or 'none'})"
            for k, v in table["skipped"].items()]


def to_text(table: dict) -> str:
    """The console table: columns aligned, the models' columns right-aligned, ASCII only."""
    grid = _grid(table, {"higher": "higher", "lower": "lower", None: ""}, pad=True)
    widths = [max(len(line[c]) for line in grid) for c in range(len(grid[0]))]
    out = [_header(table)]
    for line in grid:
        out.append("  ".join(cell.ljust(w) if c < 2 else cell.rjust(w)
                             for c, (cell, w) in enumerate(zip(line, widths))).rstrip())
    return "\n".join(out + _skipped_note(table))


def to_markdown(table: dict) -> str:
    """A GitHub Markdown table (the metric's direction as an arrow), with the task, file and baseline above it."""
    grid = _grid(table, ARROWS, pad=False)
    esc = [[cell.replace("|", "\\|") for cell in line] for line in grid]
    out = [f"# eval compare\n\n{_header(table)}\n", "| " + " | ".join(esc[0]) + " |",
           "|" + "|".join([" --- ", " --- "] + [" ---: "] * (len(esc[0]) - 2)) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in esc[1:]]
    notes = _skipped_note(table)
    return "\n".join(out) + ("\n\n" + "\n".join(f"- {n}" for n in notes) if notes else "") + "\n"


def write(table: dict, out_prefix: str) -> tuple[str, str]:
    """OUT_PREFIX.json and OUT_PREFIX.md (a `.json`/`.md` suffix on the prefix is dropped); their paths."""
    root, ext = os.path.splitext(out_prefix)
    prefix = root if ext in (".json", ".md") else out_prefix
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    json_path, md_path = f"{prefix}.json", f"{prefix}.md"
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(table, f, indent=2)
        f.write("\n")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(to_markdown(table))
    return json_path, md_path
