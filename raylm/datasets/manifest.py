"""The manifest of a prepared directory: what `prepare` wrote (shards, counts, tokenizer) and its
ledger (every row read is kept or rejected under a reason), summed from the units' markers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from raylm.datasets import tokenizers as toks
from raylm.datasets.config import DataConfig
from raylm.errors import UserError

# 3: train/validation split by document text (was: by row id)
# 4: classification ids unpadded, each example at its true length (was: padded as tokenizer.json said)
SCHEMA_VERSION = 4
SPLITS = ("train", "validation")
COUNTS = ("rows", "docs", "chars", "tokens_in", "tokens_out", "dropped")


def load_manifest(prepared_dir: str) -> dict:
    path = Path(prepared_dir, "manifest.json")
    if not path.is_file():
        raise UserError(f"no prepared data at '{prepared_dir}' (manifest.json missing)", hint="run `raylm prepare CONFIG` first")
    return json.loads(path.read_text())



def up_to_date(out: Path, inputs_fp: str, force: bool = False) -> dict | None:
    """The manifest of `out` when it was prepared from exactly these inputs (same fingerprint), else None."""
    mpath = out / "manifest.json"
    if force or not mpath.is_file():
        return None
    manifest = json.loads(mpath.read_text())
    return manifest if manifest.get("inputs_fingerprint") == inputs_fp else None


def _sum_counts(counts: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in counts:
        for reason, n in c.items():
            total[reason] = total.get(reason, 0) + n
    return dict(sorted(total.items()))


def _input_ledgers(markers: list[dict]) -> dict[str, dict]:
    """rows in = kept + rejected, for each input role (train files, validation files)."""
    out: dict[str, dict] = {}
    for role in sorted({m.get("role", "train") for m in markers}):
        ms = [m for m in markers if m.get("role", "train") == role]
        rejected = _sum_counts(m["rejected"] for m in ms)
        out[role] = {"rows_in": sum(m["rows_in"] for m in ms), "rows_rejected": sum(rejected.values()),
                     "rejected": rejected}
        out[role]["rows_kept"] = out[role]["rows_in"] - out[role]["rows_rejected"]
    return out


def _empty_validation(cfg: DataConfig, ledger: dict | None, notes: list[str]) -> UserError:
    """data.validation_source was asked for and gave no document: say why, and what to set."""
    ledger = ledger or {"rows_in": 0, "rejected": {}}
    problems = [f"data.validation_source='{cfg.validation_source}': the validation split is empty "
                f"({ledger['rows_in']} rows read, none kept; rejected: {ledger['rejected'] or 'none'})", *notes]
    if any(r in ledger["rejected"] for r in ("missing_column", "missing_text", "bad_label")):
        hint = ("name the validation files' own columns: data.validation_text_field=... "
                "(and data.validation_label_field=...)")
    else:
        hint = f"check the files, or see {cfg.prepared_dir}/rejects/ (`raylm rejects CONFIG`)"
    return UserError(problems, hint=hint)


def build_manifest(cfg: DataConfig, task: Any, tok_dir: str, tok_fp: str, inputs_fp: str, markers: list[dict]) -> dict:
    tok = toks.tokenizer_facts(tok_dir)  # without transformers where it can
    splits: dict[str, Any] = {}
    for split in SPLITS:
        parts = [m["splits"][split] for m in markers]
        splits[split] = {"files": [f for p in parts for f in p["files"]],
                         **{k: sum(p[k] for p in parts) for k in COUNTS}}
    inputs = _input_ledgers(markers)
    rejected = _sum_counts(ledger["rejected"] for ledger in inputs.values())
    rows_in = sum(m["rows_in"] for m in markers)
    kept = sum(splits[s]["docs"] for s in SPLITS)
    notes = [n for m in markers for n in m.get("notes", [])]
    if kept == 0:
        raise UserError([f"the corpus is empty: no document in '{cfg.source}' survived cleaning "
                         f"(rejected: {rejected or 'none'})", *notes], hint=f"see {cfg.prepared_dir}/rejects/")
    if cfg.validation_source and splits["validation"]["docs"] == 0:
        raise _empty_validation(cfg, inputs.get("validation"), [n for m in markers if m.get("role") == "validation"
                                                               for n in m.get("notes", [])])
    if splits["train"]["rows"] == 0:
        raise UserError(f"no training rows: the corpus is smaller than one block of {cfg.block_size} tokens",
                        hint="add text or lower data.block_size")
    classify = task.labelled  # a units.UnitTask
    return {
        "schema_version": SCHEMA_VERSION, "task": task.name, "source": cfg.source,
        "tokenizer_dir": os.path.abspath(tok_dir), "tokenizer_fingerprint": tok_fp,
        "inputs_fingerprint": inputs_fp, "vocab_size": tok["vocab_size"], "eos_id": tok["eos_id"],
        "pad_id": tok["pad_id"], "mask_id": tok["mask_id"],
        "cls_id": tok["cls_id"], "sep_id": tok["sep_id"],  # the trainer adds them at collate
        "block_size": cfg.block_size, "max_length": cfg.max_length, "shard_rows": cfg.shard_rows,
        "labels": cfg.labels if classify else None,
        "num_labels": (len(cfg.labels) if cfg.labels else max(m["max_label"] for m in markers) + 1) if classify else None,
        # The ledger: every row read is either kept or rejected under a reason.
        "rows_in": rows_in, "rows_kept": kept, "rows_rejected": sum(rejected.values()),
        "ledger_balanced": rows_in == kept + sum(rejected.values()), "rejected": dict(sorted(rejected.items())),
        # The same ledger per input (data.source as 'train', data.validation_source as 'validation')
        # and what is wrong with whole files (a missing column, an unreadable file).
        "inputs": inputs, "notes": notes,
        "units": len(markers), "splits": splits,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
