"""Human-readable summaries of a prepared dataset: the manifest, and the rejects ledger."""

from __future__ import annotations

from raylm.datasets.clean import read_rejects


def print_manifest(m: dict, prepared_dir: str) -> None:
    balanced = "balanced" if m.get("ledger_balanced", True) else "NOT BALANCED"
    print(f"[raylm] prepared {prepared_dir} in {m.get('seconds', 0):.1f}s: rows in {m['rows_in']} = "
          f"kept {m['rows_kept']} + rejected {m['rows_rejected']} ({balanced}) {m['rejected'] or ''}")
    inputs = m.get("inputs") or {}
    if len(inputs) > 1:  # data.validation_source: each input's own ledger
        for role, ledger in inputs.items():
            name = "data.source" if role == "train" else "data.validation_source"
            print(f"[raylm]   {name}: rows in {ledger['rows_in']} = kept {ledger['rows_kept']} + "
                  f"rejected {ledger['rows_rejected']} {ledger['rejected'] or ''}")
    for note in m.get("notes") or []:
        print(f"[raylm]   warning: {note}")
    for split, s in m["splits"].items():
        print(f"[raylm]   {split}: {s['rows']} rows, {s['tokens_out']:,} tokens in {len(s['files'])} shards "
              f"({s['docs']} documents{_loss_note(m, s)}){_nsp_note(m, split)}{_sft_note(m, split)}")
    if m["rows_rejected"]:
        print(f"[raylm]   rejected rows: {prepared_dir}/rejects/*.parquet (row_id, source, reason, text)")


def _loss_note(m: dict, s: dict) -> str:
    """What packing or truncation cut, in the words of the task: only when something was cut."""
    if not s["dropped"]:
        return ""
    if m.get("nsp"):
        return f", {s['dropped']:,} tokens of documents that start no pair (one sentence, or alone in their window)"
    if m.get("num_labels"):  # labelled rows (a classifier's): cut, not packed
        return f", {s['dropped']:,} tokens truncated at data.max_length={m.get('max_length')}"
    return f", {s['dropped']:,} tail tokens dropped (the last partial block of {m.get('block_size')})"


def _sft_note(m: dict, split: str) -> str:
    """Instruction tuning (sft_summary): the trained-token share, truncated examples, the rows' fill (packing)."""
    s = (m.get("sft_summary") or {}).get(split)
    if not s:
        return ""
    cut = f", {s['truncated']} truncated" if "truncated" in s else ""  # counted since 2026-12-07
    return (f"; {s['examples']} examples{cut}, {100 * s['trained_share']:.1f}% of tokens trained, "
            f"rows {100 * s['row_efficiency']:.1f}% full (padding to max_length: "
            f"{100 * s['padded_to_max_length_efficiency']:.1f}%)")


def _nsp_note(m: dict, split: str) -> str:
    """Sentence pairs (data.nsp): how many are true next segments and how many random ones."""
    labels = (m.get("nsp_labels") or {}).get(split)
    return f"; pairs: {labels['is_next']} is-next + {labels['random']} random" if labels else ""


def format_rejects(rows: list[dict], width: int = 100) -> list[str]:
    """One line per rejected row: `row_id  reason  text…` (what `raylm rejects` would print)."""
    out = []
    for r in rows:
        text = " ".join(r["text"].split())
        out.append(f"{r['row_id']}  {r['reason']}  {text[:width]}{'…' if len(text) > width else ''}")
    return out


def print_rejects(prepared_dir: str, reason: str | None = None, limit: int = 20) -> None:
    for line in format_rejects(read_rejects(prepared_dir, reason, limit)):
        print(line)
