"""MFU of GPT-2 124M and 355M on one CUDA GPU: bf16 autocast, SDPA, fused AdamW, +/- torch.compile.

One prepared run (< 5 minutes on an A100/H100/H200). MFU = tokens/s x FLOPs/token (PaLM:
6N + 12·L·H·Q·T) / the device's dense bf16 peak (raylm.trainers.metrics.PEAK_FLOPS, or --peak).
Target: >= 45% (LLM Foundry reports 44.8% for 125M and 51.6% for 350M on A100).

  python benchmarks/gpu_mfu.py [--steps 20] [--warmup 5] [--no-compile] [--peak 989e12]
Without a CUDA GPU it exits with a message (exit code 0, nothing measured).
JSON into benchmarks/results/gpu_mfu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
RESULTS = os.path.join(os.path.dirname(__file__), "results")
CONFIGS = {  # name: (n_layer, n_embd, n_head, micro-batch at T=1024)
    "gpt2-124M": (12, 768, 12, 16),
    "gpt2-355M": (24, 1024, 16, 8),
}


def measure(name: str, compile_: bool, steps: int, warmup: int, peak: float) -> dict:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from raylm.trainers.metrics import flops_per_token, non_embedding_params

    n_layer, n_embd, n_head, batch = CONFIGS[name]
    seq, dev = 1024, torch.device("cuda")
    conf = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=seq, vocab_size=50304)
    conf._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(conf).to(dev)
    if compile_:
        model.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, 50304, (batch, seq), device=dev)
    torch.backends.cuda.matmul.allow_tf32 = True
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    tps = steps * batch * seq / (time.perf_counter() - t0)
    fpt = flops_per_token(non_embedding_params(model), n_layer, n_head, n_embd // n_head, seq)
    out = {"model": name, "compile": compile_, "batch": batch, "seq": seq, "tokens_per_s": tps,
           "flops_per_token": fpt, "mfu": tps * fpt / peak, "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30}
    del model, opt
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--peak", type=float, default=None, help="dense bf16 FLOP/s of the GPU")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_mfu: no CUDA GPU here; nothing measured (run it on a machine with an NVIDIA GPU)")
        return
    from raylm.trainers.metrics import device_peak_flops

    dev = torch.device("cuda")
    peak = device_peak_flops(dev, args.peak)
    if not peak:
        sys.exit(f"gpu_mfu: unknown peak for '{torch.cuda.get_device_name(dev)}': pass --peak FLOPS")
    runs = [measure(n, c, args.steps, args.warmup, peak) for n in CONFIGS
            for c in ([False] if args.no_compile else [False, True])]
    res = {"benchmark": "gpu_mfu", "device": torch.cuda.get_device_name(dev), "peak_flops": peak,
           "target_mfu": 0.45, "runs": runs, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "gpu_mfu.json"), "w") as f:
        json.dump(res, f, indent=2)
    for r in runs:
        print(f"{r['model']:10s} compile={r['compile']!s:5s} {r['tokens_per_s']:>10,.0f} tok/s  MFU {100 * r['mfu']:.1f}%")


if __name__ == "__main__":
    main()
