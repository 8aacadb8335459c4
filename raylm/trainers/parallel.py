"""Parallelism and precision: DDP (default) or FSDP2 (`fully_shard`), autocast, full state dicts."""

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


def compile_enabled(t: TrainerConfig, device: torch.device) -> bool:
    """`trainer.compile: auto` is on for CUDA, off on CPU (inductor's CPU compile costs minutes on 2 cores)."""
    return device.type == "cuda" if t.compile == "auto" else bool(t.compile)


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of an HF model, found by its own `_no_split_modules` (e.g. GPT2Block,
    LlamaDecoderLayer, BertLayer): the unit of regional compilation and of FSDP sharding."""
    names = set(getattr(model, "_no_split_modules", None) or []) or _BLOCKS
    return [m for m in model.modules() if type(m).__name__ in names]


def compile_blocks(model: torch.nn.Module) -> int:
    """Regional compilation: compile each transformer block in place rather than the whole model, so
    identical blocks share one compiled graph (PyTorch's "regional compilation" recipe) and compile
    time stays near one block's. In place: state-dict keys stay free of `_orig_mod.`"""
    blocks = transformer_blocks(model)
    for block in blocks:
        block.compile()
    if not blocks:
        model.compile()
    return len(blocks)


def prepare_module(model: torch.nn.Module, t: TrainerConfig, device: torch.device | None = None) -> torch.nn.Module:
    """Per-model options applied before wrapping (they keep parameter names unchanged)."""
    if t.gradient_checkpointing:
        # Non-reentrant checkpointing works under DDP/FSDP without find_unused_parameters.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False
    if compile_enabled(t, device or torch.device("cpu")):
        compile_blocks(model)
    return model


def wrap_model(model: torch.nn.Module, t: TrainerConfig, device: torch.device) -> torch.nn.Module:
    import ray.train.torch

    model = prepare_module(model, t, device)
    if t.scaling.strategy == "fsdp":
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
    return model


# Transformer block classes sharded one by one (HF names).
_BLOCKS = {"GPT2Block", "LlamaDecoderLayer", "BertLayer", "RobertaLayer"}


def _options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state keyed by parameter name, on CPU.

    A collective under FSDP: every rank calls it; rank 0 gets the values. The same format for
    DDP and FSDP, so a checkpoint written by one strategy restores into the other.
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, opt, options=_options(cpu_offload=True))


def load_optimizer(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Every rank loads the full optimizer state; FSDP keeps its own shard of it."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, optim_state_dict=state, options=_options())


def device_norm(gnorm: Any) -> torch.Tensor:
    """clip_grad_norm_ returns a DTensor under FSDP2: its global value, still on the device (no host sync)."""
    return gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm
