"""The prepare template (`prepare_corpus`): corpus -> clean -> dedup -> tokenize -> pack -> Parquet shards +
manifest.json. `raylm.datasets.prepare` picks the flavour (LM blocks, NSP pairs) or a labelled task's prepare.

The corpus is cut into units (files, or byte ranges of big files; see `sources`). Ray Data
schedules the units over an actor pool (`ActorPoolStrategy`); each `UnitWorker` holds a fast
tokenizer and streams its unit: read -> clean -> dedup (sharded `DedupIndex` actors) ->
tokenize -> pack -> shards of exactly `data.shard_rows` rows (the unit's last one may be short),
written atomically. A finished unit leaves a marker in `_progress/` (its shards, checksums and
counts, and the hashes it claimed for dedup), so a rerun skips finished units and an
interrupted run continues where it stopped. Workers return one small stats row per unit:
neither the driver nor a worker holds the corpus.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raylm.cluster._connect import usable_cpus
from raylm.cluster.storage import is_remote
from raylm.datasets import _fs
from raylm.datasets import tokenizers as toks
from raylm.datasets.clean import DedupIndex, RejectsWriter, ShardedDedup, normalize, reject_reason, text_hashes
from raylm.datasets.config import DataConfig
from raylm.datasets.demo import build_demo_corpus
from raylm.datasets.manifest import COUNTS, SCHEMA_VERSION, SPLITS, build_manifest, up_to_date
from raylm.datasets.pack import pack_with_carry, sample_ids, splits_of
from raylm.datasets.progress import Progress
from raylm.datasets.sources import BadRowError, Unit, check_row, count_newlines, plan_units, read_unit
from raylm.datasets.tokenizer_training import ensure_tokenizer
from raylm.errors import UserError

log = logging.getLogger("raylm.datasets.prepare")
PROGRESS = "_progress"


def resolve_source(cfg: DataConfig) -> str:
    if cfg.source == "demo":

        return str(build_demo_corpus())
    return cfg.source


def atomic_write(table: pa.Table, path: str) -> str:
    """Write under a temporary name, then rename: a reader never sees half a shard. Returns sha256.
    The shard is built in memory (one shard: a few MB), hashed and written: not read back to hash."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue()
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def atomic_json(obj: Any, path: str) -> None:
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def label_id(value: str | None, labels: list[str] | None) -> int | None:
    """Label index: position in `data.labels`, or the integer itself; None when it is neither."""
    if labels:
        return labels.index(value) if value in labels else None
    try:
        n = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return n if n >= 0 else None


@dataclasses.dataclass(frozen=True)
class UnitTask:
    """What the units pipeline needs of a task: its name (the manifest's `task`) and whether rows carry
    a label (sequence classification: truncated to data.max_length, not packed into blocks)."""

    name: str
    labelled: bool = False


