"""The KV-cache finding, on a bare GPT-2 124M shape (vocab 32k, batch 32 x 1024, bf16, fused AdamW): HF decoders
build a KV cache in training unless `use_cache=False`, and under regional compilation its per-layer state makes every
block recompile until dynamo's limit, the rest eager. H200, 2026-11-30: 73.7 ms a step without the cache, 100.2 ms
with it, 76.4 ms without it and whole-model compile. MFU as gpu_mfu.py and `raylm train` count it
(raylm.trainers.metrics: the tied lm head counts, position embeddings do not): 34.7%, 25.5%, 33.4%. CUDA only.

    python3 benchmarks/gpu_kv_cache.py        (on the device, ~2 min)
"""
import os
import sys
import time

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from raylm.trainers.metrics import device_peak_flops, flops_per_token, non_embedding_params  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = True
dev = torch.device("cuda")


def run(use_cache_false, whole=False):
    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=32000, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
    m = GPT2LMHeadModel(cfg).to(dev)
    for b in [m] if whole else m.transformer.h:
        b.compile()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-4, fused=True)
    x = torch.randint(0, 32000, (32, 1024), device=dev)
    kw = {"use_cache": False} if use_cache_false else {}
    t_c = time.perf_counter()
    for i in range(28):
        if i == 8:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            print("warm-up (compile) s", round(t0 - t_c, 1), flush=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = m(input_ids=x, labels=x, **kw).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / 20
    fpt = flops_per_token(non_embedding_params(m), cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, 1024)
    tps = 32 * 1024 / dt
    cache = "False" if use_cache_false else "default (cache built)"
    print(f"whole={whole} use_cache={cache}: step {dt * 1000:.1f} ms, {tps:,.0f} tok/s, "
          f"MFU {tps * fpt / device_peak_flops(dev, None):.1%}", flush=True)


print(torch.__version__, transformers.__version__, flush=True)
for no_cache, whole in ((True, False), (False, False), (True, True)):
    run(no_cache, whole)
