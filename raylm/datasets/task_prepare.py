"""`raylm prepare` for the downstream tasks (token-classification, question-answering): labelled
files -> Ray Data -> features on an actor pool -> Parquet shards + manifest.json. Every row read is
either kept or rejected under a reason (the rejects ledger); under `data.on_error: fail` the first
bad row stops the run with `file:line: what` (exit 2).

    files --(read, one task per file)--> rows {task fields, source, row_id, reject, split}
          --> stats: rejects by reason, tag set --> labels (data.labels, or the tags in the data)
          --> rejects/*.parquet                      (row_id, source, reason, text)
          --> map_batches(Featurizer, actor pool)    one row per window (variable length)
          --> train/*.parquet, validation/*.parquet + manifest.json

Shards hold sub-token ids WITH the tokenizer's special tokens (the windows are cut around them) and
no padding: the trainer pads per batch. The same `features` functions serve `raylm predict` and
`raylm eval --input` (`raylm.tasks.downstream_files`), so training and inference see one layout.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raylm.datasets import _fs
from raylm.datasets import tokenizers as toks
from raylm.datasets.config import DataConfig
from raylm.datasets.manifest import up_to_date
from raylm.datasets.pack import sample_id, split_of
from raylm.datasets.sources import BadRowError
from raylm.errors import UserError

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
SPLITS = ("train", "validation")
TASKS = ("token-classification", "question-answering", "seq2seq")

_BASE = [("source", pa.string()), ("row_id", pa.string()), ("reject", pa.string()), ("split", pa.string())]
ROW_SCHEMA = {
    "token-classification": pa.schema(_BASE + [("tokens", pa.list_(pa.string())), ("tags", pa.list_(pa.string()))]),
    "question-answering": pa.schema(_BASE + [
        ("id", pa.string()), ("question", pa.string()), ("context", pa.string()),
        ("answers", pa.struct([("text", pa.list_(pa.string())), ("answer_start", pa.list_(pa.int64()))])),
        ("is_impossible", pa.bool_())]),
    "seq2seq": pa.schema(_BASE + [("source_text", pa.string()), ("target_text", pa.string())]),
}
_IDS = pa.list_(pa.int32())
FEATURE_SCHEMA = {
    "token-classification": pa.schema([("sample_id", pa.int64()), ("input_ids", _IDS), ("labels", _IDS),
                                       ("word_ids", _IDS), ("row_id", pa.string()), ("split", pa.string())]),
    "question-answering": pa.schema([
        ("sample_id", pa.int64()), ("input_ids", _IDS), ("token_type_ids", _IDS), ("start_positions", pa.int32()),
        ("end_positions", pa.int32()), ("offset_start", _IDS), ("offset_end", _IDS), ("example_id", pa.string()),
        ("context", pa.string()), ("answers", pa.list_(pa.string())), ("split", pa.string())]),
    # target_text: the raw reference, kept in validation shards only (BLEU/ROUGE score text as written).
    "seq2seq": pa.schema([("sample_id", pa.int64()), ("input_ids", _IDS), ("labels", _IDS), ("row_id", pa.string()),
                          ("target_text", pa.string()), ("split", pa.string())]),
}


# ---------------------------------------------------------------- rows


def read_rows(path: str, task: str, cfg: DataConfig, on_error: str | None = None) -> Iterator[dict]:
    """Rows of one labelled file (`file:line` row ids), read by the task's reader."""
    on_error = on_error or cfg.on_error
    if task == "seq2seq":
        from raylm.datasets import seq2seq_prepare

        return seq2seq_prepare.read_rows(path, cfg, on_error)
    if task == "token-classification":
        from raylm.tasks.conll import read_conll, read_token_jsonl

        if re.sub(r"\.(gz|zst|zstd)$", "", path).endswith((".jsonl", ".json", ".ndjson")):
            return read_token_jsonl(path, cfg.ner.tokens_field, cfg.ner.tags_field, on_error)
        return read_conll(path, cfg.ner.tag_column, on_error)
    from raylm.tasks.squad import read_squad

    return read_squad(path, on_error)


def row_text(row: dict) -> str:
    """The text of a row: what decides its split, trains a tokenizer and goes into the ledger."""
    if "tokens" in row:
        return " ".join(row["tokens"])
    if "source_text" in row:  # seq2seq: the source decides the split (one sentence, one side of the split)
        return row["source_text"] or ""
    # Questions about one paragraph share a split (no context seen in training is scored).
    return row.get("context") or ""


