"""GPU throughput and peak memory of `raylm train` with LoRA and QLoRA adapters (trainer.task: sft, packed
2,048-token rows with document masking) against a bare peft loop on the same model, rows and settings
(issue 29: raylm ÷ bare tokens/s >= 0.97 per mode).

The model: a ~1.1B Llama of TinyLlama's shape (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 5632, untied
32,000-row embeddings and lm head, 2,048 positions), randomly initialised and saved (safetensors, bf16) to
WORK/model: the device machine has no model hub. Its vocabulary stays at 32,000 (the embedding and lm-head cost
of a real 1B model); the tokenizer is a byte-level BPE (raylm.datasets.tokenizers.train_bpe, --vocab, 8,000 by
default) trained on the GSM8K rows, which with ChatML's two added tokens stays below 32,000: raylm grows no
embeddings (it only grows them when the tokenizer is larger), so neither side trains new-token rows.
The rows: the first --rows of GSM8K's train split, copied into data/gpu_sft/ (git-ignored; carry it to the
device machine). `raylm prepare` runs once, before any timer, and packs them into rows of 2,048 tokens.

Per mode (lora, qlora), one after the other on one GPU:
  raylm  `python -m raylm.cli train WORK/sft-MODE.yaml` (embedded Ray, 1 worker): task sft, model.init_from the
         saved model, model.adapter {type MODE, r 16, alpha 32, dropout 0.05, target_modules auto}, bf16,
         gradient checkpointing (--no-gc: off), batch --batch packed rows, --steps steps, logging every
         --log-every steps; tokens/s over the logged windows after the first --skip steps (the windows' tokens
         over their time: the same span the bare loop times) and peak memory (peak_mem_mb: the worker's
         torch.cuda.max_memory_allocated) from the run's metrics.jsonl;
  bare   a fresh interpreter: AutoModelForCausalLM.from_pretrained(the same directory, the same keywords as
         raylm.trainers.adapters.pretrained_kwargs: BitsAndBytesConfig 4-bit NF4, double quantization, bf16
         compute for qlora; checked equal), peft's prepare_model_for_kbit_training (qlora), LoraConfig with the
         same targets/r/alpha/dropout, the same gradient checkpointing calls, the rows of raylm's prepared
         train shards collated as raylm.tasks.packing.packed_batch does (positions restarting per example, no
         attention mask; checked equal on the first batch), AdamW as raylm.trainers.optim builds it (betas
         0.9/0.95, weight decay 0.1, fused on CUDA), warmup + cosine, clipping at 1.0, bf16 autocast, HF's
         loss, loss.item() every --log-every steps (raylm reads the device at its log steps too); timed
         with torch.cuda.synchronize after --skip warm-up steps; peak torch.cuda.max_memory_allocated.
Tokens are row positions (padding included) on both sides, as raylm's tokens_per_s counts them.

Same on both sides: weights, rows (raylm shuffles them, the bare loop reads them in order: all are ~2,040 of
2,048 positions), batch, steps, precision, attention (sdpa: transformers builds the block-causal mask from the
packed positions), gradient checkpointing, torch.compile (--compile false by default on both sides: inductor
costs ~50 s a run on that machine and bitsandbytes' 4-bit layers are not its strong suit; --compile auto
compiles the decoder layers on both). NOT the same, by design (recorded): raylm's loss is its fused/chunked
cross-entropy (trainer.fused_kernels auto: Liger's when installed, else chunked over 4,096 positions), the bare
loop's is HF's (full logits); raylm prefetches batches on a side CUDA stream.

  python benchmarks/gpu_sft.py [--modes lora,qlora] [--steps 25] [--skip 5] [--batch 4] [--log-every 5]
                               [--compile false|auto] [--no-gc] [--rows 3000] [--work /tmp/raylm-sft]
  python benchmarks/gpu_sft.py --smoke      a tiny CPU version of both sides (2 x 64 Llama, 256-token rows,
                                            lora only: qlora needs CUDA), end to end; results in WORK only
Writes benchmarks/results/gpu_sft.json (and copies it and the sides' logs to $OUT where set). Without a CUDA GPU
(and without --smoke) it says so and exits 0. On the GPU machine: bash benchmarks/gpu_sft.sh (see its header).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
RESULTS = os.path.join(ROOT, "benchmarks", "results")
DATA_DIR = os.path.join(ROOT, "data", "gpu_sft")  # git-ignored (data/): carried to the device machine
ROWS_FILE = os.path.join(DATA_DIR, "gsm8k.jsonl")
GSM8K = os.path.join(ROOT, "..", "shared", "data", "gsm8k", "train.jsonl")
TARGET = 0.97
# TinyLlama-1.1B's shape; "tiny" is the CPU smoke's.
SHAPES = {
    "1b": {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
           "intermediate_size": 5632, "vocab_size": 32000, "max_position_embeddings": 2048},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 172, "vocab_size": 2048, "max_position_embeddings": 256},
}
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
LR, BETAS, WEIGHT_DECAY, CLIP, WARMUP = 2e-4, (0.9, 0.95), 0.1, 1.0, 5  # raylm's defaults but lr and warmup
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # raylm's "auto" for llama
IGNORE = -100


# ---------------------------------------------------------------- inputs: rows, tokenizer, model


def copy_rows(n: int, path: str = ROWS_FILE) -> str:
    """The first `n` GSM8K training rows into data/gpu_sft/ (from ../shared here); kept when already there."""
    if os.path.isfile(path) and sum(1 for _ in open(path)) >= n:
        return path
    if not os.path.isfile(GSM8K):
        raise SystemExit(f"gpu_sft: {path} is missing and {GSM8K} is not here: build it where ../shared is "
                         "(bash benchmarks/gpu_sft.sh kit) and carry data/gpu_sft")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(GSM8K) as src, open(path + ".tmp", "w") as dst:
        for i, line in enumerate(src):
            if i >= n:
                break
            dst.write(line)
    os.replace(path + ".tmp", path)
    return path


def build_tokenizer(work: str, rows: str, vocab: int) -> str:
    """A byte-level BPE trained on the rows' questions and answers (raylm's train_bpe)."""
    from raylm.datasets.tokenizers import train_bpe

    out = os.path.join(work, f"tokenizer-{vocab}")
    if os.path.isfile(os.path.join(out, "tokenizer.json")):
        return out
    with open(rows) as f:
        texts = [t for line in f for r in [json.loads(line)] for t in (r["question"], r["answer"])]
    train_bpe(iter(texts), out, vocab, 2)
    return out


def build_model(work: str, shape: str, tok_dir: str, device: str, seed: int = 0) -> str:
    """A randomly initialised Llama of `shape`, saved in bf16 safetensors (built on `device`: seconds on a GPU)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = os.path.join(work, f"model-{shape}")
    if os.path.isfile(os.path.join(out, "config.json")) and any(f.endswith(".safetensors") for f in os.listdir(out)):
        return out
    tok = AutoTokenizer.from_pretrained(tok_dir)
    s = SHAPES[shape]
    if len(tok) + 2 > s["vocab_size"]:  # ChatML's two tokens join in prepare: the model must not grow
        raise SystemExit(f"gpu_sft: the tokenizer's {len(tok)} tokens (+2 ChatML) exceed the model's {s['vocab_size']}")
    conf = LlamaConfig(**s, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=tok.eos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, use_cache=False)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(conf)
    model = model.to(torch.bfloat16)
    model.save_pretrained(out + ".tmp")
    del model
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.replace(out + ".tmp", out)
    return out


