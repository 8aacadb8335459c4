"""`raylm export`: a checkpoint (sharded or hf) -> one directory `from_pretrained` loads.

A sharded checkpoint is consolidated one output file at a time: the model's tensors are grouped into
safetensors files of at most `max_shard_gb` (plus `model.safetensors.index.json` when there are
several, as `save_pretrained` writes them), and each group is read from DCP on its own, so the
exporting process holds one file's worth of weights, never the optimizer. Tied weights are stored
once (HF convention); the tokenizer named by the prepared data's manifest is copied alongside.

An adapter run's checkpoint (model.adapter) exports as an adapter directory: peft's adapter_model.safetensors
+ adapter_config.json (base_model_name_or_path: the absolute `model.init_from`, or `base/` inside the export
when the base was built from config), the tokenizer, the checkpoint's generation_config.json and raylm.json
({"task", "base", "adapter", "vocab_size"}); `PeftModel.from_pretrained(base, export)` or
`raylm.trainers.adapters.load_causal_lm(export)` loads it. With `merge` the adapter is merged into the base
(`merge_and_unload`): one whole model directory, config.json keeping `raylm_task`.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import torch

from raylm.config import RootConfig, load_config
from raylm.errors import UserError
from raylm.tasks.objectives import best_checkpoint_rule
from raylm.trainers import adapters
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
    return manifest_tokenizer(load_config(path, []).data.prepared_dir)


def manifest_tokenizer(prepared_dir: str) -> str | None:
    """The tokenizer_dir a prepared directory's manifest names, if any."""
    manifest = os.path.join(prepared_dir, "manifest.json")
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
                      max_shard_gb: float = 5.0, merge: bool = False, cfg: RootConfig | None = None) -> str:
    """Either checkpoint format -> `out_dir` (written beside it, then swapped in: never half a directory).
    An adapter checkpoint needs its run's config (`cfg`, else the config.yaml of the run directory above
    it): the adapter directory, or with `merge` the merged model."""
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    cast = DTYPES[dtype] if dtype else None
    if is_adapter_checkpoint(ckpt_dir):
        export_adapter(ckpt_dir, tmp, cfg or run_config_of(ckpt_dir), cast, merge, max_shard_gb,
                       final_dir=os.path.abspath(out_dir))
    elif is_sharded(ckpt_dir):
        consolidate(ckpt_dir, tmp, cast, max_shard_gb)
    else:
        _cast_hf(os.path.join(ckpt_dir, "model"), tmp, cast)
    if tokenizer_dir:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


# ---------------------------------------------------------------- adapter runs


def is_adapter_checkpoint(ckpt_dir: str) -> bool:
    """A checkpoint of a model.adapter run: peft's adapter_config.json in model/ (hf) or hf_config/ (sharded)."""
    return any(os.path.isfile(os.path.join(ckpt_dir, sub, adapters.ADAPTER_CONFIG)) for sub in ("model", HF_CONFIG_DIR))


def run_config_of(ckpt_dir: str) -> RootConfig:
    """The config of the run a checkpoint belongs to (run_dir/config.yaml, the checkpoint's parent)."""
    path = os.path.join(os.path.dirname(os.path.abspath(ckpt_dir.rstrip("/"))), "config.yaml")
    if not os.path.isfile(path):
        raise UserError(f"{ckpt_dir}: an adapter checkpoint exports with its run's config (the base is rebuilt "
                        f"from it), and there is no {path}", hint="raylm export RUN_DIR --checkpoint CHECKPOINT")
    return load_config(path, [])


