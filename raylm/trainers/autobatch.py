"""`trainer.batch_size: auto`: the largest micro-batch that fits the device, found by probing.

A real forward/backward of the model on a full-length batch, doubling until it does not fit,
then bisecting. "Fits" means no out-of-memory error and the probe's peak plus what the first
optimizer step will add (AdamW's two fp32 moments, DDP's gradient buckets) under 90% of the card.
All ranks probe; the smallest answer wins, so every rank steps with the same batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from raylm.tasks.meta import ModelMeta

log = logging.getLogger(__name__)
CPU_DEFAULT = 16  # no memory wall to find on a CPU: a batch that keeps a core busy
HEADROOM = 0.90
MAX_BATCH = 1024  # the largest micro-batch the probe tries


def find_max_batch(fits: Callable[[int], bool], cap: int = MAX_BATCH) -> int:
    """Largest b in [1, cap] with fits(b), for a monotone `fits`: doubling, then bisection."""
    if not fits(1):
        raise RuntimeError("a micro-batch of 1 does not fit on the device: use a smaller model, "
                           "trainer.gradient_checkpointing=true, or trainer.scaling.strategy=fsdp")
    lo, hi = 1, cap + 1
    b = 2
    while b <= cap:
        if not fits(b):
            hi = b
            break
        lo, b = b, b * 2
    else:
        if lo < cap and fits(cap):
            return cap
        hi = min(hi, cap)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def fits_within(probe: Callable[[int], float], limit_bytes: float, extra_bytes: float = 0.0) -> Callable[[int], bool]:
    """`probe(b)` runs a batch of b and returns its peak bytes (raising torch.OutOfMemoryError if it
    cannot); b fits when it ran and peak + `extra_bytes` (state allocated later) stays under the limit."""

    def fits(b: int) -> bool:
        try:
            peak = probe(b)
        except torch.OutOfMemoryError:
            return False
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return peak + extra_bytes <= limit_bytes

    return fits


def fake_raw_batch(meta: ModelMeta, b: int, seq_len: int) -> dict[str, np.ndarray]:
    """A full-length raw batch of packed blocks (the shards' layout for the LM tasks), for the probe."""
    rng = np.random.default_rng(0)
    ids = rng.integers(8, max(9, meta.vocab_size), size=(b, seq_len)).astype(np.int32)
    return {"input_ids": ids, "sample_id": np.arange(b)}


def cuda_probe(model: torch.nn.Module, task: Any, meta: ModelMeta, device: torch.device, amp: torch.dtype | None,
               seq_len: int) -> Callable[[int], float]:
    def probe(b: int) -> float:
        torch.cuda.reset_peak_memory_stats(device)
        raw = task.fake_raw_batch(meta, b, seq_len)  # a task's own columns (NER, QA: more than input_ids)
        inputs = {k: v.to(device) for k, v in task.collate(raw, meta, 0).items()
                  if k not in ("sample_id", "_n")}
        try:
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = task.loss(model, inputs)
            loss.backward()
            torch.cuda.synchronize(device)
            return float(torch.cuda.max_memory_allocated(device))
        finally:
            model.zero_grad(set_to_none=True)

    return probe


def resolve_batch_size(batch_size: int | str, model: torch.nn.Module, task: Any, meta: ModelMeta, device: torch.device,
                       amp: torch.dtype | None, rank: int) -> int:
    """An int as configured; `auto`: probe on a GPU (the minimum over ranks), CPU_DEFAULT on a CPU."""
    if batch_size != "auto":
        return int(batch_size)
    if device.type != "cuda":
        if rank == 0:
            log.info("trainer.batch_size=auto on CPU: %d", CPU_DEFAULT)
        return CPU_DEFAULT
    import torch.distributed as dist

    model.to(device).train()
    seq_len = task.seq_len(meta)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)  # a frozen base has no moments
    world = dist.get_world_size() if dist.is_initialized() else 1
    extra = n_params * (8 + (4 if world > 1 else 0))  # AdamW moments (fp32) + DDP gradient buckets
    limit = HEADROOM * torch.cuda.get_device_properties(device).total_memory
    best = torch.tensor(find_max_batch(fits_within(cuda_probe(model, task, meta, device, amp, seq_len), limit, extra)),
                        device=device)
    if dist.is_initialized():
        dist.all_reduce(best, op=dist.ReduceOp.MIN)
    return int(best)
