"""Per-stage CPU of one `UnitWorker` over one JSONL unit, in this process, without Ray.

Where does `prepare`'s CPU go besides the tokenizer? The worker runs under cProfile (one thread
for the tokenizer, TOKENIZERS_PARALLELISM=false, as inside the actor pool), the profile is cut
into stages by the functions that own them, and the same unit is run again unprofiled for its
CPU seconds per MB (cProfile inflates Python-heavy stages, not the Rust tokenizer). Dedup across
the corpus uses a local `DedupIndex` in place of the actors.

    RAYLM_SHARED=/work/shared python benchmarks/profile_prepare_unit.py --mb 20
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ["TOKENIZERS_PARALLELISM"] = "false"  # as in prepare's actors: one actor per core

from _corpus import build_corpus  # noqa: E402

WORK = Path(os.environ.get("RAYLM_BENCH_DIR", "/tmp/raylm-bench"))
# Stage -> functions (file suffix, name) whose cumulative time is the stage's; `minus` is nested
# inside and counted by its own stage. Names of the code before and after issue 15 both appear.
STAGES = {
    "read + parse": [("sources.py", "read_unit"), ("sources.py", "read_jsonl_batches"),
                     ("sources.py", "read_batches")],
    "normalise + filter": [("clean.py", "normalize"), ("clean.py", "normalize_many"), ("clean.py", "reject_reason"),
                           ("clean.py", "reject_reasons"), ("sources.py", "check_row"), ("prepare.py", "label_id")],
    "hash (dedup + split)": [("clean.py", "text_hash"), ("clean.py", "text_hashes"), ("pack.py", "split_of"),
                             ("pack.py", "splits_of")],
    "dedup claim": [("clean.py", "claim")],
    "tokenize": [("~", "<method 'encode_batch_fast' of 'tokenizers.Tokenizer' objects>"),
                 ("~", "<method 'encode_batch' of 'tokenizers.Tokenizer' objects>")],
    "pack": [("pack.py", "pack_with_carry"), ("pack.py", "pack_encodings")],
    "sample ids": [("pack.py", "sample_id"), ("pack.py", "sample_ids")],
    "write shards + sha256": [("prepare.py", "_atomic_write")],
    "rejects ledger": [("clean.py", "add"), ("clean.py", "close")],
}


class LocalDedup:
    """`ShardedDedup` without actors: one in-process `DedupIndex`."""

    def __init__(self) -> None:
        from raylm.datasets.clean import DedupIndex

        self.index = DedupIndex()

    def claim(self, hashes, owner: int):
        return self.index.claim(hashes, owner)


def make_worker(tok_dir: str, out: Path, cfg):
    from raylm.datasets.prepare import PROGRESS, UnitWorker
    from raylm.datasets.units import UnitTask

    shutil.rmtree(out, ignore_errors=True)
    (out / PROGRESS).mkdir(parents=True)
    worker = UnitWorker(cfg, tok_dir, str(out), UnitTask("causal-lm"), None)
    worker.dedup = LocalDedup()
    return worker


def stage_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds per stage, by the functions listed in STAGES."""
    cum: dict[tuple[str, str], float] = {}
    for (file, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        key = ("~" if file == "~" else os.path.basename(file), name)
        cum[key] = cum.get(key, 0.0) + ct
    out = {stage: sum(cum.get(f, 0.0) for f in funcs) for stage, funcs in STAGES.items()}
    # Nested stages: the rejects ledger and filters are called from reading's loop in neither
    # version; hashing and the dedup claim are not inside normalise + filter. Nothing to subtract.
    return out


# The same stages timed without cProfile (whose per-call cost inflates Python-heavy stages):
# the functions the worker calls are wrapped, in the namespace it calls them from.
TIMED = {
    "read + parse": ["read_unit"], "normalise + filter": ["normalize", "reject_reason", "check_row", "label_id"],
    "hash (dedup + split)": ["text_hash", "text_hashes", "split_of", "splits_of"],
    "pack": ["pack_with_carry"], "sample ids": ["sample_id", "sample_ids"], "write shards + sha256": ["_atomic_write"],
}


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, stage: str, fn):
        def timed(*args, **kwargs):
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.process_time() - t0

        return timed

    def wrap_iter(self, stage: str, fn):
        def timed(*args, **kwargs):
            it = iter(fn(*args, **kwargs))
            while True:
                t0 = time.process_time()
                try:
                    item = next(it)
                except StopIteration:
                    return
                finally:
                    self.seconds[stage] = self.seconds.get(stage, 0.0) + time.process_time() - t0
                yield item

        return timed


