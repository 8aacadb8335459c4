"""Born sharded: build the model on the meta device, shard it (FSDP2), then materialise it shard by shard.

No rank ever holds the full model:
- weights from config are initialised one module at a time: full-size temporaries of that module's
  own tensors only, then each rank keeps its slice (torchtitan's meta-device init, adapted to HF's
  `_init_weights`);
- weights from `model.init_from` (or a raylm HF-format checkpoint) are read from safetensors slice by
  slice (`safe_open(...).get_slice`): a rank reads only the rows of its own shard, never a full tensor.

Initialisation is raylm's own and shared with the eager (DDP) build (`init_weights`): each module's HF
`_init_weights` runs under an RNG seeded by (seed, module name), children before parents (HF's
`smart_apply` order, so GPT-2's scaled `c_proj` init still wins). The initial weights then depend on
the seed only, not on how the model was built or sharded: an FSDP run starts from the DDP run's weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from raylm.tasks.meta import ModelMeta

# ---------------------------------------------------------------- building on the meta device


def build_on_meta(task: Any, cfg: Any, meta: ModelMeta) -> nn.Module | None:
    """The task's model on the meta device (no storage), or None when the task cannot build one there."""
    import transformers
    from transformers import AutoConfig

    m = cfg.model
    with torch.device("meta"):
        if not m.init_from:
            return task.build_model(cfg, meta)
        auto = task.meta_init_class(meta)
        if not auto:  # the task loads eagerly on every rank (a warning says so)
            return None
        conf = AutoConfig.from_pretrained(m.init_from, **task.pretrained_kwargs(meta))
        conf._attn_implementation = m.attn_implementation
        return getattr(transformers, auto).from_config(conf)


