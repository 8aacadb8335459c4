"""Shakespeare quality benchmark: raylm vs nanoGPT's CPU recipe, same model size, side by side.

Model: GPT, 4 layers, 4 heads, 128 dims, block 64 (nanoGPT's `train_shakespeare_char` CPU
settings). Data: ../shared/data/tinyshakespeare/input.txt, first 90% train, last 10% validation.
raylm trains for a fixed budget of training time (start-up excluded) on an embedded Ray with
2 workers, then evaluates the whole validation split. Its tokens are BPE, nanoGPT's are
characters, so losses are compared in nats per character: mean loss per token divided by the
mean characters per token of the validation text.

Reference: nanoGPT reaches 1.88 nats/char after 2000 iterations of batch 12 (measured on this
2-core machine: 2 min 8 s). Result JSON: benchmarks/results/shakespeare.json.

  python benchmarks/bench_shakespeare.py [--train-seconds 180] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

NANOGPT_NATS_PER_CHAR = 1.88
NANOGPT_SECONDS = 128.0


def split_corpus(src: str, work: str) -> tuple[str, str, int]:
    text = open(src, encoding="utf-8").read()
    cut = int(len(text) * 0.9)
    os.makedirs(work, exist_ok=True)
    paths = os.path.join(work, "train.txt"), os.path.join(work, "val.txt")
    for path, part in zip(paths, (text[:cut], text[cut:])):
        with open(path, "w", encoding="utf-8") as f:
            f.write(part)
    return paths[0], paths[1], len(text) - cut


def overrides(work: str, train: str, val: str, args: argparse.Namespace) -> list[str]:
    return [
        f"data.source={train}", f"data.validation_source={val}", "data.text_split=file", "data.dedup=false",
        "data.max_chars=100000000", f"data.prepared_dir={work}/prepared", "data.block_size=64",
        f"data.tokenizer.vocab_size={args.vocab}", "data.shuffle_buffer_rows=4096",
        f"cluster.storage_path={work}/runs", f"trainer.run_name=shakespeare-{int(time.time())}",
        "model.n_layer=4", "model.n_head=4", "model.n_embd=128", "model.dropout=0.0",
        "trainer.scaling.num_workers=2", "trainer.torch_threads=1", f"trainer.batch_size={args.batch}",
        f"trainer.max_steps={args.steps}", f"trainer.max_train_seconds={args.train_seconds}",
        f"trainer.optimizer.lr={args.lr}", "trainer.optimizer.weight_decay=0.1",
        "trainer.schedule.warmup_steps=50", "trainer.schedule.min_lr_ratio=0.1",
        "trainer.eval.every=250", "trainer.eval.batches=8", "trainer.checkpoint.every=100000",
        "trainer.log_every=25", "tracking.wandb.mode=disabled", "tracking.progress_every_s=30",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.environ.get("RAYLM_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared")))
    ap.add_argument("--train-seconds", type=float, default=180.0)
    ap.add_argument("--steps", type=int, default=1400, help="lr schedule horizon (cosine)")
    ap.add_argument("--batch", type=int, default=16, help="blocks per worker per step")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--work", default="/tmp/raylm-bench-shakespeare")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "shakespeare.json"))
    args = ap.parse_args()
    src = os.path.join(args.shared, "data", "tinyshakespeare", "input.txt")
    if not os.path.isfile(src):
        print(f"not found: {src} (pass --shared or set RAYLM_SHARED)", file=sys.stderr)
        return 2

    t_start = time.time()
    from raylm.cluster import connect
    from raylm.config import load_config
    from raylm.datasets.prepare import load_manifest
    from raylm.serving.report import read_metrics
    from raylm.tasks.corpus_eval import perplexity
    from raylm.trainers.driver import train

    train_txt, val_txt, val_chars = split_corpus(src, args.work)
    cfg = load_config(None, overrides(args.work, train_txt, val_txt, args))
    with connect(cfg.cluster):
        summary = train(cfg)
    manifest = load_manifest(cfg.data.prepared_dir)
    ev = perplexity(summary["export_dir"], cfg.data.prepared_dir, manifest, "validation")
    rows = read_metrics(summary["run_dir"])
    steps = [r for r in rows if "train_loss" in r]
    result = {
        "benchmark": "shakespeare_nats_per_char",
        "raylm": {"nats_per_char": round(ev["nats_per_char"], 4), "val_loss_per_token": round(ev["loss"], 4),
                  "chars_per_token": round(ev["chars_per_token"], 3), "val_tokens": ev["tokens"],
                  "val_chars": manifest["splits"]["validation"]["chars"],
                  "train_seconds": round(steps[-1].get("train_time_s", 0), 1), "steps": steps[-1]["step"],
                  "tokens_per_s": round(sum(r["tokens_per_s"] for r in steps[-10:]) / len(steps[-10:]), 1),
                  "total_wall_seconds": round(time.time() - t_start, 1), "workers": 2, "vocab": args.vocab,
                  "batch_per_worker": args.batch, "lr": args.lr},
        "reference": {"name": "nanoGPT train_shakespeare_char (CPU recipe, char-level, 2000 iters x batch 12)",
                      "nats_per_char": NANOGPT_NATS_PER_CHAR, "wall_seconds": NANOGPT_SECONDS},
    }
    result["ratio_nats_per_char"] = round(result["raylm"]["nats_per_char"] / NANOGPT_NATS_PER_CHAR, 3)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
