"""`raylm prepare` for BERT pretraining with next-sentence prediction (`trainer.task: masked-lm`,
`data.nsp: true`): documents -> `[CLS] A [SEP] B [SEP]` sentence pairs -> Parquet shards + manifest.

The LM pipeline (`raylm.datasets.prepare`) does the reading: units of the corpus on an actor pool,
cleaning, exact dedup, the train/validation split by a hash of each document's text, the rejects
ledger, per-unit markers (resume) and the manifest. Its `UnitWorker` is swapped for
`NSPUnitWorker`, which turns the kept documents into pairs instead of packed blocks:

    document (text: a blank-line separated paragraph; JSONL/CSV/Parquet: the text field)
      --> sentences (text: one a line; other formats: lines cut at sentence ends)
      --> token ids (no special tokens) --> windows of `data.nsp_window_docs` documents per split
      --> nsp.nsp_examples(window, seed of (data.seed, unit, split, window)) --> shuffled --> shards

A random B comes from another document of the same window, so a worker holds one window at a time
and nobody holds the corpus; the same corpus, config and seed give the same shards. Shard columns:
`sample_id`, `input_ids` (unpadded, at most `data.block_size`), `token_type_ids`,
`next_sentence_label` (HF convention: 0 = B follows A, 1 = B is random). The manifest adds
`nsp: true` and the label counts per split (`nsp_labels`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
from typing import Any

import numpy as np
import pyarrow as pa

from raylm.datasets import tokenizers as toks
from raylm.datasets.config import DataConfig
from raylm.datasets.manifest import COUNTS, SPLITS
from raylm.datasets.pack import sample_ids
from raylm.datasets.tokenizer_training import nsp_tokenizer
from raylm.datasets.units import UnitTask, UnitWorker, atomic_write, prepare_corpus
from raylm.errors import UserError
from raylm.tasks.nsp_pairs import IS_NEXT, nsp_examples

log = logging.getLogger("raylm.datasets.prepare")
__all__ = ["NSP_SCHEMA", "NSPUnitWorker", "PairWriter", "nsp_tokenizer", "prepare_nsp", "split_sentences"]
TASK = "masked-lm"
NSP_SCHEMA = 1  # the pair shards' layout (in the inputs fingerprint: a new layout re-prepares)

# A sentence ends at . ! ? followed by space and a capital, digit, quote or bracket; not after a
# capitalised abbreviation or an initial ("Mr. Smith", "J. Smith").
_SENTENCE_END = re.compile(r"(?<=[.!?])(?<![A-Z][a-z]\.)(?<!\b[A-Z]\.)\s+(?=[\"'(\[#]?[A-Z0-9])")


def split_sentences(text: str, lines_only: bool) -> list[str]:
    """The sentences of a document: its non-blank lines (`lines_only`, plain text files: one
    sentence a line), or its lines cut further at sentence ends (JSONL and tables)."""
    lines = [line.strip() for line in text.split("\n")]
    if lines_only:
        return [line for line in lines if line]
    return [s.strip() for line in lines if line for s in _SENTENCE_END.split(line) if s.strip()]


def window_seed(seed: int, key: str, split: str, window: int) -> int:
    """The pairs' seed of one window: stable across processes and runs (not `hash()`)."""
    digest = hashlib.blake2b(f"{seed}|{key}|{split}|{window}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# ---------------------------------------------------------------- writing pairs


class PairWriter:
    """One split of one unit: documents in windows -> NSP examples -> shards of exactly `shard_rows`
    rows (the unit's last one may be short). The interface of `prepare.SplitWriter`.

    `dropped` counts the tokens of documents that start no example: fewer than two sentences, or
    alone in their window (they can still be a random B).
    """

    def __init__(self, out_dir: str, split: str, key: str, cfg: DataConfig, cls_id: int, sep_id: int) -> None:
        self.out_dir, self.split, self.key, self.cfg = out_dir, split, key, cfg
        self.cls_id, self.sep_id = cls_id, sep_id
        self.window: list[list[list[int]]] = []
        self.windows = 0
        self.pending: list[dict] = []
        self.files: list[dict] = []
        self.counts = dict.fromkeys(COUNTS, 0)
        self.labels = {"is_next": 0, "random": 0}
        self.max_label = -1

    def add(self, docs: list[list[list[int]]], texts: list[str], labels: list[Any] | None = None) -> None:
        c, w = self.counts, self.cfg.nsp_window_docs
        c["docs"] += len(docs)
        c["chars"] += sum(len(t) for t in texts)
        c["tokens_in"] += sum(len(s) for d in docs for s in d)
        self.window += docs
        while len(self.window) >= 2 * w:  # the last window keeps w..2w-1 documents: never one alone
            self._pairs(self.window[:w])
            self.window = self.window[w:]
        while len(self.pending) >= self.cfg.shard_rows:
            self._flush(self.cfg.shard_rows)

    def close(self) -> dict:
        if self.window:
            self._pairs(self.window)
            self.window = []
        if self.pending:
            self._flush(len(self.pending))
        return {"files": self.files, **self.counts, "nsp_labels": dict(self.labels)}

    def _pairs(self, docs: list[list[list[int]]]) -> None:
        seed = window_seed(self.cfg.seed, self.key, self.split, self.windows)
        self.windows += 1
        sentences = [[s for s in d if s] for d in docs]
        starts = [len(d) >= 2 for d in sentences]
        if sum(1 for d in sentences if d) < 2:  # no other document to draw a random B from
            starts = [False] * len(docs)
        self.counts["dropped"] += sum(len(s) for d, ok in zip(sentences, starts) if not ok for s in d)
        if not any(starts):
            return
        examples = nsp_examples(sentences, self.cfg.block_size, self.cls_id, self.sep_id, seed)
        random.Random(seed).shuffle(examples)  # pairs of one document apart: batches mix documents
        for e in examples:
            self.labels["is_next" if e["next_sentence_label"] == IS_NEXT else "random"] += 1
        self.pending += examples

    def _flush(self, n: int) -> None:
        name = f"{self.split}/{self.key}-{len(self.files):05d}.parquet"
        rows, self.pending = self.pending[:n], self.pending[n:]
        table = pa.table({
            "sample_id": pa.array(sample_ids(name, n), pa.int64()),
            "input_ids": pa.array([r["input_ids"] for r in rows], pa.list_(pa.int32())),
            "token_type_ids": pa.array([r["token_type_ids"] for r in rows], pa.list_(pa.int8())),
            "next_sentence_label": pa.array([r["next_sentence_label"] for r in rows], pa.int64()),
        })
        path = os.path.join(self.out_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        digest = atomic_write(table, path)
        self.files.append({"path": name, "rows": n, "sha256": digest})
        self.counts["rows"] += n
        self.counts["tokens_out"] += sum(len(r["input_ids"]) for r in rows)


class NSPUnitWorker(UnitWorker):
    """`prepare.UnitWorker` (read, clean, dedup, split, ledger, marker) writing sentence pairs."""

    def __init__(self, cfg: DataConfig, tokenizer_dir: str, out_dir: str, task: UnitTask, dedup: list | None,
                 validation_files: list[str] | None = None, threads: int = 1) -> None:
        super().__init__(cfg, tokenizer_dir, out_dir, task, dedup, validation_files, threads)
        facts = toks.tokenizer_facts(tokenizer_dir)
        self.cls_id, self.sep_id = facts["cls_id"], facts["sep_id"]
        self.lines_only = True

    def process(self, unit: Any) -> dict:
        self.lines_only = unit.fmt == "text"  # plain text: a sentence a line; other formats: cut at sentence ends
        return super().process(unit)

    def _writers(self, key: str) -> dict[str, PairWriter]:
        return {s: PairWriter(self.out_dir, s, key, self.cfg, self.cls_id, self.sep_id) for s in SPLITS}

    def _tokenize(self, kept: list[dict], hashes: np.ndarray, writers: dict[str, Any]) -> None:
        if not kept:
            return
        sentences = [split_sentences(r["text"], self.lines_only) for r in kept]
        flat = [s for d in sentences for s in d]
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        ids = [e.ids for e in encode(flat, add_special_tokens=False)] if flat else []
        bounds = np.cumsum([0] + [len(d) for d in sentences]).tolist()
        docs = [ids[a:b] for a, b in zip(bounds, bounds[1:])]
        val = self.validation(kept, hashes)
        for split, idx in (("train", np.flatnonzero(~val)), ("validation", np.flatnonzero(val))):
            if len(idx):
                writers[split].add([docs[i] for i in idx], [kept[i]["text"] for i in idx])


# ---------------------------------------------------------------- tokenizer


# ---------------------------------------------------------------- driver


def prepare_nsp(cfg: DataConfig, force: bool = False) -> dict:
    """Prepare sentence-pair shards (Ray must be initialised): the prepare template with `NSPUnitWorker`,
    a WordPiece tokenizer, and pairs that depend on data.seed (LM blocks do not: there it seeds the shuffle)."""
    return prepare_corpus(
        cfg, TASK, force, tokenizer=nsp_tokenizer, fingerprint_extra=f"|nsp{NSP_SCHEMA}|seed{cfg.seed}",
        worker=NSPUnitWorker, check_markers=lambda markers: _check_pairs(cfg, markers),
        manifest_extra=lambda markers: {"nsp": True, "nsp_schema_version": NSP_SCHEMA,
                                        "nsp_labels": label_counts(markers)})


def _check_pairs(cfg: DataConfig, markers: list[dict]) -> None:
    """Documents were kept but none made a training pair: say why (before the LM's "smaller than a block")."""
    kept = sum(m["splits"][s]["docs"] for m in markers for s in SPLITS)
    if kept and not sum(m["splits"]["train"]["rows"] for m in markers):
        raise UserError(f"data.nsp: no sentence pair in '{cfg.source}': {kept} documents kept, none with two "
                        "sentences beside another document", hint="text files: blank-line separated documents, one "
                        "sentence a line (data.text_split: paragraph); other formats: documents of several sentences")


def label_counts(markers: list[dict]) -> dict[str, dict[str, int]]:
    """{split: {is_next, random}} summed over the units' markers."""
    return {s: {k: sum(m["splits"][s].get("nsp_labels", {}).get(k, 0) for m in markers) for k in ("is_next", "random")}
            for s in SPLITS}
