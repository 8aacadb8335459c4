"""Cleaning: normalise, filter, exact dedup; every dropped row is counted by reason.

Rejected rows are written to `<prepared_dir>/rejects/rejects-<unit>.parquet` (row_id, source,
reason, text) by the worker that rejects them, one file per unit, so that a retried unit
overwrites rather than duplicates its ledger. Counts per reason go into the manifest.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raylm.datasets.config import DataConfig

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
_BLANKS = re.compile(r"\n{3,}")
_LINE_EDGES = re.compile(r" ?\n ?")  # after spaces are folded, at most one on each side


def normalize(text: str) -> str:
    """NFC, control characters out, runs of spaces folded, at most one blank line in a row."""
    if not text.isascii():  # ASCII is already NFC; most of an English corpus skips this
        text = unicodedata.normalize("NFC", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    # Whole-text regexes, not a loop over lines, each skipped when a plain substring search (much
    # faster than a regex scan) shows it has nothing to do: this runs on every document.
    if "  " in text or "\t" in text or not text.isascii():
        text = _SPACES.sub(" ", text)
    if " \n" in text or "\n " in text:
        text = _LINE_EDGES.sub("\n", text)
    if "\n\n\n" in text:
        text = _BLANKS.sub("\n\n", text)
    return text.strip()


def text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def text_hashes(texts: list[str]) -> np.ndarray:
    """`text_hash` of each text as int64, the digests turned into integers in one numpy call."""
    digest = b"".join(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest() for t in texts)
    return np.frombuffer(digest, "<i8").copy()


def reject_reason(text: str, cfg: DataConfig) -> str:
    """Filters by design (not errors in the input): they never stop a run under on_error=fail."""
    if not text:
        return "empty_after_cleaning"
    if len(text) < cfg.min_chars:
        return "too_short"
    if len(text) > cfg.max_chars:
        return "too_long"
    return ""


class DedupIndex:
    """A Ray actor holding one hash range of the documents kept so far: exact dedup across the
    whole corpus. Each hash remembers the unit that claimed it, so a unit that is retried after
    a failure gets its own documents back instead of losing them as duplicates. Several actors
    split the index by `hash % shards` (a Python dict: ~100 bytes a document)."""

    def __init__(self, shard: int = 0, shards: int = 1) -> None:
        self._owner: dict[int, int] = {}
        self.shard, self.shards = shard, shards

    def claim(self, hashes: np.ndarray, owner: int) -> np.ndarray:
        """For each hash: True when `owner` may keep the document (unseen, or already its own)."""
        out = np.empty(len(hashes), dtype=bool)
        get = self._owner.setdefault
        for i, h in enumerate(hashes.tolist()):
            out[i] = get(h, owner) == owner
        return out

    def load(self, paths: list[str]) -> int:
        """Claims of units finished by an earlier, interrupted run (their `.hashes.npy` files)."""
        for path in paths:
            owner = int(os.path.basename(path).split(".")[0], 16) >> 1
            hashes = np.load(path)
            for h in hashes[hashes % self.shards == self.shard].tolist():
                self._owner.setdefault(h, owner)
        return len(self._owner)

    def size(self) -> int:
        return len(self._owner)


class ShardedDedup:
    """Client side of the dedup actors: routes each hash to the actor owning its range."""

    def __init__(self, actors: list) -> None:
        self.actors = actors

    def claim(self, hashes: np.ndarray, owner: int) -> np.ndarray:
        import ray

        n = len(self.actors)
        route = hashes % n
        refs = [self.actors[i].claim.remote(hashes[route == i], owner) for i in range(n)]
        out = np.empty(len(hashes), dtype=bool)
        for i, part in enumerate(ray.get(refs)):
            out[route == i] = part
        return out


class RejectsWriter:
    """Streams one unit's rejected rows to `rejects/<unit>.parquet` (temporary name, then rename)."""

    SCHEMA = pa.schema([("row_id", pa.string()), ("source", pa.string()), ("reason", pa.string()),
                        ("text", pa.string())])

    def __init__(self, rejects_dir: str, key: str) -> None:
        self.path = os.path.join(rejects_dir, f"rejects-{key}.parquet")
        self.tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        self.counts: dict[str, int] = {}
        self._writer: pq.ParquetWriter | None = None
        os.makedirs(rejects_dir, exist_ok=True)

    def add(self, rows: list[dict]) -> None:
        if not rows:
            return
        for r in rows:
            self.counts[r["reject"]] = self.counts.get(r["reject"], 0) + 1
        table = pa.Table.from_pylist([{"row_id": r["row_id"], "source": r["source"], "reason": r["reject"],
                                       "text": r["text"][:2000]} for r in rows], schema=self.SCHEMA)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.tmp, self.SCHEMA)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.path):
            os.remove(self.path)  # an earlier attempt's ledger for this unit


def read_rejects(prepared_dir: str, reason: str | None = None, limit: int = 20) -> list[dict]:
    """Rejected rows (row_id, source, reason, text) from the ledger, for a user to look at."""
    out: list[dict] = []
    rdir = os.path.join(prepared_dir, "rejects")
    for name in sorted(os.listdir(rdir)) if os.path.isdir(rdir) else []:
        if name.endswith(".parquet") and len(out) < limit:
            rows = pq.read_table(os.path.join(rdir, name)).to_pylist()
            out += [r for r in rows if reason is None or r["reason"] == reason][: limit - len(out)]
    return out