class SplitWriter:
    """One split of one unit: packs (or truncates) documents into shards of exactly `shard_rows`."""

    def __init__(self, out_dir: str, split: str, key: str, cfg: DataConfig, task: UnitTask, eos_id: int) -> None:
        self.out_dir, self.split, self.key, self.cfg, self.eos = out_dir, split, key, cfg, eos_id
        self.classify = task.labelled
        self.pending: list[Any] = []  # LM: arrays of blocks; classification: (ids, label) pairs
        self.pending_rows = 0
        self.carry = np.empty(0, np.int32)
        self.files: list[dict] = []
        self.counts = dict.fromkeys(COUNTS, 0)
        self.max_label = -1

    def add(self, ids: list[list[int]], texts: list[str], labels: list[int | None]) -> None:
        c = self.counts
        c["docs"] += len(ids)
        c["chars"] += sum(len(t) for t in texts)
        c["tokens_in"] += sum(len(x) for x in ids)
        if self.classify:
            for x, lab in zip(ids, labels):
                cut = x[: self.cfg.max_length]
                c["dropped"] += len(x) - len(cut)
                self.pending.append((cut, lab))
                self.max_label = max(self.max_label, lab or 0)
            self.pending_rows += len(ids)
        else:
            blocks, self.carry = pack_with_carry(self.carry, ids, self.eos, self.cfg.block_size)
            if len(blocks):
                self.pending.append(blocks)
                self.pending_rows += len(blocks)
        while self.pending_rows >= self.cfg.shard_rows:
            self._flush(self.cfg.shard_rows)

    def close(self) -> dict:
        if self.pending_rows:
            self._flush(self.pending_rows)
        self.counts["dropped"] += len(self.carry)  # the final partial block of this stream
        self.carry = np.empty(0, np.int32)
        return {"files": self.files, **self.counts}

    def _flush(self, n: int) -> None:
        name = f"{self.split}/{self.key}-{len(self.files):05d}.parquet"
        if self.classify:
            rows, self.pending = self.pending[:n], self.pending[n:]
            table = pa.table({
                "sample_id": pa.array(sample_ids(name, n), pa.int64()),
                "input_ids": pa.array([r[0] for r in rows], pa.list_(pa.int32())),
                "label": pa.array([r[1] for r in rows], pa.int64()),
            })
            tokens = sum(len(r[0]) for r in rows)
        else:
            allb = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
            blocks, rest = allb[:n], allb[n:]
            self.pending = [rest] if len(rest) else []
            table = pa.table({
                "sample_id": pa.array(sample_ids(name, n), pa.int64()),
                "input_ids": pa.FixedSizeListArray.from_arrays(pa.array(blocks.reshape(-1), pa.int32()),
                                                               self.cfg.block_size),
            })
            tokens = int(blocks.size)
        self.pending_rows -= n
        path = os.path.join(self.out_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        digest = atomic_write(table, path)
        self.files.append({"path": name, "rows": n, "sha256": digest})
        self.counts["rows"] += n
        self.counts["tokens_out"] += tokens


class UnitWorker:
    """Actor of the pool: holds the tokenizer; turns one unit into shards, rejects and a marker."""

    def __init__(self, cfg: DataConfig, tokenizer_dir: str, out_dir: str, task: UnitTask, dedup: list | None,
                 validation_files: list[str] | None = None, threads: int = 1) -> None:
        # The tokenizer's Rust pool would otherwise start a thread per core in every actor: N^2
        # threads on N cores with the default pool of one actor per CPU. Set before its first use.
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
        os.environ["RAYON_NUM_THREADS"] = str(threads)
        self.cfg, self.out_dir, self.task = cfg, out_dir, task
        self.validation_files = set(validation_files or [])
        self.backend, self.eos = toks.load_backend(tokenizer_dir)  # without tokenizer.json's padding/truncation
        # The dedup index: Ray actors, or one in-process index when the units are prepared in the driver.
        self.dedup = dedup[0] if dedup and isinstance(dedup[0], DedupIndex) else ShardedDedup(dedup) if dedup else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        stats = [self.process(Unit(**d)) for d in batch.column("unit").to_pylist()]
        return pa.Table.from_pylist(stats, schema=UNIT_STATS)

    def role(self, unit: Unit) -> str:
        """'validation' for a data.validation_source file, else 'train'."""
        return "validation" if unit.uri in self.validation_files else "train"

    def process(self, unit: Unit) -> dict:
        key, t0 = unit.key, time.time()
        role = self.role(unit)
        cfg = self.cfg.for_validation() if role == "validation" else self.cfg  # its own column names
        for old in glob.glob(os.path.join(self.out_dir, "*", f"{key}-*.parquet")):
            os.remove(old)  # an interrupted attempt's shards: this attempt rewrites them all
        rejects = RejectsWriter(os.path.join(self.out_dir, "rejects"), key)
        writers = self._writers(key)
        seen: set[int] = set()
        claimed: list[np.ndarray] = []
        rows_in, notes = 0, []
        for rows in _batched(read_unit(unit, cfg, notes), cfg.tokenize_batch_size):
            rows_in += len(rows)
            kept, hashes = self._clean(rows, seen, int(key, 16) >> 1, cfg)
            if cfg.dedup:
                claimed.append(hashes)
            rejects.add([r for r in rows if r["reject"]])
            self._tokenize(kept, hashes, writers)
        rejects.close()
        splits = {s: w.close() for s, w in writers.items()}
        marker = {"unit": unit.to_dict(), "role": role, "notes": notes, "rows_in": rows_in, "rejected": rejects.counts,
                  "max_label": max(w.max_label for w in writers.values()), "splits": splits}
        pdir = os.path.join(self.out_dir, PROGRESS)
        np.save(os.path.join(pdir, f"{key}.hashes.npy"), np.concatenate(claimed) if claimed else np.empty(0, np.int64))
        atomic_json(marker, os.path.join(pdir, f"{key}.json"))  # last: the unit counts as done from here
        return {"key": key, "bytes": _unit_bytes(unit), "rows_in": rows_in,
                "rows_kept": sum(s["docs"] for s in splits.values()),
                "tokens_out": sum(s["tokens_out"] for s in splits.values()), "seconds": time.time() - t0}

    def _writers(self, key: str) -> dict[str, Any]:
        return {s: SplitWriter(self.out_dir, s, key, self.cfg, self.task, self.eos) for s in SPLITS}

    def _clean(self, rows: list[dict], seen: set[int], owner: int, cfg: DataConfig) -> tuple[list[dict], np.ndarray]:
        """Normalise and filter in place (setting `reject`); returns kept rows and their text hashes
        (one blake2b per document: dedup's key and the train/validation split's)."""
        classify = self.task.labelled
        for r in rows:
            check_row(r, cfg)
            if r["reject"]:
                continue
            r["text"] = normalize(r["text"])
            r["reject"] = reject_reason(r["text"], cfg)
            if classify and not r["reject"]:
                r["label_id"] = label_id(r["label"], cfg.labels)
                if r["label_id"] is None:
                    r["reject"] = "bad_label"
                    check_row(r, cfg)
        live = [r for r in rows if not r["reject"]]
        hashes = text_hashes([r["text"] for r in live])
        if not cfg.dedup:
            return live, hashes
        ok = np.ones(len(live), dtype=bool)
        for i, h in enumerate(hashes.tolist()):  # duplicates inside this unit
            ok[i] = h not in seen
            seen.add(h)
        if self.dedup is not None and ok.any():
            ok[ok] = self.dedup.claim(hashes[ok], owner)  # and across the corpus
        for r, good in zip(live, ok):
            if not good:
                r["reject"] = "duplicate"
        return [r for r, good in zip(live, ok) if good], hashes[ok]

    def validation(self, kept: list[dict], hashes: np.ndarray) -> np.ndarray:
        """Which kept rows are validation: data.validation_source files are; else a hash of the
        (normalized) text decides: copies of a document share a split (no train/validation leak
        when dedup is off), and which copy dedup keeps - first come, first kept - cannot move it."""
        if self.validation_files:
            return np.array([r["source"] in self.validation_files for r in kept], dtype=bool)
        return splits_of(hashes, self.cfg.validation_fraction)

    def _tokenize(self, kept: list[dict], hashes: np.ndarray, writers: dict[str, SplitWriter]) -> None:
        if not kept:
            return
        texts = [r["text"] for r in kept]
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        ids = [e.ids for e in encode(texts, add_special_tokens=False)]
        val = self.validation(kept, hashes)
        by_split = {"train": np.flatnonzero(~val).tolist(), "validation": np.flatnonzero(val).tolist()}
        for s, idx in by_split.items():
            if idx:
                writers[s].add([ids[i] for i in idx], [texts[i] for i in idx], [kept[i].get("label_id") for i in idx])


UNIT_STATS = pa.schema([("key", pa.string()), ("bytes", pa.int64()), ("rows_in", pa.int64()),
                        ("rows_kept", pa.int64()), ("tokens_out", pa.int64()), ("seconds", pa.float64())])


def _unit_bytes(unit: Unit) -> int:
    if unit.nbytes >= 0:
        return unit.nbytes
    return (unit.end if unit.end >= 0 else unit.size) - unit.start


def _batched(rows: Iterator[dict], n: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for r in rows:
        batch.append(r)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------- driver


# Knobs that change how fast prepare runs or how training reads the shards, not what the shards
# hold: a change keeps the prepared shards.
_SPEED_KNOBS = {"tokenize_batch_size", "tokenize_actors", "prepare_in_driver_mb", "shuffle_buffer_rows", "seed", "dedup_shards",
                "unit_bytes", "progress_seconds", "group_by_length", "length_group_batches"}


def _fingerprint_inputs(cfg: DataConfig, task: UnitTask, tok_fp: str, files: list[tuple[str, int]]) -> str:
    keys = cfg.flat_dump(_SPEED_KNOBS)
    # The schema version too: a prepared dir (or an interrupted one) from another layout is redone.
    return hashlib.sha256(json.dumps([keys, task.name, tok_fp, files, SCHEMA_VERSION], sort_keys=True).encode()).hexdigest()[:16]


def _start_fresh_if_changed(out: Path, inputs_fp: str, force: bool) -> None:
    """Finished units are only reusable with the same inputs; otherwise start from nothing."""
    state = out / PROGRESS / "inputs.json"
    same = state.is_file() and json.loads(state.read_text()).get("inputs_fingerprint") == inputs_fp
    if force or not same:
        for sub in (*SPLITS, "rejects", PROGRESS):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / "manifest.json").unlink(missing_ok=True)
    (out / PROGRESS).mkdir(parents=True, exist_ok=True)
    atomic_json({"inputs_fingerprint": inputs_fp}, str(state))


def prepare_corpus(cfg: DataConfig, task_name: str, force: bool = False, *,
                   tokenizer: Callable[[DataConfig, str], str] | None = None, fingerprint_extra: str = "",
                   worker: type[UnitWorker] | None = None, check_markers: Callable[[list[dict]], None] | None = None,
                   manifest_extra: Callable[[list[dict]], dict] | None = None, needs: tuple[str, ...] = (),
                   labelled: bool = False) -> dict:
    """The prepare template (Ray must be initialised; idempotent and resumable, see the module doc): the
    corpus's units through `worker` (packed LM blocks by default) on the actor pool, then the manifest.

    A flavour of corpus prepare (NSP's sentence pairs) brings its hooks: `tokenizer(cfg, source)` (default:
    a BPE through ensure_tokenizer, holding the special tokens in `needs`), `fingerprint_extra` (what else
    its shards depend on), `worker`, `check_markers` (before the manifest: a clearer error than "no rows")
    and `manifest_extra`. `labelled`: rows carry a label (data.label_field) and are truncated, not packed.
    """
    task = UnitTask(task_name, labelled)
    source = resolve_source(cfg)
    files = _fs.list_files(source) + (_fs.list_files(cfg.validation_source) if cfg.validation_source else [])
    tok_dir = tokenizer(cfg, source) if tokenizer else ensure_tokenizer(cfg, source, needs)
    tok_fp = toks.fingerprint(tok_dir)
    inputs_fp = _fingerprint_inputs(cfg, task, tok_fp + fingerprint_extra, files)
    out = Path(cfg.prepared_dir)
    mpath = out / "manifest.json"
    if (done := up_to_date(out, inputs_fp, force)) is not None:
        log.info("prepare: %s is up to date", out)
        return done
    _start_fresh_if_changed(out, inputs_fp, force)
    t0 = time.time()
    units = plan_units(cfg, source, count=_count_on_ray)
    if cfg.validation_source:
        units = sorted(set(units) | set(plan_units(cfg, cfg.validation_source, count=_count_on_ray)),
                       key=lambda u: (u.uri, u.start))
    done = {u.key for u in units if (out / PROGRESS / f"{u.key}.json").is_file()}
    todo = sorted((u for u in units if u.key not in done), key=_unit_bytes, reverse=True)  # big first: balance
    if done:
        log.info("prepare: resuming, %d of %d units already done", len(done), len(units))
    here = in_driver(cfg, todo)
    dedup = _start_dedup(cfg, out, done, here)
    try:
        if todo:
            _run_units(cfg, task, tok_dir, out, todo, dedup, sum(_unit_bytes(u) for u in units),
                       _validation_files(cfg), worker=worker or UnitWorker, here=here)
    finally:
        stop_dedup(dedup)
    markers = [json.loads((out / PROGRESS / f"{u.key}.json").read_text()) for u in units]
    _remove_orphans(out, markers)
    if check_markers:
        check_markers(markers)
    manifest = build_manifest(cfg, task, tok_dir, tok_fp, inputs_fp, markers)
    manifest |= manifest_extra(markers) if manifest_extra else {}
    manifest["seconds"] = round(time.time() - t0, 2)
    atomic_json(manifest, str(mpath))
    return manifest


def _count_on_ray(segments: list[tuple[str, int, int]]) -> list[int]:
    import ray


    task = ray.remote(count_newlines).options(runtime_env=_runtime_env())
    return ray.get([task.remote(*s) for s in segments])


def _runtime_env() -> dict | None:
    env = _fs.worker_env()
    return {"env_vars": env} if env else None


def in_driver(cfg: DataConfig, todo: list[Unit]) -> bool:
    """Whether the units are few enough bytes, and local, to be prepared in this process: starting the
    actor pool (a Ray Data execution, an actor per CPU, a tokenizer in each) costs ~5 s on a small
    machine, longer than tokenizing a few MB here. The shards, markers and rejects are the same."""

    return (bool(todo) and sum(_unit_bytes(u) for u in todo) <= cfg.prepare_in_driver_mb * 2**20
            and not any(is_remote(u.uri) for u in todo))


def stop_dedup(dedup: list | None) -> None:
    import ray

    for actor in dedup or []:
        if not isinstance(actor, DedupIndex):
            ray.kill(actor)


def _start_dedup(cfg: DataConfig, out: Path, done: set[str], here: bool = False) -> list | None:
    import ray

    if not cfg.dedup:
        return None
    paths = [str(out / PROGRESS / f"{k}.hashes.npy") for k in sorted(done)]
    if here:  # one index in this process
        index = DedupIndex(0, 1)
        index.load(paths)
        return [index]
    actors = [ray.remote(DedupIndex).options(num_cpus=0).remote(i, cfg.dedup_shards) for i in range(cfg.dedup_shards)]
    if paths:  # the claims of units finished before (a fresh run does not wait for the actors to start:
        ray.get([a.load.remote(paths) for a in actors])  # their first claim queues until they have)
    return actors


def _run_units(cfg: DataConfig, task: UnitTask, tok_dir: str, out: Path, todo: list[Unit], dedup: list | None,
               total_bytes: int, validation_files: list[str] | None, worker: type = UnitWorker,
               here: bool = False) -> None:
    import ray


    if here:
        return _run_units_here(cfg, task, tok_dir, out, todo, dedup, total_bytes, validation_files, worker)
    items = [{"unit": u.to_dict()} for u in todo]
    actors = max(1, min(_pool_size(cfg), len(todo)))
    threads = max(1, usable_cpus() // actors)  # tokenizer threads per actor
    stats = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        worker,
        fn_constructor_args=(cfg, tok_dir, str(out), task, dedup, validation_files, threads),
        batch_format="pyarrow",
        batch_size=1,
        # One unit running and one queued per actor: with one, each actor idled 0.1-0.4 s between units
        # waiting for the next dispatch (2 cores, 100 MB: 8 units, ~0.5 s of 19). The queue holds at most one
        # unit, and units go biggest first, so the one that can wait behind a long unit is among the smallest.
        compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=2),
        runtime_env=_runtime_env(),
    )
    progress = Progress(total_bytes, total_bytes - sum(_unit_bytes(u) for u in todo), len(todo), cfg.progress_seconds)
    try:
        for row in stats.iter_rows():
            progress.update(row)
    except Exception as err:  # a BadRowError raised in a worker arrives wrapped
        bad = find_bad_row(err)
        if bad:
            raise _bad_row_error(bad) from None
        raise
    progress.finish()


