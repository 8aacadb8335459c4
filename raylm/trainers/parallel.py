"""Parallelism and precision: DDP (default) or FSDP2 (`fully_shard`), autocast, full state dicts."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from raylm.trainers.adapters import base_of, is_peft
from raylm.trainers.config import FsdpConfig, TrainerConfig


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
    return [m for m in model.modules() if type(m).__name__ in names and m is not model]


def shardable_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Blocks that can be their own FSDP unit: none of their parameters is tied to one outside them
    (BERT lists BertEmbeddings in `_no_split_modules`, but its word embeddings are the MLM decoder's
    weight: a parameter shared by two units cannot be sharded by both). Innermost first."""
    owners: dict[int, set[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), set()).add(name)
    names = {m: n for n, m in model.named_modules()}
    keep = []
    for block in transformer_blocks(model):
        prefix = names[block] + "."
        if all(n.startswith(prefix) for p in block.parameters() for n in owners[id(p)]):
            keep.append(block)
    return keep[::-1]


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


def no_kv_cache(model: torch.nn.Module) -> bool:
    """Forward calls that do not ask for a KV cache get none (`use_cache=False`); True if the model takes
    the argument. HF decoders build a cache whenever `config.use_cache` is on (the default), in training
    too: every block then writes its keys and values to it, and under regional compilation the cache's
    per-layer state is a guard, so each block recompiles until dynamo's limit (8) and the blocks after
    it run eager: GPT-2 124M on an H200 took 100 ms a step with the cache, 74 ms without. `generate`
    passes `use_cache` itself, so sampling keeps its cache; the config (and the export) is unchanged."""
    import inspect

    try:
        if "use_cache" not in inspect.signature(model.forward).parameters:
            return False
    except (TypeError, ValueError):
        return False
    model.register_forward_pre_hook(_no_cache_unless_asked, with_kwargs=True)
    return True


def _no_cache_unless_asked(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    kwargs.setdefault("use_cache", False)
    return args, kwargs


def prepare_module(model: torch.nn.Module, t: TrainerConfig, device: torch.device | None = None) -> torch.nn.Module:
    """Per-model options applied before wrapping (they keep parameter names unchanged). A peft model
    (model.adapter) proxies gradient checkpointing and its config to its base; the KV-cache hook goes on the
    base, whose forward names `use_cache` (peft's takes **kwargs)."""
    no_kv_cache(base_of(model))
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
        return _fsdp2(model, t.fsdp, device)
    # Gradients live in DDP's all-reduce buckets (no copy in and out of them each step; less memory).
    return ray.train.torch.prepare_model(model, parallel_strategy="ddp",
                                         parallel_strategy_kwargs={"gradient_as_bucket_view": True})


def is_meta(model: torch.nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def fsdp_mesh(f: FsdpConfig, device: torch.device) -> Any:
    """1-D mesh (plain FSDP) or, with `replicate` > 1, a 2-D (replicate, shard) mesh: HSDP shards inside
    a group of world/replicate ranks (a node) and all-reduces across groups (the FSDP2 HSDP recipe)."""
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    if f.replicate > 1 and world % f.replicate == 0 and world > f.replicate:
        return init_device_mesh(device.type, (f.replicate, world // f.replicate), mesh_dim_names=("replicate", "shard"))
    return init_device_mesh(device.type, (world,), mesh_dim_names=("shard",))


def fsdp_policies(f: FsdpConfig, device: torch.device) -> dict[str, Any]:
    """`fully_shard` keyword arguments from `trainer.fsdp`: mixed precision and CPU offload."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    param = f.param_dtype if f.param_dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    kw: dict[str, Any] = {"reshard_after_forward": f.reshard_after_forward,
                          "offload_policy": CPUOffloadPolicy(pin_memory=device.type == "cuda") if f.cpu_offload
                          else OffloadPolicy()}
    if param != "fp32" or f.reduce_dtype != "fp32":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtypes[param], reduce_dtype=dtypes[f.reduce_dtype])
    return kw


def _fsdp2(model: torch.nn.Module, f: FsdpConfig, device: torch.device) -> torch.nn.Module:
    """FSDP2: optional activation checkpointing and `fully_shard` per transformer block, then the root.

    A model built on the meta device stays there: `materialize` allocates each rank's shards after.
    Without a process group (one worker, no Ray) the model is only moved to the device.
    """
    from torch.distributed.fsdp import fully_shard

    blocks = shardable_blocks(model)
    if f.activation_checkpointing:
        from torch.distributed._composable import checkpoint

        for block in blocks:  # composable: parameter names stay as they are (no wrapper module)
            checkpoint(block)
    if not dist.is_initialized():
        return model if is_meta(model) else model.to(device)
    mesh, kw = fsdp_mesh(f, device), fsdp_policies(f, device)
    for block in blocks:
        fully_shard(block, mesh=mesh, **kw)
    fully_shard(model, mesh=mesh, **kw)
    return model


# Transformer block classes sharded one by one when a model does not name its own (HF names).
_BLOCKS = {"GPT2Block", "LlamaDecoderLayer", "BertLayer", "RobertaLayer"}


def _options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def adapter_only(model: torch.nn.Module) -> bool:
    """A model.adapter run: its checkpoints leave out the frozen base (rebuilt from init_from or config).
    Only then: a full fine-tune may freeze a few parameters (seq2seq's unused pooler) and still saves them."""
    return is_peft(model.module if hasattr(model, "module") else model)


def state_options(model: torch.nn.Module, **kw: Any) -> Any:
    """StateDictOptions for `model`'s state (full or sharded): frozen parameters ignored on adapter runs."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=adapter_only(model), **kw)


def full_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state keyed by parameter name, on CPU; on an adapter run the
    trainable (adapter) tensors only.

    A collective under FSDP: every rank calls it; rank 0 gets the values. The same format for
    DDP and FSDP, so a checkpoint written by one strategy restores into the other.
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, opt, options=state_options(model, full_state_dict=True, cpu_offload=True))


def load_optimizer(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Every rank loads the full optimizer state; FSDP keeps its own shard of it."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, optim_state_dict=state, options=_options())


def device_norm(gnorm: Any) -> torch.Tensor:
    """clip_grad_norm_ returns a DTensor under FSDP2: its global value, still on the device (no host sync)."""
    return gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj` (a list of one when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
