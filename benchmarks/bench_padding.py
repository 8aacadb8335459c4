"""Padding on SST-2 (train.tsv): length-bucketed batches against padding to the longest example.

Sentences are read, cleaned and tokenized by raylm's own pieces (sources, clean, a byte-level BPE
trained on the sentences), truncated to max_length, then batched three ways; the padding
fraction is padding tokens / all tokens of the padded batches. Target: bucketed <= 15%.

    python benchmarks/bench_padding.py [--batch-size 32] [--pool-batches 50]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from raylm.datasets.bucketing import bucket_batches, padding_fraction  # noqa: E402
from raylm.datasets.clean import normalize  # noqa: E402
from raylm.datasets.config import DataConfig  # noqa: E402
from raylm.datasets.sources import plan_units, read_unit  # noqa: E402
from raylm.datasets.tokenizers import load_backend, train_bpe  # noqa: E402

from _corpus import SST2  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--pool-batches", type=int, default=50)
    ap.add_argument("--max-length", type=int, default=128)
    args = ap.parse_args()
    cfg = DataConfig(source=str(SST2), text_field="sentence", label_field="label", max_length=args.max_length)
    texts = [normalize(r["text"]) for u in plan_units(cfg, cfg.source) for r in read_unit(u, cfg) if not r["reject"]]
    with tempfile.TemporaryDirectory() as tmp:
        train_bpe(texts, Path(tmp) / "tok", vocab_size=4096)
        tok, _ = load_backend(Path(tmp) / "tok")
    ids = [e.ids[: args.max_length] for e in tok.encode_batch(texts, add_special_tokens=False)]
    bs = args.batch_size
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    random_batches = [shuffled[i: i + bs] for i in range(0, len(shuffled), bs)]
    t0 = time.perf_counter()
    bucketed = list(bucket_batches(shuffled, bs, pool_batches=args.pool_batches, seed=0))
    seconds = time.perf_counter() - t0
    longest = max(map(len, ids))
    result = {
        "dataset": str(SST2), "examples": len(ids), "batch_size": bs, "max_length": args.max_length,
        "mean_tokens": round(sum(map(len, ids)) / len(ids), 2), "longest": longest,
        "padding_to_longest_example": round(1 - sum(map(len, ids)) / (longest * len(ids)), 4),
        "padding_random_batches_to_batch_longest": round(padding_fraction(random_batches), 4),
        "padding_bucketed": round(padding_fraction(bucketed), 4),
        "bucketing_pool": f"{args.pool_batches} batches", "bucketing_seconds": round(seconds, 3),
        "target_bucketed": 0.15,
    }
    out = HERE / "results" / "bench_padding.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
