"""Corpus sources: files -> work units -> a stream of rows {text, label, source, row_id, reject}.

A *unit* is a whole file, or a byte range of a large uncompressed line-oriented file (JSONL,
text split by line or paragraph), so that one big file is read by many workers and none holds it.
Rows are streamed (bounded memory: one line longer than `data.max_line_bytes` is skipped
without being held). A row that cannot be used is not dropped here: it carries its `reject`
reason so the caller can count it and write it to the rejects ledger; under
`data.on_error=fail` the first bad row raises `BadRowError("file:line: what is wrong")`.
`row_id` is `file:line` (text, JSONL, CSV/TSV) or `file:#record` (Parquet), stable across runs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from raylm.datasets import _fs
from raylm.datasets.config import DataConfig
from raylm.errors import UserError

EXTENSIONS = {
    ".txt": "text", ".text": "text", ".md": "text",
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
    ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv",
}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
ROW_SCHEMA = pa.schema([("text", pa.string()), ("label", pa.string()), ("source", pa.string()),
                        ("row_id", pa.string()), ("reject", pa.string())])
COLUMNS = ROW_SCHEMA.names
# Reasons that are problems in the input (under on_error=fail they stop the run).
INPUT_ERRORS = {"malformed_json", "invalid_utf8", "missing_text", "text_not_string", "nul_byte", "empty",
                "too_long", "unreadable", "wrong_format", "malformed_csv", "missing_column", "bad_label"}
_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"PAR1": "parquet", b"\x89PNG": "png",
          b"PK\x03\x04": "zip", b"%PDF": "pdf", b"\x7fELF": "elf"}
_CHUNK = 1 << 20
_SURROGATE = re.compile("[\udc80-\udcff]")


class BadRowError(Exception):
    """A bad row under data.on_error=fail; the message is `file:line: what is wrong`."""


@dataclass(frozen=True)
class Unit:
    """A piece of the corpus one worker reads: a file, the lines beginning in bytes [start, end),
    or (Parquet) row groups [start, end) whose first record is number `first_line`."""

    uri: str
    fmt: str
    size: int
    start: int = 0
    end: int = -1  # -1: to the end of the file
    first_line: int = 1  # line number of the first line that begins at or after `start`
    nbytes: int = -1  # bytes the unit covers, when start/end are not bytes (Parquet row groups)

    @property
    def key(self) -> str:
        return hashlib.sha1(f"{self.uri}|{self.size}|{self.start}|{self.end}".encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return asdict(self)


def compression(path: str) -> str | None:
    return next((c for ext, c in COMPRESSIONS.items() if path.endswith(ext)), None)


def file_format(path: str, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    base = path
    for ext in COMPRESSIONS:
        base = base[: -len(ext)] if base.endswith(ext) else base
    ext = os.path.splitext(base)[1].lower()
    if ext not in EXTENSIONS:
        raise UserError(f"{path}: unknown file type '{ext}'", hint="set data.format (text, jsonl, parquet, csv, tsv)")
    return EXTENSIONS[ext]


def splittable(unit_fmt: str, path: str, cfg: DataConfig) -> bool:
    """Byte ranges need random access and line-aligned records (not CSV: quotes span lines)."""
    return compression(path) is None and (unit_fmt == "jsonl" or (unit_fmt == "text" and cfg.text_split != "file"))


def plan_ranges(size: int, unit_bytes: int) -> list[tuple[int, int]]:
    n = max(1, -(-size // unit_bytes))
    step = -(-size // n)
    return [(i * step, min(size, (i + 1) * step)) for i in range(n)]


def count_newlines(uri: str, start: int, end: int) -> int:
    """Newlines in bytes [start, end): with a prefix sum, the line number of each range's first line."""
    n, f = 0, _fs.open_input(uri, start)
    with f:
        left = end - start
        while left > 0:
            chunk = f.read(min(_CHUNK * 8, left))
            if not chunk:
                break
            n += chunk.count(b"\n")
            left -= len(chunk)
    return n