def _read_file(batch: pa.Table, task: str, cfg: DataConfig) -> pa.Table:
    rows = []
    for path, split in zip(batch.column("path").to_pylist(), batch.column("split").to_pylist()):
        for r in read_rows(path, task, cfg):
            r["split"] = split or split_of(row_text(r), cfg.validation_fraction)
            rows.append(r)
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA[task])


# ---------------------------------------------------------------- features


def ner_features(tokenizer: Any, row: dict, label2id: dict[str, int], max_length: int, stride: int) -> list[dict]:
    """Windows of one sentence: input_ids, labels (-100 off first sub-tokens), word_ids (see conll)."""
    from raylm.tasks.conll import align_labels

    words = list(row["tokens"])
    tags = list(row.get("tags") or ["O"] * len(words))
    feats = align_labels(tokenizer, words, [label2id.get(t, 0) for t in tags], max_length, stride)
    return [{k: f[k] for k in ("input_ids", "labels", "word_ids")} for f in feats]


def qa_features(tokenizer: Any, row: dict, cfg: DataConfig, with_answers: bool = True) -> list[dict]:
    """Windows of one question (see squad.qa_features), offsets split in two int lists for Arrow."""
    from raylm.tasks.squad import qa_features as windows

    answers = row["answers"] if with_answers else None
    out = []
    for f in windows(tokenizer, row["question"], row["context"], answers, cfg.max_length, cfg.qa.doc_stride,
                     cfg.qa.max_question_tokens):
        out.append({"input_ids": f["input_ids"], "token_type_ids": f["token_type_ids"],
                    "start_positions": f.get("start_positions", 0), "end_positions": f.get("end_positions", 0),
                    "offset_start": [o[0] for o in f["offsets"]], "offset_end": [o[1] for o in f["offsets"]],
                    "example_id": row["id"], "context": row["context"],
                    "answers": list((row.get("answers") or {}).get("text") or [])})
    return out


