"""Sequence-to-sequence pairs (translation, summarization): line-aligned parallel files
(train.de + train.en) and JSONL `{source|document, target|summary}`, `.gz` too.

Rows are `{source_text, target_text, source, row_id, reject}` (`source` is the file, as in every
corpus row). Parallel files whose line counts differ are refused as a whole before any row:
misaligned from some line on, every later pair would be wrong, and cutting to the shorter file
would hide it (`line_count_mismatch` for every line, or `file:line` under on_error=fail). An empty
side is a reject (`empty_source`, `empty_target`) at its line; a JSONL record without its fields is
`missing_field`, a line that is not JSON `malformed_json`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from raylm.datasets._task_io import base_row, check_on_error, count_lines, jsonl_rows, numbered_lines, reject
from raylm.datasets.sources import BadRowError
from raylm.errors import UserError

__all__ = ["SOURCE_FIELDS", "TARGET_FIELDS", "read_parallel", "read_seq2seq", "read_seq2seq_jsonl"]

SOURCE_FIELDS = ("source", "document")
TARGET_FIELDS = ("target", "summary")


def read_parallel(source_path: str, target_path: str, on_error: str = "fail") -> Iterator[dict]:
    """Pairs of line N of `source_path` and line N of `target_path`; row_id is `source_path:N`.

    Files of different line counts: under on_error="fail" a BadRowError at the first line one file
    lacks; under "skip" every line of the source file is a `line_count_mismatch` reject (the ledger
    still accounts for each row read, and no pair of the misaligned files is trained on).
    """
    check_on_error(on_error)
    n_src, n_tgt = count_lines(source_path), count_lines(target_path)
    if n_src != n_tgt:
        what = (f"parallel files differ in length: {source_path} has {n_src} lines, {target_path} has {n_tgt} "
                "(line-aligned files needed; none of the pair is used)")
        if on_error == "fail":
            raise BadRowError(f"{source_path}:{min(n_src, n_tgt) + 1}: {what}")
        for no, src in numbered_lines(source_path):
            yield _pair_reject(base_row(source_path, no) | {"source_text": src}, "line_count_mismatch", what, on_error)
        return
    for (no, src), (_, tgt) in zip(numbered_lines(source_path), numbered_lines(target_path)):
        yield _pair(base_row(source_path, no), src, tgt, on_error,
                    ("empty source line", f"empty target line ({target_path}:{no})"))


def read_seq2seq_jsonl(path: str, source_field: str | None = None, target_field: str | None = None,
                       on_error: str = "fail") -> Iterator[dict]:
    """Pairs from JSONL objects; unset fields: the first of SOURCE_FIELDS / TARGET_FIELDS present."""
    check_on_error(on_error)
    for _, row, line in jsonl_rows(path):
        try:
            obj = json.loads(line)
        except ValueError:
            yield _pair_reject(row, "malformed_json", "malformed JSON", on_error)
            continue
        src_key = source_field or _first_key(obj, SOURCE_FIELDS)
        tgt_key = target_field or _first_key(obj, TARGET_FIELDS)
        src, tgt = (obj.get(src_key), obj.get(tgt_key)) if isinstance(obj, dict) else (None, None)
        if not isinstance(src, str) or not isinstance(tgt, str):
            names = [(source_field and [source_field]) or SOURCE_FIELDS, (target_field and [target_field]) or TARGET_FIELDS]
            missing = [" or ".join(map(repr, n)) for n, v in zip(names, (src, tgt)) if not isinstance(v, str)]
            yield _pair_reject(row, "missing_field", f"no text field {' nor '.join(missing)} (a string)", on_error)
            continue
        yield _pair(row, src, tgt, on_error, (f"empty source '{src_key}'", f"empty target '{tgt_key}'"))


def read_seq2seq(source_path: str, target_path: str | None = None, on_error: str = "fail", **fields) -> Iterator[dict]:
    """`read_parallel` given two files, `read_seq2seq_jsonl` given one."""
    if target_path is not None:
        return read_parallel(source_path, target_path, on_error)
    if not re.sub(r"\.(gz|zst|zstd)$", "", source_path).endswith((".jsonl", ".json", ".ndjson")):
        raise UserError(f"{source_path}: one file must be JSONL with source/target fields; "
                        "plain text needs its parallel file too")
    return read_seq2seq_jsonl(source_path, on_error=on_error, **fields)


def _first_key(obj: object, names: tuple[str, ...]) -> str:
    return next((k for k in names if isinstance(obj, dict) and k in obj), names[0])


def _pair(row: dict, src: str, tgt: str, on_error: str, details: tuple[str, str]) -> dict:
    if not src.strip():
        return _pair_reject(row, "empty_source", details[0], on_error)
    if not tgt.strip():
        return _pair_reject(row | {"source_text": src}, "empty_target", details[1], on_error)
    return row | {"source_text": src, "target_text": tgt}


def _pair_reject(row: dict, reason: str, detail: str, on_error: str) -> dict:
    # The ledger shows the source text of a rejected pair when there is one.
    return reject({"source_text": "", "target_text": ""} | row, reason, detail, on_error)