def range_segments(ranges: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The byte segments whose newline counts give each range's first line: [s_k - 1, s_k+1 - 1)."""
    starts = [max(0, s - 1) for s, _ in ranges]
    return [(a, b) for a, b in zip(starts, starts[1:] + [size])]


def units_from_counts(uri: str, fmt: str, size: int, ranges: list[tuple[int, int]], counts: list[int]) -> list[Unit]:
    units, before = [], 0
    for (s, e), c in zip(ranges, counts):
        # A range starting at s > 0 first skips the rest of the line that holds byte s-1.
        units.append(Unit(uri, fmt, size, s, e, 1 if s == 0 else before + 2))
        before += c
    return units


# ---------------------------------------------------------------- reading


def _row(text: Any, unit: Unit, where: str | int, label: Any = None, reject: str = "") -> dict:
    if not reject:
        if text is None:
            reject = "missing_text"
        elif not isinstance(text, str):
            reject = "text_not_string"
        elif "\x00" in text:
            reject = "nul_byte"
        elif not text.strip():
            reject = "empty"
    return {"text": text if isinstance(text, str) and not reject else "", "label": None if label is None else str(label),
            "source": unit.uri, "row_id": f"{unit.uri}:{where}", "reject": reject}


def _open_stream(unit: Unit):
    """A binary stream of the unit's bytes (decompressed), positioned one byte before its start."""
    raw = _fs.open_input(unit.uri, max(0, unit.start - 1))
    comp = compression(unit.uri)
    return pa.CompressedInputStream(raw, comp) if comp else raw


def _chunks(f, first: bytes = b"") -> Iterator[bytes]:
    if first:
        yield first
    while True:
        chunk = f.read(_CHUNK)
        if not chunk:
            return
        yield chunk


def iter_lines(chunks: Iterator[bytes], limit: int) -> Iterator[tuple[int, bytes | None]]:
    """(byte offset of the line, line without its newline) in order; None for a line over `limit`
    bytes, whose bytes are skipped as they stream by (a 50 MB line is never held)."""
    pos, cur, cur_len = 0, b"", 0
    over = False
    for chunk in chunks:
        parts = chunk.split(b"\n")
        for k, part in enumerate(parts):
            cur_len += len(part)
            if not over:
                if cur_len > limit:
                    over, cur = True, b""
                else:
                    cur = cur + part if cur else part
            if k == len(parts) - 1:
                break
            yield pos, (None if over else cur)
            pos += cur_len + 1
            cur, cur_len, over = b"", 0, False
    if cur_len or over:
        yield pos, (None if over else cur)


def _sniff(first: bytes, unit: Unit) -> str | None:
    """What the first bytes say the file is, when that is not what its name says."""
    kind = next((k for magic, k in _MAGIC.items() if first.startswith(magic)), None)
    if kind and kind != unit.fmt:
        return kind
    return None


def read_unit(unit: Unit, cfg: DataConfig, notes: list[str] | None = None) -> Iterator[dict]:
    """Stream the rows of one unit. Every record of the file is one row, whatever is wrong with
    it (a missing column rejects each record). A file that cannot be read at all gives one row
    with the reason, at line 1: its records cannot be counted. File-level problems are appended
    to `notes` as readable lines (the manifest shows them)."""
    notes = [] if notes is None else notes
    if unit.fmt == "parquet":
        yield from _read_parquet(unit, cfg, notes)
        return
    line = unit.first_line
    try:
        f = _open_stream(unit)
        with f:
            first = f.read(_CHUNK)
            if unit.start == 0 and _sniff(first, unit):
                notes.append(_uncounted(unit, f"its content is {_sniff(first, unit)}, not {unit.fmt}", 1))
                yield _row("", unit, 1, reject="wrong_format")
                return
            reader = _read_delimited if unit.fmt in ("csv", "tsv") else _read_lines
            for row in reader(unit, first, f, cfg, notes):
                line = row["row_id"].rsplit(":", 1)[1]
                yield row
    except (FileNotFoundError, PermissionError) as err:
        notes.append(_uncounted(unit, f"cannot read it ({type(err).__name__})", line))
        yield _row("", unit, line, reject="unreadable")
    except Exception as err:  # noqa: BLE001 - corrupt or truncated compressed data, I/O errors
        if isinstance(err, BadRowError):
            raise
        reason = "wrong_format" if _is_format_error(err) else "unreadable"
        notes.append(_uncounted(unit, f"{describe(reason, cfg)} ({type(err).__name__}: {err})", line))
        yield _row("", unit, line, reject=reason)


def _uncounted(unit: Unit, what: str, line: int | str) -> str:
    """The note for records that cannot be counted: one ledger row stands for all of them."""
    where = "the file's records" if str(line) in ("1", "#0") else f"its records from line {line} on"
    return f"{unit.uri}: {what}; {where} cannot be counted (one row in the ledger stands for them)"


def _is_format_error(err: BaseException) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return any(w in text for w in ("gzip", "zlib", "inflate", "zstd", "frame", "compress", "crc"))


def _owned_lines(unit: Unit, first: bytes, f, limit: int) -> Iterator[tuple[int, int, bytes | None]]:
    """(line number, offset, bytes) of the lines this unit reads; offsets are absolute."""
    lines = iter_lines(_chunks(f, first), limit)
    base = max(0, unit.start - 1)
    if unit.start > 0:
        next(lines, None)  # the tail of the line holding byte start-1 belongs to the previous unit
    for n, (off, line) in enumerate(lines):
        yield unit.first_line + n, base + off, line


def _decode(raw: bytes | None) -> tuple[str, str]:
    if raw is None:
        return "", "too_long"
    if b"\x00" in raw:
        return "", "nul_byte"
    try:
        return raw.decode("utf-8").removesuffix("\r"), ""
    except UnicodeDecodeError:
        return "", "invalid_utf8"


def _read_lines(unit: Unit, first: bytes, f, cfg: DataConfig, notes: list[str]) -> Iterator[dict]:
    limit, end = cfg.max_line_bytes, unit.end if unit.end >= 0 else float("inf")
    lines = _owned_lines(unit, first, f, limit)
    if unit.fmt == "jsonl":
        for no, off, raw in lines:
            if off >= end:
                return
            if raw is not None and not raw.strip():
                continue
            row = _json_row(unit, no, raw, cfg, notes)
            yield row
    elif cfg.text_split == "line":
        for no, off, raw in lines:
            if off >= end:
                return
            if raw is None or raw.strip():
                text, reject = _decode(raw)
                yield _row(text, unit, no, reject=reject)
    else:
        yield from _paragraphs(unit, lines, end, limit, whole_file=cfg.text_split == "file")


def _json_row(unit: Unit, no: int, raw: bytes | None, cfg: DataConfig, notes: list[str]) -> dict:
    text, reject = _decode(raw)
    if reject:
        return _row("", unit, no, reject=reject)
    try:
        obj = json.loads(text)
    except ValueError:
        return _row("", unit, no, reject="malformed_json")
    label = _get(obj, cfg.label_field) if cfg.label_field else None
    value = _get(obj, cfg.text_field)
    if value is None and not any(n.startswith(f"{unit.uri}:") and "no field" in n for n in notes):
        # Once per unit: which keys the records do have is what a user needs to fix the config.
        keys = ", ".join(obj) if isinstance(obj, dict) else type(obj).__name__
        notes.append(f"{unit.uri}:{no}: no field '{cfg.text_field}' (the record has: {keys})")
    return _row(value, unit, no, label=label)


def _get(obj: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _paragraphs(unit: Unit, lines: Iterator, end: float, limit: int, whole_file: bool) -> Iterator[dict]:
    """Blank-line-separated documents (or the whole file as one), owned by the line they start on."""
    buf: list[str] = []
    start, size, reject = 0, 0, ""
    skipping = unit.start > 0 and not _after_blank(unit)  # inside a paragraph the previous unit owns
    for no, off, raw in lines:
        blank = raw is not None and not raw.strip() and not whole_file
        if skipping:
            skipping = not blank
            continue
        if blank:
            if start:
                yield _row("\n".join(buf), unit, start, reject=reject)
            buf, start, size, reject = [], 0, 0, ""
            continue
        if not start:
            if off >= end:
                return
            start = no
        text, bad = _decode(raw)
        size += len(raw) if raw is not None else limit + 1
        reject = reject or bad or ("too_long" if size > limit else "")
        if not reject:
            buf.append(text)
        else:
            buf = []
    if start:
        yield _row("\n".join(buf), unit, start, reject=reject)
    elif whole_file and unit.start == 0:
        yield _row("", unit, 1)  # an empty file is an empty document


def _after_blank(unit: Unit) -> bool:
    """Whether the line holding byte start-1 is blank: then the line after it starts a paragraph
    this unit owns. Looks 64 KiB either way; a longer line is not blank."""
    lo = max(0, unit.start - 1 - 65536)
    with _fs.open_input(unit.uri, lo) as f:
        before = f.read(unit.start - 1 - lo)
        after = f.read(65536)
    nl, cut = after.find(b"\n"), before.rfind(b"\n")
    if nl < 0 or (cut < 0 and lo > 0):
        return False
    return not (before[cut + 1:] + after[:nl]).strip()


def _read_delimited(unit: Unit, first: bytes, f, cfg: DataConfig, notes: list[str]) -> Iterator[dict]:
    csv.field_size_limit(cfg.max_line_bytes)
    text = io.TextIOWrapper(io.BufferedReader(_Joined(first, f)), encoding="utf-8", errors="surrogateescape", newline="")
    reader = csv.reader(text, delimiter="\t" if unit.fmt == "tsv" else ",")
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        yield _row("", unit, 1, reject="empty")
        return
    _note_missing_columns(unit, header, cfg, notes)
    # Without the text column every record is still read, and rejected one by one: the ledger
    # counts every row of the file.
    ti = header.index(cfg.text_field) if cfg.text_field in header else None
    li = header.index(cfg.label_field) if cfg.label_field in header else None
    line = reader.line_num + 1
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield _row("", unit, line, reject="too_long" if "field larger" in str(err) else "malformed_csv")
            return  # the reader cannot find the next record boundary after this
        if rec:
            yield _delimited_row(unit, line, rec, ti, li)
        line = reader.line_num + 1


def _note_missing_columns(unit: Unit, columns: list[str], cfg: DataConfig, notes: list[str]) -> None:
    missing = [c for c in (cfg.text_field, cfg.label_field) if c and c not in columns]
    if missing:
        names = " and ".join(f"'{c}'" for c in missing)
        notes.append(f"{unit.uri}: no column {names} (its columns: {', '.join(columns) or 'none'})")


def _delimited_row(unit: Unit, line: int, rec: list[str], ti: int | None, li: int | None) -> dict:
    if ti is None:
        return _row("", unit, line, reject="missing_column")
    value = rec[ti] if ti < len(rec) else None
    label = rec[li] if li is not None and li < len(rec) else None
    if value is not None and (_SURROGATE.search(value) or (label and _SURROGATE.search(label))):
        return _row("", unit, line, reject="invalid_utf8")
    return _row(value, unit, line, label=label)


class _Joined(io.RawIOBase):
    """A readable stream of `first` followed by the rest of `f` (the sniffed bytes are not lost)."""

    def __init__(self, first: bytes, f) -> None:
        self._first, self._f = first, f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._first[: len(b)] if self._first else self._f.read(len(b))
        self._first = self._first[len(data):] if self._first else b""
        b[: len(data)] = data
        return len(data)


def _read_parquet(unit: Unit, cfg: DataConfig, notes: list[str]) -> Iterator[dict]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(_fs.open_input(unit.uri))
    except (OSError, pa.ArrowException) as err:
        reason = "unreadable" if isinstance(err, PermissionError) else "wrong_format"
        notes.append(_uncounted(unit, describe(reason, cfg), "#0"))
        yield _row("", unit, "#0", reject=reason)
        return
    if unit.start == 0:  # once per file, not once per run of row groups
        _note_missing_columns(unit, pf.schema_arrow.names, cfg, notes)
    index = unit.first_line if unit.end >= 0 else 0
    groups = range(unit.start, unit.end) if unit.end >= 0 else range(pf.metadata.num_row_groups)
    if cfg.text_field not in pf.schema_arrow.names:
        # The footer counts the records: each one is a missing_column row of the ledger.
        for _ in range(sum(pf.metadata.row_group(g).num_rows for g in groups)):
            yield _row("", unit, f"#{index}", reject="missing_column")
            index += 1
        return
    cols = [cfg.text_field] + ([cfg.label_field] if cfg.label_field in pf.schema_arrow.names else [])
    # Record index across the whole file: row ids do not depend on batch, row group or unit.
    for batch in pf.iter_batches(batch_size=4096, columns=cols, row_groups=list(groups)):
        texts = batch.column(0).to_pylist()
        labels = batch.column(1).to_pylist() if len(cols) > 1 else [None] * len(texts)
        for t, lab in zip(texts, labels):
            yield _row(t, unit, f"#{index}", label=lab)
            index += 1


# ---------------------------------------------------------------- planning


def plan_units(cfg: DataConfig, source: str, count: Any = None) -> list[Unit]:
    """Every unit of the corpus. `count(list of (uri, start, end)) -> list[int]` counts newlines
    (in parallel on Ray when given); without it, counting runs here."""
    files = _fs.list_files(source)
    units, todo = [], []
    for uri, size in files:
        fmt = file_format(uri, cfg.format)
        if size > cfg.unit_bytes and fmt == "parquet" and compression(uri) is None:
            units += _parquet_units(uri, size, cfg.unit_bytes)
        elif size > cfg.unit_bytes and splittable(fmt, uri, cfg):
            ranges = plan_ranges(size, cfg.unit_bytes)
            todo.append((uri, fmt, size, ranges, range_segments(ranges, size)))
        else:
            units.append(Unit(uri, fmt, size))
    segs = [(uri, a, b) for uri, _, _, _, segments in todo for a, b in segments]
    counts = (count or (lambda s: [count_newlines(*x) for x in s]))(segs) if segs else []
    i = 0
    for uri, fmt, size, ranges, _ in todo:
        units += units_from_counts(uri, fmt, size, ranges, counts[i: i + len(ranges)])
        i += len(ranges)
    return sorted(units, key=lambda u: (u.uri, u.start))


def _parquet_units(uri: str, size: int, unit_bytes: int) -> list[Unit]:
    """Runs of row groups of about `unit_bytes` each (from the footer only)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(_fs.open_input(uri)).metadata
    except (OSError, pa.ArrowException):
        return [Unit(uri, "parquet", size)]  # the worker reports what is wrong with it
    units, lo, first, nbytes, record = [], 0, 0, 0, 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        nbytes += rg.total_byte_size
        record += rg.num_rows
        if nbytes >= unit_bytes or g == meta.num_row_groups - 1:
            units.append(Unit(uri, "parquet", size, lo, g + 1, first, nbytes))
            lo, first, nbytes = g + 1, record, 0
    return units or [Unit(uri, "parquet", size)]


def list_files(source: str) -> list[str]:
    """The files (paths or URIs) a source names: a file, directory, glob or object store URI."""
    return [uri for uri, _ in _fs.list_files(source)]


def check_row(row: dict, cfg: DataConfig) -> None:
    """Under on_error=fail, the first bad input row stops the run with `file:line: what is wrong`."""
    if row["reject"] and cfg.on_error == "fail" and row["reject"] in INPUT_ERRORS:
        raise BadRowError(f"{row['row_id']}: {describe(row['reject'], cfg)}")


def describe(reason: str, cfg: DataConfig) -> str:
    return {
        "malformed_json": "malformed JSON", "invalid_utf8": "invalid UTF-8",
        "missing_text": f"no text field '{cfg.text_field}'", "text_not_string": f"field '{cfg.text_field}' is not a string",
        "nul_byte": "NUL byte in the text", "empty": "empty document",
        "too_long": f"line longer than data.max_line_bytes ({cfg.max_line_bytes} bytes)",
        "unreadable": "cannot read the file", "wrong_format": "the file's content does not match its extension",
        "malformed_csv": "malformed CSV/TSV record", "missing_column": f"no column '{cfg.text_field}'",
        "bad_label": f"label not in data.labels {cfg.labels}",
    }.get(reason, reason.replace("_", " "))


def read_corpus(cfg: DataConfig, source: str | None = None, batch_rows: int = 4096):
    """A Ray Dataset of rows {text, label, source, row_id, reject}, streamed unit by unit."""
    import ray

    units = plan_units(cfg, source or cfg.source)

    def read(batch: dict) -> Iterator[pa.Table]:
        for d in batch.column("unit").to_pylist():
            rows = []
            for row in read_unit(Unit(**d), cfg):
                check_row(row, cfg)
                rows.append(row)
                if len(rows) >= batch_rows:
                    yield pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
                    rows = []
            if rows:
                yield pa.Table.from_pylist(rows, schema=ROW_SCHEMA)

    items = [{"unit": u.to_dict()} for u in units]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        read, batch_size=1, batch_format="pyarrow", runtime_env={"env_vars": _fs.worker_env()} if _fs.worker_env() else None)