# ---------------------------------------------------------------- raylm side


def raylm_config(args: argparse.Namespace, mode: str, model_dir: str, tok_dir: str, rows: str) -> dict:
    return {
        "cluster": {"storage_path": os.path.join(args.work, "runs"), "include_dashboard": False},
        "data": {"source": rows, "prepared_dir": os.path.join(args.work, f"prepared-{args.max_length}"),
                 "validation_fraction": 0.02, "max_length": args.max_length, "tokenizer": {"path": tok_dir},
                 "sft": {"prompt_field": "question", "response_field": "answer", "packing": True}},
        "model": {"init_from": model_dir, "attn_implementation": "sdpa",
                  "adapter": {"type": mode, **LORA, "target_modules": "auto"}},
        "trainer": {"task": "sft", "run_name": f"gpu-sft-{mode}", "precision": "bf16", "batch_size": args.batch,
                    "grad_accum": 1, "gradient_checkpointing": args.gc,
                    "compile": "auto" if args.compile == "auto" else False,
                    "max_steps": args.steps, "log_every": args.log_every, "torch_threads": args.threads,
                    "scaling": {"num_workers": 1, "use_gpu": args.cuda, "cpus_per_worker": args.threads},
                    "optimizer": {"lr": LR, "betas": list(BETAS), "weight_decay": WEIGHT_DECAY, "grad_clip": CLIP},
                    "schedule": {"type": "cosine", "warmup_steps": min(WARMUP, args.steps)},
                    "eval": {"every": args.steps, "batches": 2}, "checkpoint": {"every": args.steps, "num_to_keep": 1}},
        "tracking": {"wandb": {"mode": "disabled"}, "progress_every_s": 15},
    }


