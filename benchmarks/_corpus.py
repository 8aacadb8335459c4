"""Benchmark corpora, generated into /tmp (never committed): tinyshakespeare's paragraphs,
shuffled differently on every pass, grouped into JSONL documents of 4-16 paragraphs."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

SHARED = Path(os.environ.get("RAYLM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SHAKESPEARE = SHARED / "data" / "tinyshakespeare" / "input.txt"
SST2 = SHARED / "data" / "sst2" / "train.tsv"


def paragraphs() -> list[str]:
    return [p.strip() for p in SHAKESPEARE.read_text().split("\n\n") if p.strip()]


def build_corpus(out_dir: str | Path, target_bytes: int, files: int = 8, seed: int = 0) -> Path:
    """`files` JSONL files of about target_bytes/files each; reused when already there."""
    out = Path(out_dir)
    done = out / "_DONE"
    if done.is_file() and json.loads(done.read_text()) == {"bytes": target_bytes, "files": files, "seed": seed}:
        return out
    out.mkdir(parents=True, exist_ok=True)
    paras, rng = paragraphs(), random.Random(seed)
    per_file = target_bytes // files
    for k in range(files):
        with open(out / f"part-{k:03d}.jsonl", "w") as f:
            written = 0
            while written < per_file:
                rng.shuffle(paras)
                i = 0
                while i < len(paras) and written < per_file:
                    n = rng.randint(4, 16)
                    line = json.dumps({"text": "\n\n".join(paras[i: i + n])}) + "\n"
                    f.write(line)
                    written += len(line)
                    i += n
    done.write_text(json.dumps({"bytes": target_bytes, "files": files, "seed": seed}))
    return out


def iter_texts(corpus: Path):
    for path in sorted(corpus.glob("*.jsonl")):
        with open(path) as f:
            for line in f:
                yield json.loads(line)["text"]
