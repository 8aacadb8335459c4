"""`raylm prepare` for tasks that read labelled files (NER, QA, seq2seq): labelled files -> Ray Data ->
features on an actor pool -> Parquet shards + manifest.json. Every row read is either kept or rejected
under a reason (the rejects ledger); under `data.on_error: fail` the first bad row stops the run with
`file:line: what` (exit 2). What is the task's (its readers, row and feature layout, features, labels,
tokenizer) comes in a `LabelledFormat` (raylm.tasks.conll, squad, seq2seq_data hold the built-in ones).

    files --(read, one task per file)--> rows {task fields, source, row_id, reject, split}
          --> stats: rejects by reason, tag set --> labels (data.labels, or the tags in the data)
          --> rejects/*.parquet                      (row_id, source, reason, text)
          --> map_batches(Featurizer, actor pool)    one row per window (variable length)
          --> train/*.parquet, validation/*.parquet + manifest.json

Shards hold sub-token ids WITH the tokenizer's special tokens (the windows are cut around them) and
no padding: the trainer pads per batch. The same `features` serve `raylm predict` and `raylm eval
--input` (raylm.tasks.downstream_files), so training and inference see one layout.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raylm.cluster._connect import usable_cpus
from raylm.datasets import _fs
from raylm.datasets import tokenizers as toks
from raylm.datasets._task_io import plain_tokenizer
from raylm.datasets.config import DataConfig
from raylm.datasets.manifest import up_to_date
from raylm.datasets.pack import sample_id, split_of
from raylm.datasets.sources import BadRowError
from raylm.datasets.units import find_bad_row
from raylm.errors import UserError

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
SPLITS = ("train", "validation")
BASE_FIELDS = [("source", pa.string()), ("row_id", pa.string()), ("reject", pa.string()), ("split", pa.string())]
IDS = pa.list_(pa.int32())


class LabelledFormat:
    """What a task reading labelled files brings to the pipeline. Defaults are the simple case: files as
    listed, no label set, a WordPiece tokenizer trained on `row_text`. Instances travel to Ray workers
    (pickled): keep what they hold to settings (sft's `packed`), no loaded state."""

    name = ""  # the task's, in the manifest
    fields: list[tuple[str, pa.DataType]] = []  # of a row, besides BASE_FIELDS
    feature_schema: pa.Schema
    row_key = "row_id"  # what features are grouped by (QA: example_id)
    eval_only_columns: tuple[str, ...] = ()  # kept in validation shards only (what decoding needs)

    @property
    def row_schema(self) -> pa.Schema:
        return pa.schema(BASE_FIELDS + self.fields)

    def files(self, listed: list[tuple[str, int]], cfg: DataConfig) -> tuple[list[str], list[tuple[str, int]]]:
        """(files to read, what goes into the fingerprint): the listed ones by default."""
        return [u for u, _ in listed], listed

    def read_rows(self, path: str, cfg: DataConfig, on_error: str) -> Iterator[dict]:
        raise NotImplementedError

    def row_text(self, row: dict) -> str:
        """The text of a row: what decides its split, trains a tokenizer and goes into the ledger."""
        raise NotImplementedError

    def sample_texts(self, rows: Iterator[dict], limit: int) -> Iterator[str]:
        """Texts a tokenizer is trained on, from the first rows."""
        return (self.row_text(r) for r in itertools.islice(rows, limit))

    def train_tokenizer(self, texts: Iterator[str], out_dir: str, vocab_size: int, min_frequency: int) -> None:
        toks.train_wordpiece(texts, out_dir, vocab_size, min_frequency)

    def check_rows(self, rows: Any, cfg: DataConfig) -> Any:
        """The read rows (a Ray Dataset) with task-level rejects marked (e.g. an unknown tag)."""
        return rows

    def labels(self, cfg: DataConfig, tags: set[str]) -> list[str] | None:
        """Label names in id order (None: the task has no label set)."""
        return None

    def featurizer_state(self, tokenizer_dir: str) -> Any:
        """What `features` needs besides the tokenizer, built once per actor (e.g. special ids)."""
        return None

    def features(self, tok: Any, row: dict, cfg: DataConfig, label2id: dict[str, int], state: Any) -> list[dict]:
        """The windows of one kept row."""
        raise NotImplementedError

    def manifest_extra(self, cfg: DataConfig, tok_dir: str) -> dict:
        return {}

    def manifest_summary(self, manifest: dict) -> dict:
        """Keys added to the finished manifest from its counts (e.g. sft's trained-token share per split)."""
        return {}

    def pack(self, feats: Any, cfg: DataConfig) -> Any:
        """The features (a Ray Dataset) as the shards hold them: one row per feature by default; a task may
        pack several into one row (sft's data.sft.packing)."""
        return feats

    def shard_columns(self) -> list[str]:
        """What `shard_stats` reads of each written shard."""
        return ["input_ids", self.row_key]

    def shard_stats(self, table: pa.Table) -> dict[str, Any]:
        """Counts over one written shard, summed into the manifest's split entry: tokens and the rows' keys."""
        return {"tokens_out": int(pc.sum(pc.list_value_length(table["input_ids"])).as_py() or 0),
                "docs": set(table[self.row_key].to_pylist())}


# Reject reasons that mean a line could not be read at all (not a row whose content is unusable): `raylm eval
# --input` refuses the file on the first (exit 2, file:line) instead of scoring what is left.
MALFORMED = frozenset({"malformed_json", "malformed_csv", "wrong_columns", "missing_field", "missing_column",
                       "missing_text", "wrong_format"})


def refuse_malformed(rows: list[dict], hint: str) -> list[dict]:
    """`rows`, unless one could not be read: then a UserError naming its file:line (exit 2)."""
    bad = next((r for r in rows if r.get("reject") in MALFORMED), None)
    if bad is not None:
        raise UserError(f"{bad['row_id']}: {bad['reject'].replace('_', ' ')}", hint=hint)
    return rows


def read_rows(path: str, fmt: LabelledFormat, cfg: DataConfig, on_error: str | None = None) -> Iterator[dict]:
    """Rows of one labelled file (`file:line` row ids), read by the task's reader."""
    return fmt.read_rows(path, cfg, on_error or cfg.on_error)


def _read_file(batch: pa.Table, fmt: LabelledFormat, cfg: DataConfig) -> pa.Table:
    rows = []
    for path, split in zip(batch.column("path").to_pylist(), batch.column("split").to_pylist()):
        for r in read_rows(path, fmt, cfg):
            r["split"] = split or split_of(fmt.row_text(r), cfg.validation_fraction)
            rows.append(r)
    return pa.Table.from_pylist(rows, schema=fmt.row_schema)


# ---------------------------------------------------------------- features


class Featurizer:
    """Actor of the tokenize pool: holds a plain (no truncation, no padding) fast tokenizer."""

    def __init__(self, fmt: LabelledFormat, cfg: DataConfig, tokenizer_dir: str, label2id: dict[str, int]) -> None:
        from tokenizers import Tokenizer


        self.fmt, self.cfg, self.label2id = fmt, cfg, label2id
        self.tok = plain_tokenizer(Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json")))
        self.state = fmt.featurizer_state(tokenizer_dir)
        self.with_row_id = "row_id" in fmt.feature_schema.names

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for row in batch.to_pylist():
            if row["reject"]:  # in the ledger already
                continue
            try:
                feats = self.fmt.features(self.tok, row, self.cfg, self.label2id, self.state)
            except ValueError as err:  # a doc stride that leaves no room: a config problem, said once
                raise UserError(f"{row['row_id']}: {err}", hint="raise data.max_length or lower data.qa.doc_stride") from None
            for w, f in enumerate(feats):
                out.append({"sample_id": sample_id(row["row_id"], w), "split": row["split"],
                            **({"row_id": row["row_id"]} if self.with_row_id else {}), **f})
        return pa.Table.from_pylist(out, schema=self.fmt.feature_schema)


# ---------------------------------------------------------------- tokenizer


def task_tokenizer(cfg: DataConfig, fmt: LabelledFormat, files: list[str] | None = None) -> str:
    """data.tokenizer.path, the one trained for this data before, or the format's tokenizer trained on a
    sample of the training rows (the first `data.tokenizer.sample_docs`, streamed by the driver, no Ray)."""
    if cfg.tokenizer.path:
        return cfg.tokenizer.path
    tok_dir = toks.resolve_tokenizer_dir(cfg.prepared_dir, None)
    if not Path(tok_dir, "tokenizer.json").is_file():
        if files is None:
            files, _ = fmt.files(_fs.list_files(cfg.source), cfg)
        rows = (r for f in files for r in _fail_as_user_error(read_rows(f, fmt, cfg)) if not r["reject"])
        texts = fmt.sample_texts(rows, cfg.tokenizer.sample_docs)
        first = next(texts, None)
        if first is None:
            raise UserError(f"no readable row in {cfg.source} to train a tokenizer on", hint="check data.source")
        os.makedirs(os.path.dirname(os.path.abspath(tok_dir)), exist_ok=True)
        fmt.train_tokenizer(itertools.chain([first], texts), tok_dir, cfg.tokenizer.vocab_size,
                            cfg.tokenizer.min_frequency)
    return tok_dir


def _fail_as_user_error(rows: Iterator[dict]) -> Iterator[dict]:
    try:
        yield from rows
    except BadRowError as err:
        raise UserError(f"{err} (data.on_error=fail)", hint="fix the file or set data.on_error=skip") from None


# ---------------------------------------------------------------- driver


def prepare_labelled(cfg: DataConfig, fmt: LabelledFormat, force: bool = False) -> dict:
    """Prepare the shards of a task reading labelled files (Ray must be initialised); a no-op when up to date."""
    import ray

    listed = {"train": _fs.list_files(cfg.source),
              "validation": _fs.list_files(cfg.validation_source) if cfg.validation_source else []}
    files: dict[str, list[str]] = {}
    for s in SPLITS:  # seq2seq's parallel text: one read per source file, its partner in the fingerprint
        files[s], listed[s] = fmt.files(listed[s], cfg) if listed[s] else ([], [])
    tok_dir = task_tokenizer(cfg, fmt, files["train"])
    fp = _fingerprint(cfg, fmt.name, tok_dir, listed)
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
        functools.partial(_read_file, fmt=fmt, cfg=cfg), batch_size=1, batch_format="pyarrow").materialize())
    checked = fmt.check_rows(rows, cfg)
    if checked is not rows:
        rows = _consume(lambda: checked.materialize())
    stats = rows.map_batches(_stats, batch_format="pyarrow").take_all()  # one small row per reason / tag
    labels = fmt.labels(cfg, {r["value"] for r in stats if r["kind"] == "tag"})
    rejected = _write_rejects(rows, out / "rejects", stats, fmt)
    feats = _consume(lambda: rows.map_batches(
        Featurizer, fn_constructor_args=(fmt, cfg, tok_dir, {t: i for i, t in enumerate(labels or [])}),
        batch_format="pyarrow", batch_size=cfg.tokenize_batch_size,
        compute=ray.data.ActorPoolStrategy(size=pool_size(cfg)),
    ).materialize())
    feats = fmt.pack(feats, cfg)
    splits = {s: _write_split(feats, s, out, cfg.shard_rows, fmt) for s in SPLITS}
    rows_in = sum(r["count"] for r in stats if r["kind"] == "reason")
    manifest = _manifest(cfg, fmt, tok_dir, fp, labels, rows_in, rejected, splits)
    manifest |= fmt.manifest_summary(manifest)
    manifest["seconds"] = round(time.time() - t0, 2)
    tmp = f"{mpath}.tmp"
    Path(tmp).write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, mpath)
    return manifest


