"""Cleaning: normalise, filter, exact dedup; every dropped row is counted by reason.

Rejected rows are written to `<prepared_dir>/rejects/*.parquet` (text, source, row_id, reason)
by the task that rejects them, under a name derived from the batch's rows so that a retried
task overwrites rather than duplicates. The manifest's counts are read back from those files.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from raylm.datasets.config import DataConfig

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
_BLANKS = re.compile(r"\n{3,}")


def normalize(text: str) -> str:
    """NFC, control characters out, runs of spaces folded, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", text).strip()


def text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def reject_reason(text: str, cfg: DataConfig) -> str:
    if not text:
        return "empty"
    if len(text) < cfg.min_chars:
        return "too_short"
    if len(text) > cfg.max_chars:
        return "too_long"
    return ""


class DedupIndex:
    """A Ray actor holding the hashes seen so far: exact dedup across the whole corpus.

    8 bytes a document: 100M documents fit in ~3 GB. Shard by hash across several actors
    when the corpus is larger.
    """

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def first_seen(self, hashes: list[int]) -> list[bool]:
        out = []
        for h in hashes:
            out.append(h not in self._seen)
            self._seen.add(h)
        return out

    def size(self) -> int:
        return len(self._seen)


def write_rejects(rows: list[dict], rejects_dir: str) -> None:
    if not rows:
        return
    os.makedirs(rejects_dir, exist_ok=True)
    key = hashlib.sha1(rows[0]["row_id"].encode()).hexdigest()[:16]
    table = pa.Table.from_pylist(
        [{"row_id": r["row_id"], "source": r["source"], "reason": r["reject"], "text": r["text"][:2000]}
         for r in rows]
    )
    path = os.path.join(rejects_dir, f"rejects-{key}.parquet")
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


class Cleaner:
    """map_batches callable: returns kept rows, writes rejected ones to the ledger."""

    def __init__(self, cfg: DataConfig, rejects_dir: str, dedup=None) -> None:
        self.cfg, self.rejects_dir, self.dedup = cfg, rejects_dir, dedup

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        rows = batch.to_pylist()
        for r in rows:
            if not r["reject"]:
                r["text"] = normalize(r["text"])
                r["reject"] = reject_reason(r["text"], self.cfg)
        if self.dedup is not None:
            live = [r for r in rows if not r["reject"]]
            firsts = ray.get(self.dedup.first_seen.remote([text_hash(r["text"]) for r in live]))
            for r, first in zip(live, firsts):
                if not first:
                    r["reject"] = "duplicate"
        bad = [r for r in rows if r["reject"]]
        if bad and self.cfg.on_error == "fail" and any(r["reject"] not in FILTER_REASONS for r in bad):
            first = next(r for r in bad if r["reject"] not in FILTER_REASONS)
            raise BadRowError(f"{first['row_id']}: {first['reject'].replace('_', ' ')}")
        write_rejects(bad, self.rejects_dir)
        kept = [r for r in rows if not r["reject"]]
        return pa.Table.from_pylist(kept, schema=batch.schema)


# Filters by design (not errors in the input): never fail the run under on_error=fail.
FILTER_REASONS = {"duplicate", "too_short", "too_long", "empty"}


class BadRowError(Exception):
    """A malformed row under data.on_error=fail; the message is `file:line: what is wrong`."""


def count_rejects(rejects_dir: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    if not os.path.isdir(rejects_dir):
        return counts
    for name in sorted(os.listdir(rejects_dir)):
        if name.endswith(".parquet"):
            for reason in pq.read_table(os.path.join(rejects_dir, name), columns=["reason"]).column(0).to_pylist():
                counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))