def _run_units_here(cfg: DataConfig, task: UnitTask, tok_dir: str, out: Path, todo: list[Unit], dedup: list | None,
                    total_bytes: int, validation_files: list[str] | None, worker: type) -> None:
    """The units one after another in this process, by the pool's own worker class (see `in_driver`)."""

    progress = Progress(total_bytes, total_bytes - sum(_unit_bytes(u) for u in todo), len(todo), cfg.progress_seconds)
    saved = {k: os.environ.get(k) for k in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")}
    try:  # the worker sets the tokenizer's thread pool in the environment: all of this machine's cores
        w = worker(cfg, tok_dir, str(out), task, dedup, validation_files, os.cpu_count() or 1)
        for u in todo:
            progress.update(w.process(u))
    except BadRowError as err:
        raise _bad_row_error(str(err)) from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    progress.finish()


def _validation_files(cfg: DataConfig) -> list[str] | None:
    if not cfg.validation_source:
        return None
    return [uri for uri, _ in _fs.list_files(cfg.validation_source)]


def _pool_size(cfg: DataConfig) -> int:
    return cfg.tokenize_actors or usable_cpus()


def _bad_row_error(bad: str) -> UserError:
    return UserError(f"{bad} (data.on_error=fail)", hint="fix the file or set data.on_error=skip")


def find_bad_row(err: BaseException | None) -> str | None:
    for _ in range(10):
        if err is None:
            return None
        if isinstance(err, BadRowError):
            return str(err)
        lines = [line for line in str(err).splitlines() if "BadRowError:" in line]
        if lines:
            return lines[-1].split("BadRowError:", 1)[-1].strip()
        err = err.__cause__ or getattr(err, "cause", None)
    return None


def _remove_orphans(out: Path, markers: list[dict]) -> None:
    """Shards and ledgers no finished unit lists: leftovers of changed files or crashed attempts."""
    keep = {f["path"] for m in markers for s in m["splits"].values() for f in s["files"]}
    keys = {Unit(**m["unit"]).key for m in markers}
    for split in SPLITS:
        for path in glob.glob(str(out / split / "*")):
            if os.path.relpath(path, out) not in keep:
                os.remove(path)
    for path in glob.glob(str(out / "rejects" / "*")):
        if not path.endswith(".parquet") or os.path.basename(path)[len("rejects-"):-len(".parquet")] not in keys:
            os.remove(path)