def _consume(run: Callable[[], Any]) -> Any:
    """Run a Ray Data step; a BadRowError raised in a worker (on_error=fail) becomes a UserError."""

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


def _write_rejects(rows: Any, rdir: Path, stats: list[dict], fmt: LabelledFormat) -> dict[str, int]:
    """rejects/*.parquet (row_id, source, reason, text) and the count per reason."""
    def ledger(batch: pa.Table) -> pa.Table:
        bad = [r for r in batch.to_pylist() if r["reject"]]
        return pa.Table.from_pylist([{"row_id": r["row_id"], "source": r["source"], "reason": r["reject"],
                                      "text": fmt.row_text(r)[:2000]} for r in bad], schema=_LEDGER)

    counts: dict[str, int] = {}
    for r in stats:
        if r["kind"] == "reason" and r["value"]:
            counts[r["value"]] = counts.get(r["value"], 0) + r["count"]
    if counts:
        rows.map_batches(ledger, batch_format="pyarrow").repartition(1).write_parquet(str(rdir))
    return dict(sorted(counts.items()))


_LEDGER = pa.schema([("row_id", pa.string()), ("source", pa.string()), ("reason", pa.string()), ("text", pa.string())])


def _write_split(feats: Any, split: str, out: Path, shard_rows: int, fmt: LabelledFormat) -> dict:
    # Only validation needs what decoding an answer takes (contexts, gold answers): training skips them.
    drop = ["split"] + (list(fmt.eval_only_columns) if split == "train" else [])
    part = feats.map_batches(lambda t: t.filter(pc.equal(t["split"], split)).drop_columns(drop),
                             batch_format="pyarrow")
    part.write_parquet(str(out / split), min_rows_per_file=shard_rows, max_rows_per_file=shard_rows)
    files = []
    for path in sorted((out / split).glob("*.parquet")) if (out / split).is_dir() else []:
        n = pq.ParquetFile(path).metadata.num_rows
        if n:
            files.append({"path": f"{split}/{path.name}", "rows": n})
        else:
            path.unlink()
    totals: dict[str, Any] = {"tokens_out": 0, "docs": set()}
    for f in files:  # a column or two of the split's shards, one file at a time
        for k, v in fmt.shard_stats(pq.read_table(out / f["path"], columns=fmt.shard_columns())).items():
            totals[k] = totals[k] | v if isinstance(v, set) else totals.get(k, 0) + v
    totals["docs"] = len(totals["docs"])
    return {"files": files, "rows": sum(f["rows"] for f in files), **totals, "dropped": 0}


