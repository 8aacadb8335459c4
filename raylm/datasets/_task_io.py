"""Shared by the downstream-task readers (conll, squad, parallel_text): numbered text lines from a
local or object-store file (.gz/.zst decompressed) and the reject-or-raise rule of `sources`.

Task rows follow the corpus rows' convention: `source` (the file), `row_id` (`file:line`, or
`file:question id` for SQuAD JSON) and `reject` (a reason code, "" when the row is good). Under
`on_error="fail"` the first bad row raises `BadRowError("file:line: what is wrong")`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pyarrow as pa

from raylm.datasets import _fs
from raylm.datasets.sources import BadRowError, compression
from raylm.errors import UserError

ON_ERROR = ("skip", "fail")


def read_text(path: str) -> str:
    """The whole file as UTF-8 text (for formats that are one JSON document, as SQuAD's)."""
    with _open(path) as f:
        return f.read().decode("utf-8")


def numbered_lines(path: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline) of a UTF-8 text file."""
    with _open(path) as raw:
        text = io.TextIOWrapper(io.BufferedReader(_Raw(raw)), encoding="utf-8", newline="")
        no = 0
        try:
            for no, line in enumerate(text, start=1):
                yield no, line.rstrip("\n").removesuffix("\r")
        except UnicodeDecodeError:
            # Not a row one can skip: the decoder cannot resync, so the rest of the file is lost.
            raise BadRowError(f"{path}:{no + 1}: invalid UTF-8 at or after this line") from None


def count_lines(path: str) -> int:
    """Lines as `numbered_lines` yields them (a last line without a newline counts)."""
    n = 0
    for n, _ in numbered_lines(path):  # noqa: B007 -- n is read after the loop: the last number
        pass
    return n


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")


def reject(row: dict, reason: str, detail: str, on_error: str) -> dict:
    """Mark `row` rejected for `reason`; under on_error="fail" raise instead, naming where and why."""
    if on_error == "fail":
        raise BadRowError(f"{row['row_id']}: {detail}")
    row["reject"] = reason
    return row


def base_row(path: str, where: str | int) -> dict:
    return {"source": path, "row_id": f"{path}:{where}", "reject": ""}


def jsonl_rows(path: str) -> Iterator[tuple[int, dict, str]]:
    """(line number, its base row, the line) of each non-blank line of a JSONL file."""
    for no, line in numbered_lines(path):
        if line.strip():
            yield no, base_row(path, no), line


def _open(path: str):
    raw = _fs.open_input(path)
    comp = compression(path)
    return pa.CompressedInputStream(raw, comp) if comp else raw


class _Raw(io.RawIOBase):
    """A pyarrow input stream as a Python raw stream (TextIOWrapper needs `readinto`)."""

    def __init__(self, f) -> None:
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._f.read(len(b))
        b[: len(data)] = data
        return len(data)


def plain_tokenizer(tokenizer):
    """The `tokenizers.Tokenizer` behind `tokenizer` (itself, or a transformers fast tokenizer's
    backend) with truncation and padding off: a copy when they are on. Call it once per worker.

    The task features cut windows themselves from one full encoding; a tokenizer.json saved with
    truncation on (all-MiniLM-L6-v2's: 128 tokens) would silently lose the rest of the context.
    """
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if backend.truncation is None and backend.padding is None:
        return backend
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def encoder(tokenizer):
    """The backend of `tokenizer`, refusing one that truncates or pads (see `plain_tokenizer`)."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if backend.truncation is not None or backend.padding is not None:
        raise ValueError("the tokenizer truncates or pads: pass plain_tokenizer(tokenizer), made once per worker")
    return backend


def parse_json_object(text: str, where: str) -> dict:
    """One JSON object (a JSONL line, a JSON file); a UserError naming `where` (file:line) otherwise."""
    try:
        obj = json.loads(text)
    except ValueError:
        raise UserError(f"{where}: malformed JSON") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object")
    return obj
