"""`raylm prepare`: corpus -> clean -> tokenize -> pack -> Parquet shards + manifest.json.

One streaming pass on Ray Data. Tokenizer actors write their own shards (temporary name, then
rename) and return only small stats rows, so the driver never holds the corpus.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raylm.datasets import tokenizers as toks
from raylm.datasets.clean import BadRowError, Cleaner, DedupIndex, count_rejects
from raylm.datasets.config import DataConfig
from raylm.datasets.pack import pack_documents, sample_id, split_of
from raylm.errors import UserError

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
SPLITS = ("train", "validation")


def resolve_source(cfg: DataConfig) -> str:
    if cfg.source == "demo":
        from raylm.datasets.demo import build_demo_corpus

        return str(build_demo_corpus())
    return cfg.source


def _atomic_write(table: pa.Table, path: str) -> str:
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    os.replace(tmp, path)
    return digest


def _label(value: str | None, labels: list[str] | None) -> int:
    if labels:
        return labels.index(value) if value in labels else -1
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return -1


class ShardWriter:
    """Actor: holds a fast tokenizer; tokenizes, packs and writes one shard per split per batch."""

    def __init__(self, cfg: DataConfig, tokenizer_dir: str, out_dir: str, task: str,
                 validation_files: list[str] | None = None) -> None:
        self.cfg, self.out_dir, self.task = cfg, out_dir, task
        self.tok = toks.load_tokenizer(tokenizer_dir)
        self.validation_files = set(validation_files or [])

    def split(self, row: dict) -> str:
        if self.validation_files:
            return "validation" if row["source"] in self.validation_files else "train"
        return split_of(row["row_id"], self.cfg.validation_fraction)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        stats = []
        for split in SPLITS:
            docs = [r for r in rows if self.split(r) == split]
            if docs:
                stats.append(self._write(split, docs))
        return pa.Table.from_pylist(stats, schema=STATS_SCHEMA)

    def _write(self, split: str, docs: list[dict]) -> dict:
        key = hashlib.sha1(docs[0]["row_id"].encode()).hexdigest()[:16]
        name = f"{split}/shard-{key}.parquet"
        ids = self.tok([d["text"] for d in docs], add_special_tokens=False)["input_ids"]
        tokens = sum(len(x) for x in ids)
        chars = sum(len(d["text"]) for d in docs)
        if self.task == "sequence-classification":
            ids = [x[: self.cfg.max_length] for x in ids]
            labels = [_label(d["label"], self.cfg.labels) for d in docs]
            table = pa.table({
                "sample_id": pa.array([sample_id(name, i) for i in range(len(ids))], pa.int64()),
                "input_ids": pa.array(ids, pa.list_(pa.int32())),
                "label": pa.array(labels, pa.int64()),
            })
            kept, dropped = sum(len(x) for x in ids), tokens - sum(len(x) for x in ids)
        else:
            blocks, dropped = pack_documents(ids, self.tok.eos_token_id, self.cfg.block_size)
            table = pa.table({
                "sample_id": pa.array([sample_id(name, i) for i in range(len(blocks))], pa.int64()),
                "input_ids": pa.array(list(blocks), pa.list_(pa.int32(), self.cfg.block_size)),
            })
            kept = int(blocks.size)
        path = os.path.join(self.out_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        digest = _atomic_write(table, path)
        return {"split": split, "file": name, "rows": table.num_rows, "docs": len(docs), "chars": chars,
                "tokens_in": tokens, "tokens_out": kept, "dropped": dropped, "sha256": digest}


STATS_SCHEMA = pa.schema([
    ("split", pa.string()), ("file", pa.string()), ("rows", pa.int64()), ("docs", pa.int64()),
    ("chars", pa.int64()), ("tokens_in", pa.int64()), ("tokens_out", pa.int64()),
    ("dropped", pa.int64()), ("sha256", pa.string()),
])


def cleaned_dataset(cfg: DataConfig, source: str, rejects_dir: str | None, dedup: Any = None):
    from raylm.datasets.sources import read_corpus

    cleaner = Cleaner(cfg, rejects_dir or "", dedup)
    if rejects_dir is None:  # sampling only: no ledger writes
        cleaner = _SampleCleaner(cfg)
    ds = read_corpus(cfg, source)
    if cfg.validation_source and rejects_dir is not None:
        ds = ds.union(read_corpus(cfg, cfg.validation_source))
    return ds.map_batches(cleaner, batch_format="pyarrow", batch_size=1024)


class _SampleCleaner(Cleaner):
    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg, "", None)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from raylm.datasets.clean import normalize, reject_reason

        rows = [dict(r, text=normalize(r["text"])) for r in batch.to_pylist() if not r["reject"]]
        return pa.Table.from_pylist([r for r in rows if not reject_reason(r["text"], self.cfg)], schema=batch.schema)


def ensure_tokenizer(cfg: DataConfig, task: str, source: str) -> str:
    """Use the configured tokenizer, the one already trained for this corpus, or train one."""
    tok_dir = toks.resolve_tokenizer_dir(cfg.prepared_dir, cfg.tokenizer.path)
    if not Path(tok_dir, "tokenizer.json").is_file() and not cfg.tokenizer.path:
        t0 = time.time()
        sample = toks.sample_texts(cleaned_dataset(cfg, source, None), cfg.tokenizer.sample_docs)
        toks.train_bpe(sample, tok_dir, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
        log.info("tokenizer: trained %s in %.1fs", tok_dir, time.time() - t0)
    problems = toks.check_tokenizer(toks.load_tokenizer(tok_dir), task)
    if problems:
        raise UserError([f"tokenizer {tok_dir}: {p}" for p in problems])
    return tok_dir


def _fingerprint_inputs(cfg: DataConfig, task: str, tok_fp: str) -> str:
    keys = cfg.model_dump(mode="json", exclude={"tokenize_batch_size", "tokenize_actors", "shuffle_buffer_rows", "seed"})
    return hashlib.sha256(json.dumps([keys, task, tok_fp], sort_keys=True).encode()).hexdigest()[:16]


def load_manifest(prepared_dir: str) -> dict:
    path = Path(prepared_dir, "manifest.json")
    if not path.is_file():
        raise UserError(f"no prepared data at '{prepared_dir}' (manifest.json missing)", hint="run `raylm prepare CONFIG` first")
    return json.loads(path.read_text())


def prepare(cfg: DataConfig, task: str = "causal-lm", force: bool = False) -> dict:
    """Prepare shards (Ray must be initialised). Idempotent: same inputs -> reuse the manifest."""
    import ray

    source = resolve_source(cfg)
    tok_dir = ensure_tokenizer(cfg, task, source)
    tok_fp = toks.fingerprint(tok_dir)
    inputs_fp = _fingerprint_inputs(cfg, task, tok_fp)
    out = Path(cfg.prepared_dir)
    mpath = out / "manifest.json"
    if mpath.is_file() and not force:
        old = json.loads(mpath.read_text())
        if old.get("inputs_fingerprint") == inputs_fp:
            log.info("prepare: %s is up to date", out)
            return old
    for sub in (*SPLITS, "rejects"):
        shutil.rmtree(out / sub, ignore_errors=True)
    t0 = time.time()
    dedup = ray.remote(DedupIndex).options(num_cpus=0).remote() if cfg.dedup else None
    ds = cleaned_dataset(cfg, source, str(out / "rejects"), dedup)
    stats_ds = ds.map_batches(
        ShardWriter,
        fn_constructor_args=(cfg, tok_dir, str(out), task, _validation_files(cfg)),
        batch_format="pyarrow",
        batch_size=cfg.tokenize_batch_size,
        compute=ray.data.ActorPoolStrategy(size=cfg.tokenize_actors),
    )
    try:
        stats = stats_ds.take_all()
    except Exception as err:  # a BadRowError raised in a task arrives wrapped
        bad = _find_bad_row(err)
        if bad:
            raise UserError(f"{bad} (data.on_error=fail)", hint="fix the file or set data.on_error=skip") from None
        raise
    manifest = _manifest(cfg, task, tok_dir, tok_fp, inputs_fp, stats, count_rejects(str(out / "rejects")))
    manifest["seconds"] = round(time.time() - t0, 2)
    out.mkdir(parents=True, exist_ok=True)
    tmp = mpath.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(mpath)
    return manifest


def _validation_files(cfg: DataConfig) -> list[str] | None:
    if not cfg.validation_source:
        return None
    from raylm.datasets.sources import list_files

    return list_files(cfg.validation_source)


def _find_bad_row(err: BaseException) -> str | None:
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, BadRowError):
            return str(err)
        text = str(err)
        if "BadRowError" in text:
            line = [l for l in text.splitlines() if "BadRowError" in l][-1]
            return line.split("BadRowError:", 1)[-1].strip()
        err = err.__cause__ or getattr(err, "cause", None)
        seen += 1
    return None


def _manifest(cfg: DataConfig, task: str, tok_dir: str, tok_fp: str, inputs_fp: str,
              stats: list[dict], rejects: dict[str, int]) -> dict:
    tok = toks.load_tokenizer(tok_dir)
    splits: dict[str, Any] = {}
    for split in SPLITS:
        rows = sorted((s for s in stats if s["split"] == split), key=lambda s: s["file"])
        splits[split] = {
            "files": [{"path": s["file"], "rows": s["rows"], "sha256": s["sha256"]} for s in rows],
            **{k: sum(s[k] for s in rows) for k in ("rows", "docs", "chars", "tokens_in", "tokens_out", "dropped")},
        }
    kept_docs = sum(splits[s]["docs"] for s in SPLITS)
    if kept_docs == 0:
        raise UserError(f"the corpus is empty: no document in '{cfg.source}' survived cleaning "
                        f"(rejected: {rejects or 'none'})", hint=f"see {cfg.prepared_dir}/rejects/")
    if splits["train"]["rows"] == 0:
        raise UserError(f"no training rows: the corpus is smaller than one block of {cfg.block_size} tokens",
                        hint="add text or lower data.block_size")
    labels = None
    if task == "sequence-classification":
        labels = cfg.labels
    return {
        "schema_version": SCHEMA_VERSION, "task": task, "source": cfg.source,
        "tokenizer_dir": os.path.abspath(tok_dir), "tokenizer_fingerprint": tok_fp,
        "inputs_fingerprint": inputs_fp, "vocab_size": len(tok), "eos_id": tok.eos_token_id,
        "pad_id": tok.pad_token_id, "mask_id": tok.mask_token_id,
        "block_size": cfg.block_size, "max_length": cfg.max_length, "labels": labels,
        "rows_in": kept_docs + sum(rejects.values()), "rows_kept": kept_docs,
        "rows_rejected": sum(rejects.values()), "rejected": rejects, "splits": splits,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
