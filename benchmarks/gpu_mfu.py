"""GPU throughput of `raylm train` against a bare PyTorch loop on the very model raylm builds.

For each size it runs, in one process tree on one GPU:
  1. `python -m raylm.cli train` (1 worker, embedded Ray, data prepared before the timer), and reads
     the step figures from its metrics.jsonl (median over the logged steps after `--skip` steps);
  2. a bare loop over random tokens on the model raylm's task builds from the same config (same
     micro-batch, same regional compile, bf16 autocast, fused AdamW, grad clipping, HF's loss);
and reports tokens/s, MFU (PaLM FLOPs per token: 6N + 12·L·H·Q·T, over the device's datasheet dense
bf16 peak) and raylm ÷ bare. Sizes (GPT-2 shapes at T=1024 unless said):
  124M   GPT-2 blocks, 12 x 768, 12 heads
  355M   GPT-2 blocks, 24 x 1024, 16 heads
  1B     Llama-style blocks (RMSNorm, RoPE, SwiGLU), 16 x 2048, 16 heads, MLP 8192: 1.1B parameters
The corpus is synthetic (Zipf-distributed words over a 60,000-word random lexicon, written by this
script): throughput does not depend on the text, but the model's shape does, and the tokenizer
trained on it reaches the 32,000 vocabulary asked for (the demo corpus stops at ~9,400, which made
the "124M" row a 93M model in the first run). `--corpus demo` uses the demo corpus instead.
Both sides build no KV cache in training (`use_cache=False`): with HF's default cache every
regionally compiled block recompiles on the cache's per-layer state, and after dynamo's limit of 8
the rest run eager (GPT-2 124M, H200: 100 ms a step with the cache, 74 ms without).
Targets on one H200: raylm ÷ bare >= 0.97 at every size; MFU >= 45% at 124M, >= 50% at 355M and 1B.

  python benchmarks/gpu_mfu.py [--sizes 124M,355M,1B] [--steps 60] [--skip 20] [--batch auto]
Writes benchmarks/results/gpu_mfu.json and gpu_mfu.md. Without a CUDA GPU it says so and exits 0.
On the H200 machine: bash benchmarks/gpu_mfu.sh (installs the kit, runs this, copies results to $OUT).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
RESULTS = os.path.join(ROOT, "benchmarks", "results")
SIZES = {  # name: (arch, n_layer, n_embd, n_head, micro-batch at T=1024)
    "124M": ("gpt2", 12, 768, 12, 32),
    "355M": ("gpt2", 24, 1024, 16, 16),
    "1B": ("llama", 16, 2048, 16, 8),
    "tiny": ("gpt2", 2, 64, 2, 4),  # a smoke test of the script itself; runs on a CPU too
}
TARGET = {"124M": 0.45, "355M": 0.50, "1B": 0.50, "tiny": 0.0}


def synthetic_corpus(work: str, mb: int = 24, seed: int = 0) -> str:
    """Paragraphs of Zipf-distributed words from a random lexicon: enough distinct letter pairs
    for a 32k BPE vocabulary and ~5M tokens of blocks. Deterministic; written once per work dir."""
    import numpy as np

    path = os.path.join(work, "synthetic.txt")
    if os.path.exists(path):
        return path
    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lens = rng.integers(2, 10, size=60_000)
    lexicon = np.array(["".join(rng.choice(letters, n)) for n in lens])
    p = 1.0 / np.arange(1, len(lexicon) + 1) ** 1.05
    p /= p.sum()
    with open(path + ".tmp", "w") as f:
        written = 0
        while written < mb * 2**20:
            words = lexicon[rng.choice(len(lexicon), size=(64, 300), p=p)]
            text = "\n\n".join(" ".join(row) + "." for row in words) + "\n\n"
            f.write(text)
            written += len(text)
    os.replace(path + ".tmp", path)
    return path


def overrides(size: str, batch: str, steps: int, compile_: str, work: str, corpus: str) -> list[str]:
    arch, n_layer, n_embd, n_head, default_batch = SIZES[size]
    source = [] if corpus == "demo" else [f"data.source={synthetic_corpus(work)}", "data.tokenizer.sample_docs=8000"]
    return [*source, f"model.arch={arch}", f"model.n_layer={n_layer}", f"model.n_embd={n_embd}", f"model.n_head={n_head}",
            "data.block_size=1024", "data.tokenizer.vocab_size=32000", f"data.prepared_dir={work}/prepared",
            f"cluster.storage_path={work}/runs", "cluster.include_dashboard=false", f"trainer.run_name=mfu-{size}",
            "trainer.scaling.num_workers=1", f"trainer.batch_size={default_batch if batch == 'default' else batch}",
            f"trainer.max_steps={steps}", "trainer.schedule.warmup_steps=5", f"trainer.compile={compile_}",
            f"trainer.eval.every={steps}", f"trainer.checkpoint.every={steps}", "trainer.eval.batches=2",
            "trainer.log_every=1", "trainer.optimizer.lr=3e-4", "tracking.wandb.mode=disabled", "tracking.progress_every_s=15"]


def run_raylm(size: str, args: argparse.Namespace) -> dict:
    ov = overrides(size, args.batch, args.steps, args.compile, args.work, args.corpus)
    cli = [sys.executable, "-m", "raylm.cli"]
    subprocess.run(cli + ["prepare", "configs/demo.yaml", *ov], cwd=ROOT, check=True)  # before the timer
    t0 = time.time()
    p = subprocess.run(cli + ["train", "configs/demo.yaml", *ov], cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    wall = time.time() - t0
    print(p.stdout, flush=True)
    p.check_returncode()
    began = re.search(r"first step began ([0-9.]+)s after the command", p.stdout)
    rows = [json.loads(line) for line in open(os.path.join(args.work, "runs", f"mfu-{size}", "metrics.jsonl"))]
    steps = [r for r in rows if "tokens_per_s" in r and r["step"] > args.skip]
    first = min((r for r in rows if "train_time_s" in r), key=lambda r: r["step"])
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps),
            "mfu": statistics.median(r["mfu"] for r in steps) if steps[0].get("mfu") else None,
            "step_time_s": statistics.median(r["step_time_s"] for r in steps),
            "data_wait_s": statistics.median(r["data_wait_s"] for r in steps),
            "batch_size": steps[-1]["batch_size"], "peak_mem_mb": max(r["peak_mem_mb"] for r in steps),
            "first_step_s": first["step_time_s"], "wall_s": wall,
            "startup_s": float(began.group(1)) if began else None, "steps_measured": len(steps)}


def run_bare(size: str, batch: int, args: argparse.Namespace) -> dict:
    """The textbook loop on raylm's own model: what a user would write by hand."""
    import torch

    from raylm.config import load_config
    from raylm.datasets.prepare import load_manifest
    from raylm.tasks.registry import get_task, model_meta
    from raylm.trainers.metrics import device_peak_flops, flops_per_token, non_embedding_params
    from raylm.trainers.parallel import compile_blocks

    cfg = load_config(os.path.join(ROOT, "configs/demo.yaml"), overrides(size, str(batch), args.steps, args.compile, args.work, args.corpus))
    meta = model_meta(cfg, load_manifest(cfg.data.prepared_dir))
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = get_task("causal-lm").build_model(cfg, meta).to(dev)
    if args.compile != "false":
        compile_blocks(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=dev.type == "cuda")
    x = torch.randint(0, meta.vocab_size, (batch, 1024), device=dev)
    warm, timed = args.skip, args.steps - args.skip
    for i in range(warm + timed):
        if i == warm:
            torch.cuda.synchronize() if dev.type == "cuda" else None
            t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = model(input_ids=x, labels=x, use_cache=False).loss  # no KV cache in training (see below)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize() if dev.type == "cuda" else None
    tps = timed * batch * 1024 / (time.perf_counter() - t0)
    m = cfg.model
    fpt = flops_per_token(non_embedding_params(model), m.n_layer, m.n_head, m.n_embd // m.n_head, 1024)
    peak = device_peak_flops(dev, None)
    out = {"tokens_per_s": tps, "mfu": tps * fpt / peak if peak else 0.0,
           "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else 0.0,
           "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "vocab_size": meta.vocab_size}
    del model, opt
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return out


def table(rows: list[dict]) -> str:
    lines = ["| size | blocks | params | micro-batch | compile | bare tok/s | bare MFU | raylm tok/s | raylm MFU "
             "| raylm ÷ bare | first step (s) | target MFU |", "|" + "---|" * 12]
    for r in rows:
        b, y = r["bare"], r["raylm"]
        lines.append(f"| {r['size']} | {r['arch']} | {b['params_m']:.0f}M | {y['batch_size']} | {r['compile']} "
                     f"| {b['tokens_per_s']:,.0f} | {100 * b['mfu']:.1f}% | {y['tokens_per_s']:,.0f} "
                     f"| {100 * (y['mfu'] or 0):.1f}% | {r['ratio']:.3f} | {y['first_step_s']:.1f} "
                     f"| {100 * TARGET[r['size']]:.0f}% |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="124M,355M,1B")
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    ap.add_argument("--skip", type=int, default=20, help="steps left out of the medians (compile, warm-up)")
    ap.add_argument("--batch", default="default", help="'default' (per size), 'auto', or a number")
    ap.add_argument("--compile", default="auto", choices=["auto", "true", "false"])
    ap.add_argument("--work", default="/tmp/raylm-mfu")
    ap.add_argument("--corpus", default="synthetic", choices=["synthetic", "demo"],
                    help="synthetic: a generated corpus whose tokenizer reaches the 32k vocabulary (default)")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available() and args.sizes != "tiny":
        print("gpu_mfu: no CUDA GPU here; nothing measured (run benchmarks/gpu_mfu.sh on a GPU machine)")
        return
    rows, failed = [], []
    for size in args.sizes.split(","):
        try:  # one size failing (out of memory, a kernel) still leaves the others measured
            raylm = run_raylm(size, args)
            bare = run_bare(size, int(raylm["batch_size"]), args)
            rows.append({"size": size, "arch": SIZES[size][0], "compile": args.compile, "raylm": raylm, "bare": bare,
                         "ratio": raylm["tokens_per_s"] / bare["tokens_per_s"]})
            print(table(rows[-1:]), flush=True)
        except Exception as e:  # noqa: BLE001 - recorded in the results, the next size runs
            failed.append({"size": size, "error": f"{type(e).__name__}: {e}"[:2000]})
            print(f"gpu_mfu: {size} failed: {failed[-1]['error']}", flush=True)
        if torch.cuda.is_available():  # after every size: a run cut short by its time limit keeps what it measured
            write_results(rows, failed)
    if torch.cuda.is_available():
        print(table(rows))
    if failed:
        sys.exit(1)


def write_results(rows: list[dict], failed: list[dict]) -> None:
    import torch
    import transformers

    res = {"benchmark": "gpu_mfu", "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "transformers": transformers.__version__, "targets": {"ratio": 0.97, "mfu": TARGET},
           "runs": rows, "failed": failed, "load": os.getloadavg(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "gpu_mfu.json"), "w") as f:
        json.dump(res, f, indent=2)
    with open(os.path.join(RESULTS, "gpu_mfu.md"), "w") as f:
        f.write(table(rows) + "\n")
    if os.environ.get("OUT"):  # the device machine: what is under $OUT comes back
        for name in ("gpu_mfu.json", "gpu_mfu.md"):
            shutil.copy(os.path.join(RESULTS, name), os.environ["OUT"])


if __name__ == "__main__":
    main()