def build_base(cfg: RootConfig) -> torch.nn.Module:
    """An adapter run's frozen base, as the loop built it (the task's model from model.init_from, or from
    config with raylm's seeded init). A qlora base is loaded unquantized: its adapter merges into full weights."""
    from raylm.tasks.registry import get_task, model_meta
    from raylm.trainers.materialize import init_weights
    from raylm.trainers.state import seed_everything

    if cfg.model.adapter.type == "qlora":
        model_cfg = cfg.model.model_copy(update={"adapter": cfg.model.adapter.model_copy(update={"type": "lora"})})
        cfg = cfg.model_copy(update={"model": model_cfg})
    manifest_path = os.path.join(cfg.data.prepared_dir, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise UserError(f"{manifest_path}: an adapter run's base is rebuilt from its prepared data's manifest "
                        "(vocabulary, special ids), and there is none", hint="raylm prepare CONFIG first")
    with open(manifest_path) as f:
        manifest = json.load(f)
    seed_everything(cfg.trainer.seed)  # as the loop before it builds the model: the same base
    model = get_task(cfg.trainer.task).build_model(cfg, model_meta(cfg, manifest))
    if not cfg.model.init_from:
        init_weights(model, cfg.trainer.seed)
    return model


def _adapter_model(ckpt_dir: str, base: torch.nn.Module) -> torch.nn.Module:
    """`base` with the checkpoint's adapter (its saved adapter config), weights loaded from model/ or dcp/."""
    from peft import LoraConfig, get_peft_model

    sharded = is_sharded(ckpt_dir)
    conf = LoraConfig.from_pretrained(os.path.join(ckpt_dir, HF_CONFIG_DIR if sharded else "model"))
    conf.inference_mode = False  # the adapter's tensors stay trainable: they are what dcp/ holds by name
    model = get_peft_model(base, conf)
    if not sharded:
        adapters.load_adapter_weights(model, os.path.join(ckpt_dir, "model"))
    else:
        import torch.distributed.checkpoint as dcp

        part = {"model": {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}}
        dcp.load(part, checkpoint_id=os.path.join(ckpt_dir, DCP_DIR), no_dist=True)  # in place; a missing key raises
    return model.eval()


def export_adapter(ckpt_dir: str, out_dir: str, cfg: RootConfig, dtype: torch.dtype | None, merge: bool,
                   max_shard_gb: float, final_dir: str | None = None) -> None:
    """An adapter checkpoint -> an adapter directory (base named by path), or with `merge` the merged model.
    `final_dir`: where `out_dir` will be moved (a base written into the export is named by that path)."""
    final_dir = final_dir or os.path.abspath(out_dir)
    task, init_from = cfg.trainer.task, cfg.model.init_from
    base_path = os.path.abspath(init_from) if init_from else os.path.join(final_dir, "base")
    if not merge and init_from and not is_sharded(ckpt_dir):  # the adapter's files as they are: no base loaded
        src = os.path.join(ckpt_dir, "model")
        for f in os.listdir(src):
            shutil.copy(os.path.join(src, f), out_dir)
        vocab = _adapter_vocab(out_dir)
    else:
        base = build_base(cfg)
        vocab = adapters.vocab_size(base)
        if not merge and not init_from:  # built from config: the export carries its base
            base.config.raylm_task = task
            base.save_pretrained(os.path.join(out_dir, "base"), safe_serialization=True)
        model = _adapter_model(ckpt_dir, base)
        if merge:
            merged = model.merge_and_unload()
            merged.config.raylm_task = task
            if dtype:
                merged.to(dtype)
            merged.save_pretrained(out_dir, safe_serialization=True, max_shard_size=f"{int(max_shard_gb * 1024)}MB")
            return
        adapters.save_adapter(model, out_dir)
        config_dir = os.path.join(ckpt_dir, HF_CONFIG_DIR if is_sharded(ckpt_dir) else "model")
        if os.path.isfile(os.path.join(config_dir, "generation_config.json")):
            shutil.copy(os.path.join(config_dir, "generation_config.json"), out_dir)
    if dtype:
        _cast_hf_file(os.path.join(out_dir, adapters.ADAPTER_WEIGHTS), dtype)
    path = os.path.join(out_dir, adapters.ADAPTER_CONFIG)
    conf = json.load(open(path))
    conf["base_model_name_or_path"] = base_path
    json.dump(conf, open(path, "w"), indent=2)
    grown = bool(init_from and adapters.grown_tokens_of(init_from, vocab))
    info = {"task": task, "base": base_path, "adapter": cfg.model.adapter.type,
            **({"vocab_size": vocab} if grown else {})}
    json.dump(info, open(os.path.join(out_dir, adapters.RAYLM_JSON), "w"), indent=2)


def _adapter_vocab(adapter_dir: str) -> int | None:
    """The vocabulary an adapter was trained with when it holds trainable tokens (their highest id + 1)."""
    conf = json.load(open(os.path.join(adapter_dir, adapters.ADAPTER_CONFIG)))
    ids = conf.get("trainable_token_indices") or []
    ids = [i for v in ids.values() for i in v] if isinstance(ids, dict) else ids
    return max(ids) + 1 if ids else None


def _cast_hf_file(path: str, dtype: torch.dtype) -> None:
    from safetensors.torch import load_file, save_file

    sd = load_file(path)
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}, path, metadata={"format": "pt"})


def main(run_dir: str, checkpoint: str = "last", dtype: str | None = None, out_dir: str | None = None,
         max_shard_gb: float = 5.0, merge: bool = False) -> dict[str, Any]:
    """`raylm export RUN_DIR`: resolve the checkpoint, consolidate it, copy the tokenizer. An adapter run:
    the adapter directory, or with `merge` the base with the adapter merged in."""
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir}: no such run directory")
    if dtype and dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    out = out_dir or os.path.join(run_dir, "export")
    config = os.path.join(run_dir, "config.yaml")
    cfg = load_config(config, []) if os.path.isfile(config) else None
    export_checkpoint(ckpt, out, tokenizer_dir_of(run_dir), dtype, max_shard_gb, merge=merge, cfg=cfg)
    return {"checkpoint": ckpt, "export_dir": out}