def write_config(args: argparse.Namespace, mode: str, model_dir: str, tok_dir: str, rows: str) -> str:
    import yaml

    path = os.path.join(args.work, f"sft-{mode}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(raylm_config(args, mode, model_dir, tok_dir, rows), f, sort_keys=False)
    return path


def sh(cmd: list[str], log: str, timeout: float) -> tuple[int, str, float]:
    """Run `cmd` from the project root, its output into `log`; (exit code, output, wall seconds)."""
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        rc, out = p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
        got = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        rc, out = 124, got + f"\n[timed out after {timeout:.0f} s]"
    with open(log, "w") as f:
        f.write(out)
    return rc, out, time.time() - t0


def tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


def window_rates(rows: list[dict], skip: int) -> dict:
    """tokens/s over the logged windows that start after step `skip` (a window: the steps since the last logged
    row; its tokens = tokens_per_s x step_time_s x steps), and their peak memory."""
    logged = sorted((r for r in rows if "tokens_per_s" in r), key=lambda r: r["step"])
    tokens = seconds = 0.0
    steps, prev, per_window = 0, 0, []
    for r in logged:
        n = r["step"] - prev
        if prev >= skip:
            dt = r["step_time_s"] * n
            tokens, seconds, steps = tokens + r["tokens_per_s"] * dt, seconds + dt, steps + n
            per_window.append(round(r["tokens_per_s"], 1))
        prev = r["step"]
    if not steps:
        raise RuntimeError(f"no logged window after step {skip} in metrics.jsonl ({len(logged)} rows)")
    losses = [r["train_loss"] for r in logged if r.get("train_loss") is not None]
    return {"tokens_per_s": tokens / seconds, "steps_measured": steps, "window_tokens_per_s": per_window,
            "peak_mem_gib": max(r["peak_mem_mb"] for r in logged) / 1024,
            "step_time_s": seconds / steps, "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "first_step_s": next((r["first_step_s"] for r in rows if "first_step_s" in r), None)}


def run_raylm(args: argparse.Namespace, mode: str, cfg: str) -> dict:
    shutil.rmtree(os.path.join(args.work, "runs", f"gpu-sft-{mode}"), ignore_errors=True)  # no resume of a rerun
    log = os.path.join(args.work, f"raylm-{mode}.log")
    rc, out, wall = sh([sys.executable, "-m", "raylm.cli", "train", cfg], log, args.side_timeout)
    print(tail(out, args.log_lines), flush=True)
    if rc:
        raise RuntimeError(f"raylm train exited {rc} (log: {log}): {tail(out, 6)}")
    with open(os.path.join(args.work, "runs", f"gpu-sft-{mode}", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    res = window_rates(rows, args.skip)
    found = [line for line in out.splitlines() if "model.adapter:" in line and "trainable" in line]
    res["adapter_line"] = found[-1].strip() if found else None
    res["fused_loss_line"] = next((ln.strip() for ln in out.splitlines() if "fused kernels" in ln), None)
    return res | {"wall_s": wall, "log": log}


# ---------------------------------------------------------------- bare side (its own interpreter)


def run_bare(args: argparse.Namespace, mode: str, model_dir: str) -> dict:
    plan = {"mode": mode, "model_dir": model_dir,
            "prepared_dir": os.path.join(args.work, f"prepared-{args.max_length}"),
            "batch": args.batch, "steps": args.steps, "skip": args.skip, "log_every": args.log_every, "gc": args.gc,
            "compile": args.compile, "threads": args.threads, "out": os.path.join(args.work, f"bare-{mode}.json")}
    path = os.path.join(args.work, f"bare-{mode}.plan.json")
    with open(path, "w") as f:
        json.dump(plan, f)
    if os.path.exists(plan["out"]):
        os.remove(plan["out"])
    log = os.path.join(args.work, f"bare-{mode}.log")
    rc, out, wall = sh([sys.executable, os.path.abspath(__file__), "--bare-plan", path], log, args.side_timeout)
    print(tail(out, args.log_lines), flush=True)
    if rc or not os.path.isfile(plan["out"]):
        raise RuntimeError(f"the bare loop exited {rc} (log: {log}): {tail(out, 6)}")
    with open(plan["out"]) as f:
        return json.load(f) | {"wall_s": wall, "log": log}


def collate(rows: list[dict], pad_id: int) -> dict:
    """Packed rows -> input_ids, labels, position_ids (positions restart at each example; padding is a segment of
    its own; each example's first token is no target), right-padded to the longest row, no attention mask."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        lens = [int(x) for x in r["seq_lens"]] + [width - sum(int(x) for x in r["seq_lens"])]
        pos[i] = torch.cat([torch.arange(k) for k in lens])
    labels[pos == 0] = IGNORE
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


def bnb_config() -> object:
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                              bnb_4bit_use_double_quant=True)


def same_kwargs_as_raylm(mode: str, kw: dict) -> bool:
    """The bare loop's from_pretrained keywords are raylm's pretrained_kwargs (the quantization config compared
    as a dict)."""
    from raylm.trainers.adapters import pretrained_kwargs
    from raylm.trainers.config import AdapterConfig, ModelConfig

    theirs = pretrained_kwargs(ModelConfig(adapter=AdapterConfig(type=mode, **LORA)))
    norm = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in kw.items() if k != "attn_implementation"}
    return norm == {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in theirs.items()}


def bare_loop(plan: dict) -> dict:
    """The textbook peft loop; what a user writes by hand around transformers + peft."""
    import glob
    import inspect

    import pyarrow.parquet as pq
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    torch.set_num_threads(plan["threads"])
    mode, gc = plan["mode"], plan["gc"]
    kw: dict = {"use_safetensors": True, "trust_remote_code": False}
    if mode == "qlora":
        kw["quantization_config"] = bnb_config()
    same_kwargs = same_kwargs_as_raylm(mode, kw)
    torch.manual_seed(1337)  # raylm's trainer.seed: the LoRA matrices' init draws from it
    model = AutoModelForCausalLM.from_pretrained(plan["model_dir"], attn_implementation="sdpa", **kw)
    if mode == "qlora":
        ck = {"use_reentrant": False}
        name = ("activation_checkpointing_kwargs" if "activation_checkpointing_kwargs"
                in inspect.signature(prepare_model_for_kbit_training).parameters else "gradient_checkpointing_kwargs")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc, **{name: ck})
    if gc:
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    if gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if any(p.device.type != dev.type for p in model.parameters()):
        model.to(dev)
    if plan["compile"] == "auto" and cuda:
        for layer in model.get_base_model().model.layers:
            layer.compile()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable, n_total = sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters())
    print(f"[bare] {mode}: {n_trainable:,} trainable parameters of {n_total:,}", flush=True)
    opt = torch.optim.AdamW(trainable, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, fused=cuda)
    steps, skip, every = plan["steps"], plan["skip"], plan["log_every"]
    warm = min(WARMUP, steps)

    def lr_factor(s: int) -> float:  # raylm.trainers.optim.lr_factor's warmup + cosine to 10%
        if s < warm:
            return (s + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, steps - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    with open(os.path.join(plan["prepared_dir"], "manifest.json")) as f:
        pad_id = json.load(f)["pad_id"]
    files = sorted(glob.glob(os.path.join(plan["prepared_dir"], "train", "*.parquet")))
    rows = [r for p in files for r in pq.read_table(p, columns=["input_ids", "labels", "seq_lens"]).to_pylist()]
    b = plan["batch"]
    batches = [[rows[(i * b + j) % len(rows)] for j in range(b)] for i in range(steps)]
    first = collate(batches[0], pad_id)
    from raylm.tasks.packing import packed_batch  # only to check that both sides feed the same tensors

    ref = packed_batch([r["input_ids"] for r in batches[0]], [r["labels"] for r in batches[0]],
                       [r["seq_lens"] for r in batches[0]], pad_id)
    same_collate = all(torch.equal(first[k], ref[k]) for k in first)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    tokens = real = 0
    losses: list[float] = []
    t0 = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        if step == skip + 1:
            sync()
            t0, tokens, real = time.perf_counter(), 0, 0
        batch = {k: v.to(dev, non_blocking=cuda) for k, v in collate(batches[step - 1], pad_id).items()}
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, CLIP)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens += batch["input_ids"].numel()
        real += sum(int(x) for r in batches[step - 1] for x in r["seq_lens"])
        if step % every == 0 or step == 1:
            losses.append(loss.item())  # a log step reads the device, as raylm's do
    sync()
    dt = time.perf_counter() - t0
    if cuda:  # since the process began, load included: raylm's peak_mem_mb is the same (never reset)
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    res = {"tokens_per_s": tokens / dt, "real_tokens_per_s": real / dt, "steps_measured": steps - skip,
           "step_time_s": dt / (steps - skip), "peak_mem_gib": peak, "first_loss": losses[0], "last_loss": losses[-1],
           "trainable_params": n_trainable, "total_params": n_total, "rows_available": len(rows),
           "same_from_pretrained_kwargs_as_raylm": same_kwargs, "same_collate_as_raylm": same_collate}
    with open(plan["out"], "w") as f:
        json.dump(res, f, indent=1)
    print(f"[bare] {mode}: {res['tokens_per_s']:,.0f} tok/s, peak {peak:.2f} GiB, loss {losses[0]:.3f} -> "
          f"{losses[-1]:.3f}", flush=True)
    return res


# ---------------------------------------------------------------- the kit: a trimmed bitsandbytes wheel


def trim_wheel(wheel: str, out_dir: str, keep: tuple[str, ...] = ("cpu", "cuda13")) -> str:
    """`wheel` (bitsandbytes, ~43 MB: a native library per CUDA/ROCm/XPU version) rewritten into `out_dir`
    with only the libbitsandbytes_{keep}*.so libraries (the device's torch is CUDA 13), RECORD to match."""
    def dropped(name: str) -> bool:
        base = os.path.basename(name)
        return base.startswith("libbitsandbytes_") and not base[len("libbitsandbytes_"):].startswith(keep)

    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, os.path.basename(wheel))
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out + ".tmp", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if dropped(info.filename):
                continue
            data = src.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                data = "".join(line for line in data.decode().splitlines(keepends=True)
                               if not dropped(line.split(",", 1)[0])).encode()
            dst.writestr(info, data)
    os.replace(out + ".tmp", out)
    return out


# ---------------------------------------------------------------- main


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "liger-kernel", "ray"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def summary(runs: list[dict]) -> str:
    lines = ["| mode | raylm tok/s | bare tok/s | raylm ÷ bare | target | raylm peak GiB | bare peak GiB | mem ÷ |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if "ratio" not in r:
            lines.append(f"| {r['mode']} | {r.get('skipped') or r.get('error', '')[:80]} |||||||")
            continue
        y, b = r["raylm"], r["bare"]
        lines.append(f"| {r['mode']} | {y['tokens_per_s']:,.0f} | {b['tokens_per_s']:,.0f} | {r['ratio']:.3f} "
                     f"| >= {TARGET} {'PASS' if r['pass'] else 'FAIL'} | {y['peak_mem_gib']:.2f} "
                     f"| {b['peak_mem_gib']:.2f} | {r['mem_ratio']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="lora,qlora")
    ap.add_argument("--steps", type=int, default=25, help="optimizer steps per side (warm-up included)")
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the timing")
    ap.add_argument("--batch", type=int, default=4, help="packed rows per step")
    ap.add_argument("--log-every", type=int, default=5, help="raylm's trainer.log_every; the bare loop reads its "
                    "loss as often. --skip must be a multiple of it (the windows after it are timed)")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--compile", default="false", choices=["false", "auto"])
    ap.add_argument("--no-gc", dest="gc", action="store_false", help="gradient checkpointing off (both sides)")
    ap.add_argument("--rows", type=int, default=3000, help="GSM8K rows (~8 a packed row of 2,048 tokens)")
    ap.add_argument("--vocab", type=int, default=8000, help="the BPE tokenizer's vocabulary (the model keeps 32,000)")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--work", default=None, help="default /tmp/raylm-sft (--smoke: /tmp/raylm-sft-smoke)")
    ap.add_argument("--side-timeout", type=float, default=240, help="seconds a side may run before it is stopped")
    ap.add_argument("--log-lines", type=int, default=25, help="lines of each side's log printed here")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 256-token rows, few steps, on the CPU")
    ap.add_argument("--copy-rows", action="store_true", help="only copy the GSM8K rows into data/gpu_sft/")
    ap.add_argument("--trim-wheel", nargs=2, metavar=("WHEEL", "OUT_DIR"), help="only trim a bitsandbytes wheel")
    ap.add_argument("--bare-plan", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_plan:
        with open(args.bare_plan) as f:
            bare_loop(json.load(f))
        return
    if args.trim_wheel:
        out = trim_wheel(*args.trim_wheel)
        print(f"gpu_sft: {out}: {os.path.getsize(out) / 2**20:.1f} MB")
        return
    if args.copy_rows:
        print(f"gpu_sft: {copy_rows(args.rows)} ({args.rows} rows)")
        return
    import torch

    args.cuda = torch.cuda.is_available()
    if args.smoke:
        args.steps, args.skip, args.batch, args.log_every, args.max_length = 4, 2, 2, 1, 256
        args.rows, args.vocab, args.threads = min(args.rows, 160), 1000, 1
        args.modes = "lora,qlora"
    elif not args.cuda:
        print("gpu_sft: no CUDA GPU here; nothing measured (run benchmarks/gpu_sft.sh on a GPU machine, or "
              "--smoke for the CPU check of the script)")
        return
    if args.skip % args.log_every:
        raise SystemExit(f"gpu_sft: --skip {args.skip} is not a multiple of --log-every {args.log_every}")
    args.work = args.work or ("/tmp/raylm-sft-smoke" if args.smoke else "/tmp/raylm-sft")
    os.makedirs(args.work, exist_ok=True)
    shape = "tiny" if args.smoke else "1b"
    t_setup = time.time()
    rows = copy_rows(args.rows, os.path.join(args.work, "gsm8k.jsonl") if args.smoke else ROWS_FILE)
    tok = build_tokenizer(args.work, rows, args.vocab)
    model_dir = build_model(args.work, shape, tok, "cuda" if args.cuda else "cpu")
    modes = args.modes.split(",")
    configs = {m: write_config(args, m, model_dir, tok, rows) for m in modes}
    rc, out, _ = sh([sys.executable, "-m", "raylm.cli", "prepare", configs[modes[0]]],
                    os.path.join(args.work, "prepare.log"), args.side_timeout)  # once, before any timer
    print(tail(out, 12), flush=True)
    if rc:
        raise SystemExit(f"gpu_sft: raylm prepare exited {rc}")
    with open(os.path.join(args.work, f"prepared-{args.max_length}", "manifest.json")) as f:
        packing = json.load(f).get("sft_summary", {}).get("train")
    setup_s = time.time() - t_setup
    print(f"gpu_sft: setup (rows, tokenizer, model, prepare) {setup_s:.0f} s; packed train rows: {packing}", flush=True)
    runs: list[dict] = []
    failed = False
    for mode in modes:
        if mode == "qlora" and not args.cuda:
            runs.append({"mode": mode, "skipped": "qlora needs a CUDA GPU (bitsandbytes 4-bit NF4)"})
            continue
        if mode == "qlora" and versions()["bitsandbytes"] is None:
            runs.append({"mode": mode, "skipped": "bitsandbytes is not installed (bash benchmarks/gpu_sft.sh kit)"})
            continue
        try:  # one mode failing (out of memory, a kernel) still leaves the other measured
            print(f"gpu_sft: {mode}: raylm train ...", flush=True)
            raylm = run_raylm(args, mode, configs[mode])
            print(f"gpu_sft: {mode}: bare peft loop ...", flush=True)
            bare = run_bare(args, mode, model_dir)
            ratio = raylm["tokens_per_s"] / bare["tokens_per_s"]
            counts = re.search(r"([\d,]+) trainable parameters of ([\d,]+)", raylm["adapter_line"] or "")
            same_params = bool(counts) and [int(x.replace(",", "")) for x in counts.groups()] == [
                bare["trainable_params"], bare["total_params"]]
            runs.append({"mode": mode, "raylm": raylm, "bare": bare, "ratio": ratio, "pass": ratio >= TARGET,
                         "mem_ratio": raylm["peak_mem_gib"] / bare["peak_mem_gib"],
                         "same_parameters": same_params})
        except Exception as e:  # noqa: BLE001 - recorded, the next mode runs
            runs.append({"mode": mode, "error": f"{type(e).__name__}: {e}"[:3000]})
            failed = True
            print(f"gpu_sft: {mode} failed: {runs[-1]['error']}", flush=True)
        write_results(args, runs, setup_s, packing, model_dir)
    write_results(args, runs, setup_s, packing, model_dir)
    print(summary(runs), flush=True)
    if args.smoke:
        print("gpu_sft: --smoke ran every path on a tiny model; its figures (a busy CPU) say nothing about the target")
    if failed:
        sys.exit(1)


def write_results(args: argparse.Namespace, runs: list[dict], setup_s: float, packing: dict | None,
                  model_dir: str) -> None:
    import torch

    with open(os.path.join(model_dir, "config.json")) as f:
        conf = json.load(f)
    res = {"benchmark": "gpu_sft", "smoke": args.smoke,
           "device": torch.cuda.get_device_name(0) if args.cuda else "cpu", "versions": versions(),
           "target": {"ratio_tokens_per_s": TARGET},
           "model": {k: conf.get(k) for k in (*SHAPES["1b"], "tie_word_embeddings", "torch_dtype", "dtype")},
           "settings": {"max_length": args.max_length, "batch_rows": args.batch, "steps": args.steps,
                        "warmup_steps_skipped": args.skip, "log_every": args.log_every,
                        "gradient_checkpointing": args.gc,
                        "compile": args.compile, "precision": "bf16", "attn_implementation": "sdpa", "lora": LORA,
                        "targets": TARGETS, "lr": LR, "betas": BETAS, "weight_decay": WEIGHT_DECAY, "clip": CLIP,
                        "rows": args.rows, "tokenizer_vocab": args.vocab},
           "packing": packing, "setup_s": setup_s, "runs": runs,
           "passed": bool(runs) and all(r.get("pass") for r in runs if "skipped" not in r),
           "load": os.getloadavg(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = os.path.join(args.work, "gpu_sft.json") if args.smoke else os.path.join(RESULTS, "gpu_sft.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(res, f, indent=2)
    os.replace(path + ".tmp", path)
    if os.environ.get("OUT"):  # the device machine: what is under $OUT comes back (8 files at most)
        shutil.copy(path, os.environ["OUT"])
        for r in runs:
            for side in ("raylm", "bare"):
                log = os.path.join(args.work, f"{side}-{r['mode']}.log")
                if os.path.isfile(log):
                    shutil.copy(log, os.environ["OUT"])


if __name__ == "__main__":
    main()