def config_seed(seed: int, name: str) -> int:
    """A module's init seed: stable across processes and Python versions (not `hash()`)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:7], "little")


# ---------------------------------------------------------------- init from config, module by module


def _post_order(model: nn.Module) -> Iterator[tuple[str, nn.Module, nn.Module]]:
    """(name, module, the PreTrainedModel whose `_init_weights` applies), children first (HF's smart_apply)."""
    from transformers import PreTrainedModel

    def walk(prefix: str, mod: nn.Module, owner: nn.Module) -> Iterator[tuple[str, nn.Module, nn.Module]]:
        for name, child in mod.named_children():
            yield from walk(f"{prefix}{name}.", child, child if isinstance(child, PreTrainedModel) else owner)
        yield prefix.rstrip("."), mod, owner

    yield from walk("", model, model)


def _slots(mod: nn.Module) -> list[tuple[nn.Module, str, str, torch.Tensor]]:
    """(owning module, attribute, dotted name relative to `mod`, tensor) for every tensor in mod's subtree."""
    out = []
    for prefix, sub in mod.named_modules(remove_duplicate=False):
        for store in (sub._parameters, sub._buffers):
            for k, t in store.items():
                if t is not None:
                    out.append((sub, k, f"{prefix}.{k}" if prefix else k, t))
    return out


def _swap(slots: list, values: list[torch.Tensor]) -> list[torch.Tensor]:
    """Put `values` in the slots (parameters stay Parameters); returns what was there."""
    old = []
    for (sub, k, _, _), v in zip(slots, values):
        store = sub._parameters if k in sub._parameters else sub._buffers
        old.append(store[k])
        wrap = store is sub._parameters and not isinstance(v, nn.Parameter)
        store[k] = nn.Parameter(v, requires_grad=False) if wrap else v
    return old


def _run_init(owner: nn.Module, mod: nn.Module, seed: int) -> None:
    import transformers.initialization as hf_init

    with torch.random.fork_rng(devices=[]), torch.no_grad(), hf_init.guard_torch_init_functions():
        torch.manual_seed(seed)
        owner._init_weights(mod)


def _writes(owner: nn.Module, mod: nn.Module, slots: list, seed: int) -> list[int]:
    """Which of `mod`'s subtree tensors its `_init_weights` writes: a dry run on storage-free meta
    tensors, read off their version counters (an in-place init bumps `_version`)."""
    fakes = [torch.empty(t.shape, dtype=t.dtype, device="meta") for *_, t in slots]
    before = [f._version for f in fakes]
    old = _swap(slots, fakes)
    try:
        _run_init(owner, mod, seed)
        written = _swap(slots, old)  # the Parameters wrapping the fakes share their version counter
    except Exception:
        _swap(slots, old)
        raise
    return [i for i, (w, b) in enumerate(zip(written, before)) if w._version != b]


def init_weights(model: nn.Module, seed: int, only: Callable[[torch.Tensor], bool] = lambda t: True) -> set[int]:
    """Initialise `model`'s tensors (plain or FSDP-sharded DTensors) as HF would, seeded per module.

    Each module's init runs on CPU temporaries of just the tensors it writes (found by a dry run), then
    each rank copies its slice into its shard. `only` limits which tensors receive values (e.g. those an
    `init_from` checkpoint did not fill). Returns the ids of the tensors written.
    """
    done: set[int] = set()
    for name, mod, owner in _post_order(model):
        slots = _slots(mod)
        mseed = config_seed(seed, name)
        idx = [i for i in _writes(owner, mod, slots, mseed) if only(slots[i][3])]
        if not idx:
            continue
        temps = [torch.empty(slots[i][3].shape, dtype=slots[i][3].dtype) for i in idx]
        values = [torch.empty(t.shape, dtype=t.dtype, device="meta") for *_, t in slots]
        for i, tmp in zip(idx, temps):
            values[i] = tmp
        old = _swap(slots, values)
        try:
            _run_init(owner, mod, mseed)
        finally:
            _swap(slots, old)
        for i, tmp in zip(idx, temps):
            copy_full_into(slots[i][3], tmp)
            done.add(id(slots[i][3]))
    return done


# ---------------------------------------------------------------- shards


def local_slices(shape: torch.Size, target: torch.Tensor) -> tuple[slice, ...]:
    """The region of a full tensor of `shape` that this rank holds in `target` (all of it if not a DTensor)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(target, DTensor):
        return tuple(slice(0, n) for n in shape)
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local, offset = compute_local_shape_and_global_offset(shape, target.device_mesh, target.placements)
    return tuple(slice(o, o + n) for o, n in zip(offset, local))


def _local(target: torch.Tensor) -> torch.Tensor:
    return target.to_local() if hasattr(target, "to_local") else target


@torch.no_grad()
def copy_full_into(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy this rank's slice of a full CPU tensor into `target` (a shard or a plain tensor)."""
    part = full[local_slices(full.shape, target)]
    _local(target).copy_(part.to(device=target.device, dtype=target.dtype))


# ---------------------------------------------------------------- weights from safetensors, slice by slice


def safetensors_files(model_dir: str) -> list[str]:
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        return sorted({os.path.join(model_dir, f) for f in json.load(open(index))["weight_map"].values()})
    return sorted(os.path.join(model_dir, f) for f in os.listdir(model_dir) if f.endswith(".safetensors"))


def _open_safetensors(path: str) -> AbstractContextManager:
    from safetensors import safe_open

    return safe_open(path, framework="pt")


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer by name, tied names included (they share one tensor)."""
    out = {n: p for n, p in model.named_parameters(remove_duplicate=False)}
    for prefix, sub in model.named_modules(remove_duplicate=False):
        for k, b in sub._buffers.items():
            if b is not None and k not in sub._non_persistent_buffers_set:
                out[f"{prefix}.{k}" if prefix else k] = b
    return out


def _file_key(name: str, keys: set[str], prefix: str) -> str | None:
    """The checkpoint key of a model tensor: as is, or with the base model's prefix added or removed
    (a `BertModel` checkpoint into `BertForSequenceClassification`, and the other way round)."""
    if name in keys:
        return name
    if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1:] in keys:
        return name[len(prefix) + 1:]
    return f"{prefix}.{name}" if prefix and f"{prefix}.{name}" in keys else None


@torch.no_grad()
def load_safetensors(model: nn.Module, model_dir: str, opener: Callable[[str], AbstractContextManager] = _open_safetensors
                     ) -> dict[str, list[str]]:
    """Stream an HF safetensors directory into `model`'s (sharded) tensors: each rank reads only its own
    slice of each tensor (`get_slice`), one tensor at a time. Returns {"loaded", "missing", "mismatched"}.
    `opener` is the injection point tests use to watch what is read."""
    targets = _named_tensors(model)
    prefix = getattr(model, "base_model_prefix", "")
    loaded, mismatched, filled = [], [], set()
    for path in safetensors_files(model_dir):
        with opener(path) as f:
            keys = set(f.keys())
            for name, target in targets.items():
                key = _file_key(name, keys, prefix)
                if key is None or id(target) in filled:
                    continue
                sl = f.get_slice(key)
                if tuple(sl.get_shape()) != tuple(target.shape):
                    mismatched.append(name)
                    continue
                part = sl[local_slices(target.shape, target)]
                _local(target).copy_(part.to(device=target.device, dtype=target.dtype))
                loaded.append(name)
                filled.add(id(target))
    missing = [n for n, t in targets.items() if id(t) not in filled]
    return {"loaded": loaded, "missing": missing, "mismatched": mismatched, "filled": filled}


# ---------------------------------------------------------------- materialise


def materialize(model: nn.Module, device: torch.device, seed: int, weights_dir: str | None = None,
                say: Callable[[str], None] = lambda _: None) -> nn.Module:
    """Allocate a meta-built (and sharded) model's local storage on `device`, then fill it: from
    `weights_dir` (HF safetensors) where it has the tensor, from the seeded config init elsewhere."""
    model.to_empty(device=device)
    filled: set[int] = set()
    if weights_dir:
        res = load_safetensors(model, weights_dir)
        filled = res["filled"]
        if res["missing"] or res["mismatched"]:
            say(f"[raylm] {weights_dir}: initialised from config (not in the checkpoint): "
                f"{(res['missing'] + res['mismatched'])[:6]}")
    filled |= init_weights(model, seed, only=lambda t: id(t) not in filled)
    unset = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if id(t) not in filled]
    if unset:
        raise RuntimeError(f"materialised model has tensors nothing initialised: {unset[:6]}")
    return model