class Featurizer:
    """Actor of the tokenize pool: holds a plain (no truncation, no padding) fast tokenizer."""

    def __init__(self, task: str, cfg: DataConfig, tokenizer_dir: str, label2id: dict[str, int]) -> None:
        from tokenizers import Tokenizer

        from raylm.datasets._task_io import plain_tokenizer

        self.task, self.cfg, self.label2id = task, cfg, label2id
        self.tok = plain_tokenizer(Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json")))
        if task == "seq2seq":
            from raylm.datasets import seq2seq_prepare

            self.special = seq2seq_prepare.special_ids(tokenizer_dir)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for row in batch.to_pylist():
            if row["reject"]:  # in the ledger already
                continue
            try:
                feats = self.features(row)
            except ValueError as err:  # a doc stride that leaves no room: a config problem, said once
                raise UserError(f"{row['row_id']}: {err}", hint="raise data.max_length or lower data.qa.doc_stride") from None
            for w, f in enumerate(feats):
                out.append({"sample_id": sample_id(row["row_id"], w), "split": row["split"],
                            **({"row_id": row["row_id"]} if self.task != "question-answering" else {}), **f})
        return pa.Table.from_pylist(out, schema=FEATURE_SCHEMA[self.task])

    def features(self, row: dict) -> list[dict]:
        if self.task == "seq2seq":
            from raylm.datasets import seq2seq_prepare

            return [seq2seq_prepare.features(self.tok, row, self.special, *seq2seq_prepare.max_lengths(self.cfg))]
        if self.task == "token-classification":
            return ner_features(self.tok, row, self.label2id, self.cfg.max_length, self.cfg.ner.stride)
        return qa_features(self.tok, row, self.cfg)


# ---------------------------------------------------------------- tokenizer


def task_tokenizer(cfg: DataConfig, task: str, files: list[str]) -> str:
    """data.tokenizer.path, the one trained for this data before, or a WordPiece trained on a sample
    of the training rows (the first `data.tokenizer.sample_docs`, streamed by the driver)."""
    if cfg.tokenizer.path:
        return cfg.tokenizer.path
    tok_dir = toks.resolve_tokenizer_dir(cfg.prepared_dir, None)
    if not Path(tok_dir, "tokenizer.json").is_file():
        texts = _sample_texts(task, cfg, files)
        first = next(texts, None)
        if first is None:
            raise UserError(f"no readable row in {cfg.source} to train a tokenizer on", hint="check data.source")
        os.makedirs(os.path.dirname(os.path.abspath(tok_dir)), exist_ok=True)
        train = toks.train_wordpiece
        if task == "seq2seq":  # a joint byte-level BPE: cased and lossless, outputs are scored as written
            from raylm.tasks.seq2seq_data import train_tokenizer as train
        train(itertools.chain([first], texts), tok_dir, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
    return tok_dir


def seq2seq_tokenizer(cfg: DataConfig) -> str:
    """`raylm tokenizer train` for seq2seq: data.tokenizer.path, the one trained before, or a joint BPE
    trained on the first `data.tokenizer.sample_docs` training pairs (streamed by the driver, no Ray)."""
    from raylm.tasks.seq2seq_data import pair_files

    files, _ = pair_files(_fs.list_files(cfg.source), cfg)
    return task_tokenizer(cfg, "seq2seq", files)


def _sample_texts(task: str, cfg: DataConfig, files: list[str]) -> Iterator[str]:
    rows = (r for f in files for r in _fail_as_user_error(read_rows(f, task, cfg)) if not r["reject"])
    if task == "seq2seq":
        from raylm.tasks.seq2seq_data import sample_texts

        yield from sample_texts(rows, cfg.tokenizer.sample_docs)
        return
    for r in itertools.islice(rows, cfg.tokenizer.sample_docs):
        yield row_text(r) if task == "token-classification" else f"{r['question']} {r['context']}"


def _fail_as_user_error(rows: Iterator[dict]) -> Iterator[dict]:
    try:
        yield from rows
    except BadRowError as err:
        raise UserError(f"{err} (data.on_error=fail)", hint="fix the file or set data.on_error=skip") from None


# ---------------------------------------------------------------- driver


def prepare_task(cfg: DataConfig, task: str, force: bool = False) -> dict:
    """Prepare the shards of a downstream task (Ray must be initialised); a no-op when up to date."""
    import ray

    listed = {"train": _fs.list_files(cfg.source),
              "validation": _fs.list_files(cfg.validation_source) if cfg.validation_source else []}
    files = {s: [u for u, _ in fs] for s, fs in listed.items()}
    if task == "seq2seq":  # parallel text: one read per source file, its partner in the fingerprint
        from raylm.tasks.seq2seq_data import pair_files

        for s in SPLITS:
            files[s], listed[s] = pair_files(listed[s], cfg) if listed[s] else ([], [])
    tok_dir = task_tokenizer(cfg, task, files["train"])
    fp = _fingerprint(cfg, task, tok_dir, listed)
    out = Path(cfg.prepared_dir)
    mpath = out / "manifest.json"
    if (done := up_to_date(out, fp, force)) is not None:
        log.info("prepare: %s is up to date", out)
        return done
    for sub in (*SPLITS, "rejects"):
        shutil.rmtree(out / sub, ignore_errors=True)
    mpath.unlink(missing_ok=True)
    t0 = time.time()
    # With data.validation_source the split is the file's; otherwise a hash of each row's text decides.
    fixed = {"train": "train" if cfg.validation_source else "", "validation": "validation"}
    items = [{"path": f, "split": fixed[s]} for s in SPLITS for f in files[s]]
    rows = _consume(lambda: ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        functools.partial(_read_file, task=task, cfg=cfg), batch_size=1, batch_format="pyarrow").materialize())
    if cfg.labels and task == "token-classification":
        rows = _consume(lambda: _check_labels(rows, list(cfg.labels), cfg.on_error).materialize())
    stats = rows.map_batches(_stats, batch_format="pyarrow").take_all()  # one small row per reason / tag
    labels = _labels(cfg, task, {r["value"] for r in stats if r["kind"] == "tag"})
    rejected = _write_rejects(rows, out / "rejects", stats)
    feats = _consume(lambda: rows.map_batches(
        Featurizer, fn_constructor_args=(task, cfg, tok_dir, {t: i for i, t in enumerate(labels or [])}),
        batch_format="pyarrow", batch_size=cfg.tokenize_batch_size,
        compute=ray.data.ActorPoolStrategy(size=_pool_size(cfg)),
    ).materialize())
    splits = {s: _write_split(feats, s, out, cfg.shard_rows) for s in SPLITS}
    rows_in = sum(r["count"] for r in stats if r["kind"] == "reason")
    manifest = _manifest(cfg, task, tok_dir, fp, labels, rows_in, rejected, splits)
    manifest["seconds"] = round(time.time() - t0, 2)
    tmp = f"{mpath}.tmp"
    Path(tmp).write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, mpath)
    return manifest


