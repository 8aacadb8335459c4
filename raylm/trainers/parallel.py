"""Parallelism and precision: DDP (default) or FSDP2 (`fully_shard`), autocast dtype."""

from __future__ import annotations

from typing import Any

import torch

from raylm.trainers.config import TrainerConfig


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on a GPU that supports it, fp16 on older GPUs, fp32 (no autocast) on CPU."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def wrap_model(model: torch.nn.Module, t: TrainerConfig, device: torch.device) -> torch.nn.Module:
    import ray.train.torch

    if t.strategy == "fsdp":
        return _fsdp2(model, device)
    return ray.train.torch.prepare_model(model, parallel_strategy="ddp")


def _fsdp2(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """FSDP2: shard each transformer block, then the root (torch >= 2.6 `fully_shard`)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    model.to(device)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    for module in model.modules():
        if type(module).__name__ in _BLOCKS:
            fully_shard(module)
    fully_shard(model)
    model._raylm_fsdp = True
    return model


# Transformer block classes sharded one by one (HF names).
_BLOCKS = {"GPT2Block", "LlamaDecoderLayer", "BertLayer", "RobertaLayer"}


def full_state_dict(model: Any) -> dict | None:
    """A full (unsharded) CPU state dict on rank 0 under FSDP; None under DDP (save as is)."""
    if not getattr(model, "_raylm_fsdp", False):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
