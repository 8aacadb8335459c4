"""`raylm export`: a checkpoint (sharded or hf) -> one directory `from_pretrained` loads.

A sharded checkpoint is consolidated one output file at a time: the model's tensors are grouped into
safetensors files of at most `max_shard_gb` (plus `model.safetensors.index.json` when there are
several, as `save_pretrained` writes them), and each group is read from DCP on its own, so the
exporting process holds one file's worth of weights, never the optimizer. Tied weights are stored
once (HF convention); the tokenizer named by the prepared data's manifest is copied alongside.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import torch

from raylm.config import load_config
from raylm.errors import UserError
from raylm.tasks.objectives import best_checkpoint_rule
from raylm.trainers.checkpoint import DCP_DIR, HF_CONFIG_DIR, is_sharded

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------- which checkpoint


def registered_checkpoints(run_dir: str) -> list[dict]:
    """The checkpoints Ray Train registered for a run (complete ones only), oldest first."""
    path = os.path.join(run_dir, "checkpoint_manager_snapshot.json")
    try:
        snap = json.load(open(path))
    except (OSError, ValueError):
        raise UserError(f"{run_dir}: not a raylm run directory with checkpoints (no readable {os.path.basename(path)})",
                        hint="pass the run directory `raylm train` printed, e.g. runs/<run_name>") from None
    rows = [r for r in snap.get("checkpoint_results", [])
            if os.path.isdir(os.path.join(run_dir, r["checkpoint_dir_name"]))]
    if not rows:
        raise UserError(f"{run_dir}: the run has no complete checkpoint yet")
    return sorted(rows, key=lambda r: r["metrics"].get("step", 0))


def _rule(run_dir: str) -> tuple[str, str]:
    """(metric, mode) that ranks checkpoints, from the run's saved config (val_loss/min without one)."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        return "val_loss", "min"
    cfg = load_config(path, [])
    return best_checkpoint_rule(cfg)


def resolve_checkpoint(run_dir: str, which: str = "last") -> str:
    """`last`, `best` (by the run's metric) or a checkpoint path."""
    if which not in ("last", "best"):
        path = which if os.path.isabs(which) or os.path.isdir(which) else os.path.join(run_dir, which)
        if not (os.path.isdir(os.path.join(path, "model")) or is_sharded(path)):
            raise UserError(f"{which}: not a raylm checkpoint (neither model/ nor {DCP_DIR}/.metadata in it)")
        return path
    rows = registered_checkpoints(run_dir)
    if which == "best":
        metric, mode = _rule(run_dir)
        scored = [r for r in rows if isinstance(r["metrics"].get(metric), (int, float))]
        if scored:
            pick = max if mode == "max" else min
            return os.path.join(run_dir, pick(scored, key=lambda r: r["metrics"][metric])["checkpoint_dir_name"])
    return os.path.join(run_dir, rows[-1]["checkpoint_dir_name"])


def tokenizer_dir_of(run_dir: str) -> str | None:
    """The tokenizer of the run's prepared data (its manifest's tokenizer_dir), if any."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        return None
    manifest = os.path.join(load_config(path, []).data.prepared_dir, "manifest.json")
    return json.load(open(manifest)).get("tokenizer_dir") if os.path.exists(manifest) else None


# ---------------------------------------------------------------- consolidation


def skeleton(hf_config_dir: str) -> torch.nn.Module:
    """The checkpoint's model class on the meta device (no storage), from its saved HF config."""
    import transformers

    conf = transformers.AutoConfig.from_pretrained(hf_config_dir)
    cls = getattr(transformers, (conf.architectures or ["AutoModel"])[0])
    with torch.device("meta"):
        return cls(conf) if cls is not transformers.AutoModel else cls.from_config(conf)