class _TimedBackend:
    def __init__(self, backend, clock: _Clock) -> None:
        self.encode_batch_fast = self.encode_batch = clock.wrap("tokenize", backend.encode_batch_fast)


def timed_stages(tok_dir: str, out: Path, cfg, unit) -> dict[str, float]:
    """CPU seconds per stage of one unprofiled run (the wrappers cost ~1 us a call)."""
    import raylm.datasets.prepare as prep

    clock, saved = _Clock(), {}
    for stage, names in TIMED.items():
        for name in names:
            if hasattr(prep, name):
                saved[name] = getattr(prep, name)
                wrap = clock.wrap_iter if name == "read_unit" else clock.wrap
                setattr(prep, name, wrap(stage, saved[name]))
    try:
        worker = make_worker(tok_dir, out, cfg)
        worker.backend = _TimedBackend(worker.backend, clock)
        worker.dedup.claim = clock.wrap("dedup claim", worker.dedup.claim)
        rejects = prep.RejectsWriter.add, prep.RejectsWriter.close
        prep.RejectsWriter.add, prep.RejectsWriter.close = (clock.wrap("rejects ledger", f) for f in rejects)
        c0 = time.process_time()
        worker.process(unit)
        total = time.process_time() - c0
    finally:
        for name, fn in saved.items():
            setattr(prep, name, fn)
        prep.RejectsWriter.add, prep.RejectsWriter.close = rejects
    out_s = dict(clock.seconds)
    out_s["other (Python glue)"] = total - sum(out_s.values())
    out_s["total"] = total
    return out_s


def run(tok_dir: str, corpus_file: Path, mb: int) -> dict:
    from raylm.datasets.config import DataConfig
    from raylm.datasets.sources import Unit

    cfg = DataConfig(source=str(corpus_file), prepared_dir=str(WORK / "profile-out"), block_size=64,
                     tokenizer={"path": tok_dir}, tokenize_batch_size=1024)
    unit = Unit(str(corpus_file), "jsonl", corpus_file.stat().st_size)
    out = WORK / "profile-out"
    worker = make_worker(tok_dir, out, cfg)
    c0 = time.process_time()
    plain = worker.process(unit)
    cpu = time.process_time() - c0
    worker = make_worker(tok_dir, out, cfg)
    prof = cProfile.Profile(time.process_time)  # CPU, not wall: the machine is shared
    prof.enable()
    worker.process(unit)
    prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt  # type: ignore[attr-defined]
    stages = stage_seconds(stats)
    stages["other (Python glue)"] = max(0.0, total - sum(stages.values()))
    if os.environ.get("PROFILE_TOP"):
        stats.sort_stats("tottime").print_stats(int(os.environ["PROFILE_TOP"]))
    timed = timed_stages(tok_dir, out, cfg, unit)
    return {"mb": mb, "cpu_seconds_unprofiled": round(cpu, 2),
            "timed_s": {k: round(v, 3) for k, v in timed.items()},
            "timed_pct": {k: round(100 * v / timed["total"], 1) for k, v in timed.items()}, "cpu_s_per_mb": round(cpu / mb, 3),
            "tokens_out": plain["tokens_out"], "rows_in": plain["rows_in"],
            "profiled_seconds": round(total, 2),
            "stages_pct": {k: round(100 * v / total, 1) for k, v in stages.items()},
            "stages_s": {k: round(v, 2) for k, v in stages.items()}, "loadavg": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=20)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    corpus = build_corpus(WORK / f"corpus-{args.mb}mb-1file", args.mb << 20, files=1)
    from bench_prepare import train_tokenizer

    tok_dir = train_tokenizer(corpus)
    res = run(tok_dir, corpus / "part-000.jsonl", args.mb)
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