def _consume(run: Callable[[], Any]) -> Any:
    """Run a Ray Data step; a BadRowError raised in a worker (on_error=fail) becomes a UserError."""
    from raylm.datasets.units import find_bad_row

    try:
        return run()
    except UserError:
        raise
    except Exception as err:  # Ray wraps worker exceptions
        bad = find_bad_row(err)
        if bad:
            raise UserError(f"{bad} (data.on_error=fail)", hint="fix the file or set data.on_error=skip") from None
        inner = _find_user_error(err)
        if inner:
            raise UserError(inner) from None
        raise


def _find_user_error(err: BaseException) -> str | None:
    lines = [line for line in str(err).splitlines() if "UserError:" in line]
    return lines[-1].split("UserError:", 1)[-1].strip() if lines else None


def _labels(cfg: DataConfig, task: str, tags: set[str]) -> list[str] | None:
    """Tag names in id order: data.labels, else O then B-/I- of each type seen in the kept rows."""
    if task != "token-classification":
        return None
    from raylm.tasks.conll import label_list

    return list(cfg.labels) if cfg.labels else label_list([sorted(tags)])


def _stats(batch: pa.Table) -> pa.Table:
    """Rows per reject reason ("" = kept) and the tags of kept rows, for one block (a groupby would
    shuffle through hundreds of partitions for a handful of keys)."""
    kind, value, count = [], [], []
    for vc in pc.value_counts(batch.column("reject")).to_pylist() if batch.num_rows else []:
        kind, value, count = kind + ["reason"], value + [vc["values"]], count + [vc["counts"]]
    if "tags" in batch.column_names and batch.num_rows:
        kept = batch.filter(pc.equal(batch.column("reject"), ""))
        tags = pc.unique(pc.list_flatten(kept.column("tags"))).to_pylist() if kept.num_rows else []
        kind, value, count = kind + ["tag"] * len(tags), value + tags, count + [0] * len(tags)
    return pa.table({"kind": pa.array(kind, pa.string()), "value": pa.array(value, pa.string()),
                     "count": pa.array(count, pa.int64())})


def _check_labels(rows: Any, labels: list[str], on_error: str) -> Any:
    """With data.labels given, a sentence holding another tag is rejected as unknown_tag."""
    known = set(labels)

    def mark(batch: pa.Table) -> pa.Table:
        out = batch.to_pylist()
        for r in out:
            bad = next((t for t in r["tags"] if t not in known), None)
            if not r["reject"] and bad is not None:
                if on_error == "fail":
                    raise BadRowError(f"{r['row_id']}: tag {bad!r} is not in data.labels {labels}")
                r["reject"] = "unknown_tag"
        return pa.Table.from_pylist(out, schema=batch.schema)

    return rows.map_batches(mark, batch_format="pyarrow")


def _write_rejects(rows: Any, rdir: Path, stats: list[dict]) -> dict[str, int]:
    """rejects/*.parquet (row_id, source, reason, text) and the count per reason."""
    def ledger(batch: pa.Table) -> pa.Table:
        bad = [r for r in batch.to_pylist() if r["reject"]]
        return pa.Table.from_pylist([{"row_id": r["row_id"], "source": r["source"], "reason": r["reject"],
                                      "text": row_text(r)[:2000]} for r in bad], schema=_LEDGER)

    counts: dict[str, int] = {}
    for r in stats:
        if r["kind"] == "reason" and r["value"]:
            counts[r["value"]] = counts.get(r["value"], 0) + r["count"]
    if counts:
        rows.map_batches(ledger, batch_format="pyarrow").repartition(1).write_parquet(str(rdir))
    return dict(sorted(counts.items()))


def _seq2seq_manifest(cfg: DataConfig, tok_dir: str) -> dict:
    """Lengths and the ids around the text; the data settings travel with the exported model."""
    from raylm.tasks.seq2seq_data import max_lengths, special_ids

    src, tgt = max_lengths(cfg)
    ids = special_ids(tok_dir)
    return {"max_length": max(src, tgt), "block_size": max(src, tgt), "bos_id": ids["bos_id"],
            "seq2seq": cfg.seq2seq.model_dump() | {"max_source_length": src, "eos_id": ids["eos_id"]}}