def pool_size(cfg: DataConfig) -> int:
    # One CPU left for the tasks around the pool (reading blocks, the ledger), else they wait on the actors.
    return cfg.tokenize_actors or max(1, min(4, usable_cpus() - 1))


def _fingerprint(cfg: DataConfig, task: str, tok_dir: str, files: dict[str, list[tuple[str, int]]]) -> str:
    keys = cfg.flat_dump({"tokenize_batch_size", "tokenize_actors", "shuffle_buffer_rows", "seed", "progress_seconds"})
    blob = json.dumps([keys, task, toks.fingerprint(tok_dir), files, SCHEMA_VERSION], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _manifest(cfg: DataConfig, fmt: LabelledFormat, tok_dir: str, fp: str, labels: list[str] | None, rows_in: int,
              rejected: dict[str, int], splits: dict) -> dict:
    tok = toks.load_tokenizer(tok_dir)
    kept = sum(s["docs"] for s in splits.values())
    if splits["train"]["rows"] == 0:
        raise UserError(f"no training rows in '{cfg.source}' ({rows_in} read, rejected: {rejected or 'none'})",
                        hint=f"see {cfg.prepared_dir}/rejects/ (raylm rejects CONFIG)")
    return {
        "schema_version": SCHEMA_VERSION, "task": fmt.name, "source": cfg.source,
        "tokenizer_dir": os.path.abspath(tok_dir), "tokenizer_fingerprint": toks.fingerprint(tok_dir),
        "inputs_fingerprint": fp, "vocab_size": len(tok), "pad_id": tok.pad_token_id or 0,
        "eos_id": tok.sep_token_id if tok.eos_token_id is None else tok.eos_token_id, "mask_id": tok.mask_token_id,
        "cls_id": tok.cls_token_id, "sep_id": tok.sep_token_id,
        # Features are at most max_length long (special tokens included); block_size is read as the same.
        "max_length": cfg.max_length, "block_size": cfg.max_length, "shard_rows": cfg.shard_rows,
        "labels": labels, "num_labels": len(labels) if labels else None, "qa": None,
        **fmt.manifest_extra(cfg, tok_dir),
        # The ledger: every row read is kept (has features in a shard) or rejected under a reason.
        "rows_in": rows_in, "rows_kept": kept, "rows_rejected": sum(rejected.values()),
        "ledger_balanced": rows_in == kept + sum(rejected.values()), "rejected": rejected, "units": 0, "splits": splits,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