def export_keys(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What save_pretrained would write: the state dict minus tied copies and ignored keys."""
    sd = model.state_dict()
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    ignore = set(getattr(model, "_keys_to_ignore_on_save", None) or [])
    return {k: v for k, v in sd.items() if k not in tied and k not in ignore}


def plan_files(tensors: dict[str, torch.Tensor], max_bytes: int, dtype: torch.dtype | None) -> list[list[str]]:
    """Keys grouped into files of at most `max_bytes` each, in order (a bigger tensor gets its own file)."""
    files: list[list[str]] = [[]]
    size = 0
    for k, t in tensors.items():
        n = t.numel() * (dtype or t.dtype).itemsize
        if files[-1] and size + n > max_bytes:
            files.append([])
            size = 0
        files[-1].append(k)
        size += n
    return files


def consolidate(ckpt_dir: str, out_dir: str, dtype: torch.dtype | None = None, max_shard_gb: float = 5.0) -> None:
    """Sharded checkpoint -> safetensors file(s) + config in `out_dir`, one output file in memory at a time."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file

    model = skeleton(os.path.join(ckpt_dir, HF_CONFIG_DIR))
    tensors = export_keys(model)
    groups = plan_files(tensors, int(max_shard_gb * 2**30), dtype)
    names = (["model.safetensors"] if len(groups) == 1 else
             [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))])
    weight_map, total = {}, 0
    for name, keys in zip(names, groups):
        part = {"model": {k: torch.empty(tensors[k].shape, dtype=tensors[k].dtype) for k in keys}}
        dcp.load(part, checkpoint_id=os.path.join(ckpt_dir, DCP_DIR), no_dist=True)
        out = {k: (v.to(dtype) if dtype and v.is_floating_point() else v).contiguous() for k, v in part["model"].items()}
        save_file(out, os.path.join(out_dir, name), metadata={"format": "pt"})
        total += sum(v.numel() * v.element_size() for v in out.values())
        weight_map.update(dict.fromkeys(keys, name))
    if len(names) > 1:
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    for f in os.listdir(os.path.join(ckpt_dir, HF_CONFIG_DIR)):
        shutil.copy(os.path.join(ckpt_dir, HF_CONFIG_DIR, f), out_dir)
    if dtype:
        _set_config_dtype(out_dir, dtype)


def _set_config_dtype(out_dir: str, dtype: torch.dtype) -> None:
    path = os.path.join(out_dir, "config.json")
    conf = json.load(open(path))
    conf["dtype"] = str(dtype).removeprefix("torch.")
    json.dump(conf, open(path, "w"), indent=2)


def _cast_hf(model_dir: str, out_dir: str, dtype: torch.dtype | None) -> None:
    """An hf checkpoint's model/ as is, or cast file by file."""
    from safetensors.torch import load_file, save_file

    for f in os.listdir(model_dir):
        src = os.path.join(model_dir, f)
        if dtype and f.endswith(".safetensors"):
            sd = load_file(src)
            save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()},
                      os.path.join(out_dir, f), metadata={"format": "pt"})
        else:
            shutil.copy(src, out_dir)
    if dtype:
        _set_config_dtype(out_dir, dtype)


def export_checkpoint(ckpt_dir: str, out_dir: str, tokenizer_dir: str | None = None, dtype: str | None = None,
                      max_shard_gb: float = 5.0) -> str:
    """Either checkpoint format -> `out_dir` (written beside it, then swapped in: never half a directory)."""
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    cast = DTYPES[dtype] if dtype else None
    if is_sharded(ckpt_dir):
        consolidate(ckpt_dir, tmp, cast, max_shard_gb)
    else:
        _cast_hf(os.path.join(ckpt_dir, "model"), tmp, cast)
    if tokenizer_dir:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def main(run_dir: str, checkpoint: str = "last", dtype: str | None = None, out_dir: str | None = None,
         max_shard_gb: float = 5.0) -> dict[str, Any]:
    """`raylm export RUN_DIR`: resolve the checkpoint, consolidate it, copy the tokenizer."""
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir}: no such run directory")
    if dtype and dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    out = out_dir or os.path.join(run_dir, "export")
    export_checkpoint(ckpt, out, tokenizer_dir_of(run_dir), dtype, max_shard_gb)
    return {"checkpoint": ckpt, "export_dir": out}