_LEDGER = pa.schema([("row_id", pa.string()), ("source", pa.string()), ("reason", pa.string()), ("text", pa.string())])


def _write_split(feats: Any, split: str, out: Path, shard_rows: int) -> dict:
    # Only validation needs what decoding an answer takes (contexts, gold answers): training skips them.
    names = feats.schema().names
    drop = ["split"] + ([c for c in ("context", "answers", "target_text") if c in names] if split == "train" else [])
    part = feats.map_batches(lambda t: t.filter(pc.equal(t["split"], split)).drop_columns(drop),
                             batch_format="pyarrow")
    part.write_parquet(str(out / split), min_rows_per_file=shard_rows, max_rows_per_file=shard_rows)
    files, docs = [], set()
    for path in sorted((out / split).glob("*.parquet")) if (out / split).is_dir() else []:
        n = pq.ParquetFile(path).metadata.num_rows
        if n:
            files.append({"path": f"{split}/{path.name}", "rows": n})
        else:
            path.unlink()
    tokens = 0
    key = "row_id" if "row_id" in feats.schema().names else "example_id"
    for f in files:  # a column or two of the split's shards, one file at a time
        t = pq.read_table(out / f["path"], columns=["input_ids", key])
        tokens += int(pc.sum(pc.list_value_length(t["input_ids"])).as_py() or 0)
        docs.update(t[key].to_pylist())
    return {"files": files, "rows": sum(f["rows"] for f in files), "docs": len(docs), "tokens_out": tokens,
            "dropped": 0}


def _pool_size(cfg: DataConfig) -> int:
    from raylm.cluster._connect import usable_cpus

    # One CPU left for the tasks around the pool (reading blocks, the ledger), else they wait on the actors.
    return cfg.tokenize_actors or max(1, min(4, usable_cpus() - 1))


def _fingerprint(cfg: DataConfig, task: str, tok_dir: str, files: dict[str, list[tuple[str, int]]]) -> str:
    keys = cfg.model_dump(mode="json", exclude={"tokenize_batch_size", "tokenize_actors", "shuffle_buffer_rows",
                                                "seed", "progress_seconds"})
    blob = json.dumps([keys, task, toks.fingerprint(tok_dir), files, SCHEMA_VERSION], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _manifest(cfg: DataConfig, task: str, tok_dir: str, fp: str, labels: list[str] | None, rows_in: int,
              rejected: dict[str, int], splits: dict) -> dict:
    tok = toks.load_tokenizer(tok_dir)
    kept = sum(s["docs"] for s in splits.values())
    if splits["train"]["rows"] == 0:
        raise UserError(f"no training rows in '{cfg.source}' ({rows_in} read, rejected: {rejected or 'none'})",
                        hint=f"see {cfg.prepared_dir}/rejects/ (raylm rejects CONFIG)")
    return {
        "schema_version": SCHEMA_VERSION, "task": task, "source": cfg.source,
        "tokenizer_dir": os.path.abspath(tok_dir), "tokenizer_fingerprint": toks.fingerprint(tok_dir),
        "inputs_fingerprint": fp, "vocab_size": len(tok), "pad_id": tok.pad_token_id or 0,
        "eos_id": tok.sep_token_id if tok.eos_token_id is None else tok.eos_token_id, "mask_id": tok.mask_token_id,
        "cls_id": tok.cls_token_id, "sep_id": tok.sep_token_id,
        # Features are at most max_length long (special tokens included); block_size is read as the same.
        "max_length": cfg.max_length, "block_size": cfg.max_length, "shard_rows": cfg.shard_rows,
        "labels": labels, "num_labels": len(labels) if labels else None,
        "qa": cfg.qa.model_dump() if task == "question-answering" else None,
        **(_seq2seq_manifest(cfg, tok_dir) if task == "seq2seq" else {}),
        # The ledger: every row read is kept (has features in a shard) or rejected under a reason.
        "rows_in": rows_in, "rows_kept": kept, "rows_rejected": sum(rejected.values()),
        "ledger_balanced": rows_in == kept + sum(rejected.values()), "rejected": rejected, "units": 0, "splits": splits,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
