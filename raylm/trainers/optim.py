"""AdamW with decay only on matrices, and warmup + cosine/linear/constant schedules."""

from __future__ import annotations

import math

import torch

from raylm.trainers.config import TrainerConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms and embeddings' 1-D params (GPT-2/nanoGPT practice)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, t: TrainerConfig, device: torch.device) -> torch.optim.Optimizer:
    # The fused kernel (one pass over all parameters) where torch has one: CUDA, and the CPU since torch 2.4,
    # where it is ~6x faster than the foreach path (MiniLM, 22M params, 2 threads: 14 vs 88 ms a step; the HF
    # Trainer's default, adamw_torch_fused, uses it too).
    fused = device.type in _fused_devices()
    o = t.optimizer
    return torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=o.betas, fused=fused)


def _fused_devices() -> tuple[str, ...]:
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        return tuple(_get_fused_kernels_supported_devices())
    except ImportError:  # older torch: CUDA only
        return ("cuda",)


def lr_factor(step: int, t: TrainerConfig) -> float:
    """Multiplier of the peak lr at `step` (0-based, before the optimizer step)."""
    s = t.schedule
    if s.warmup_steps and step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    if s.type == "constant":
        return 1.0
    span = max(1, t.max_steps - s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / span)
    if s.type == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return s.min_lr_ratio + (1.0 - s.min_lr_ratio) * shape


def build_scheduler(opt: torch.optim.Optimizer, t: TrainerConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, t))
