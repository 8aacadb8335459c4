"""Corpus sources -> a Ray Dataset of {text, label, source, row_id, reject}.

Files are parsed in Ray tasks (never on the driver). A row that cannot be used is not dropped
here: it carries its `reject` reason so the cleaning stage can count it and write it to the
rejects ledger. `row_id` is `file:line` (or `file:#record`), stable across runs.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from typing import Any

import pyarrow as pa

from raylm.datasets.config import DataConfig
from raylm.errors import UserError

EXTENSIONS = {
    ".txt": "text", ".text": "text", ".md": "text",
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
    ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv",
}
COMPRESSIONS = (".gz", ".zst", ".zstd")
COLUMNS = ["text", "label", "source", "row_id", "reject"]


def file_format(path: str, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    base = path
    for c in COMPRESSIONS:
        if base.endswith(c):
            base = base[: -len(c)]
    ext = os.path.splitext(base)[1].lower()
    if ext not in EXTENSIONS:
        raise UserError(f"{path}: unknown file type '{ext}'", hint="set data.format (text, jsonl, parquet, csv, tsv)")
    return EXTENSIONS[ext]


def list_files(source: str) -> list[str]:
    """Expand a file, directory or glob into a sorted list of files."""
    if "://" in source:
        from raylm.datasets._remote import list_remote_files

        return list_remote_files(source)
    if os.path.isdir(source):
        files = [
            os.path.join(d, f)
            for d, _, fs in os.walk(source)
            for f in fs
            if not f.startswith((".", "_"))
        ]
    else:
        files = glob.glob(source, recursive=True) if any(c in source for c in "*?[") else (
            [source] if os.path.isfile(source) else []
        )
    files = sorted(f for f in files if os.path.isfile(f))
    if not files:
        raise UserError(f"data.source: no files match '{source}'", hint="check the path or glob (e.g. 'corpus/**/*.jsonl')")
    return files


def _decompress(path: str, data: bytes) -> bytes:
    if path.endswith(".gz"):
        import gzip

        return gzip.decompress(data)
    if path.endswith((".zst", ".zstd")):
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def _row(text: Any, source: str, row_id: str, label: Any = None, reject: str = "") -> dict:
    if not reject and not isinstance(text, str):
        reject, text = ("missing_text" if text is None else "text_not_string"), ""
    return {"text": text if isinstance(text, str) else "", "label": label, "source": source,
            "row_id": row_id, "reject": reject}


def _get(obj: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _parse_text(path: str, text: str, split: str) -> list[dict]:
    if split == "file":
        return [_row(text, path, f"{path}:1")]
    rows, buf, start = [], [], 1
    for i, line in enumerate(text.splitlines(), 1):
        if split == "line":
            if line.strip():
                rows.append(_row(line, path, f"{path}:{i}"))
            continue
        if line.strip():
            if not buf:
                start = i
            buf.append(line)
        elif buf:
            rows.append(_row("\n".join(buf), path, f"{path}:{start}"))
            buf = []
    if buf:
        rows.append(_row("\n".join(buf), path, f"{path}:{start}"))
    return rows


def _parse_jsonl(path: str, text: str, field: str, label_field: str | None) -> list[dict]:
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        rid = f"{path}:{i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            rows.append(_row("", path, rid, reject="malformed_json"))
            continue
        label = _get(obj, label_field) if label_field else None
        rows.append(_row(_get(obj, field), path, rid, label=label))
    return rows


def _parse_delimited(path: str, text: str, delim: str, field: str, label_field: str | None) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delim)
    if reader.fieldnames is None or field not in reader.fieldnames:
        return [_row("", path, f"{path}:1", reject=f"missing_column_{field}")]
    rows = []
    for rec in reader:
        rid = f"{path}:{reader.line_num}"
        label = rec.get(label_field) if label_field else None
        rows.append(_row(rec.get(field), path, rid, label=label))
    return rows


def parse_file(path: str, data: bytes, cfg: DataConfig) -> list[dict]:
    """Parse one file's bytes into rows; problems become rows with a `reject` reason."""
    fmt = file_format(path, cfg.format)
    try:
        data = _decompress(path, data)
    except Exception:
        return [_row("", path, f"{path}:0", reject="bad_compression")]
    if b"\x00" in data[:1 << 20] and fmt != "parquet":
        data = data.replace(b"\x00", b"")  # NUL bytes: cleaned below; a binary file fails to decode
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        if text.count("\ufffd") > max(16, len(text) // 100):
            return [_row("", path, f"{path}:0", reject="not_text")]
    if fmt == "text":
        return _parse_text(path, text, cfg.text_split)
    if fmt == "jsonl":
        return _parse_jsonl(path, text, cfg.text_field, cfg.label_field)
    return _parse_delimited(path, text, "\t" if fmt == "tsv" else ",", cfg.text_field, cfg.label_field)


def _label_to_str(rows: list[dict]) -> list[dict]:
    for r in rows:
        r["label"] = None if r["label"] is None else str(r["label"])
    return rows


def read_corpus(cfg: DataConfig, source: str | None = None):
    """A Ray Dataset of rows {text, label, source, row_id, reject} over every corpus file."""
    import ray

    files = list_files(source or cfg.source)
    parquet = [f for f in files if file_format(f, cfg.format) == "parquet"]
    others = [f for f in files if f not in set(parquet)]
    parts = []
    if others:
        def parse_batch(batch: dict) -> pa.Table:
            rows = []
            for path, data in zip(batch["path"], batch["bytes"]):
                rows += parse_file(path, data, cfg)
            return pa.Table.from_pylist(_label_to_str(rows), schema=ROW_SCHEMA)

        raw = ray.data.read_binary_files(others, include_paths=True, override_num_blocks=len(others))
        parts.append(raw.map_batches(parse_batch, batch_size=1, batch_format="numpy"))
    if parquet:
        parts.append(_read_parquet(parquet, cfg))
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


ROW_SCHEMA = pa.schema([("text", pa.string()), ("label", pa.string()), ("source", pa.string()),
                        ("row_id", pa.string()), ("reject", pa.string())])


def _read_parquet(files: list[str], cfg: DataConfig):
    import ray

    field, label = cfg.text_field, cfg.label_field

    def to_rows(batch: pa.Table) -> pa.Table:
        paths = batch.column("path").to_pylist()
        texts = batch.column(field).to_pylist() if field in batch.column_names else [None] * len(paths)
        labels = batch.column(label).to_pylist() if label and label in batch.column_names else [None] * len(paths)
        rows = []
        for i, (p, t, lab) in enumerate(zip(paths, texts, labels)):
            rows.append(_row(t, p, f"{p}:#{i}", label=lab))
        return pa.Table.from_pylist(_label_to_str(rows), schema=ROW_SCHEMA)

    return ray.data.read_parquet(files, include_paths=True).map_batches(
        to_rows, batch_format="pyarrow", batch_size=None
    )
