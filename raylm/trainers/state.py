"""Checkpoint state: HF model directory (safetensors) + a small, explicit training state.

This is the hf format (DDP); `raylm.trainers.checkpoint` adds the sharded one and restores both.
Layout of an hf checkpoint directory:
  model/            save_pretrained (safetensors), loadable by transformers as is; on an adapter run
                    (model.adapter) peft's adapter_model.safetensors + adapter_config.json only
  state.pt          optimizer, scheduler, step, data position, metrics so far
  rng_rank{r}.pt    torch RNG state of each rank
  metrics.jsonl     the metric history up to this step (for runs on remote storage)
Everything is loaded with `torch.load(weights_only=True)` or safetensors: no pickled code.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from raylm.trainers.adapters import is_peft, save_adapter


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # the stream's position in `epoch`: this worker's batches (split), global ones (stride)
    world: int = 0  # the worker count that wrote it (0: before raylm recorded it)
    sharding: str = "split"  # how the position counts (raylm.datasets.sharding)
    tokens_seen: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainState":
        """The state saved by `save`; keys this version no longer has (e.g. `best_metric`, in
        checkpoints written before it was dropped) are ignored."""
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def save(dirpath: str, model: torch.nn.Module, sched: Any, state: TrainState, rank: int,
         model_state: dict, optim_state: dict, metrics_file: str | None = None) -> None:
    """Write this rank's part of a checkpoint into `dirpath` (rank 0 writes model + state).

    `model_state`/`optim_state` are full state dicts keyed by parameter name (see
    `parallel.full_state`), so DDP and FSDP checkpoints have one format.
    """
    os.makedirs(dirpath, exist_ok=True)
    save_rng(dirpath, rank)
    if rank != 0:
        return
    if is_peft(unwrap(model)):  # model.adapter: peft's adapter files, the frozen base left out
        save_adapter(model, os.path.join(dirpath, "model"), model_state)
    else:
        unwrap(model).save_pretrained(os.path.join(dirpath, "model"), state_dict=model_state, safe_serialization=True)
    torch.save({"optimizer": optim_state, "scheduler": sched.state_dict(), "state": asdict(state)},
               os.path.join(dirpath, "state.pt"))
    if metrics_file and os.path.exists(metrics_file):
        shutil.copy(metrics_file, os.path.join(dirpath, "metrics.jsonl"))


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's generators from one seed (the loop before it builds a model; export too)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_rng(dirpath: str, rank: int) -> None:
    torch.save({"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
               os.path.join(dirpath, f"rng_rank{rank}.pt"))


def load_rng(dirpath: str, rank: int) -> None:
    """This rank's RNG as saved; a rank the checkpoint has no file for (more workers now) keeps its own."""
    rng_path = os.path.join(dirpath, f"rng_rank{rank}.pt")
    if os.path.exists(rng_path):
        rng = torch.load(rng_path, weights_only=True)
        torch.set_rng_state(rng["torch"])
        random.setstate((3, tuple(rng["python"]), None))
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def load_model_weights(model: torch.nn.Module, model_dir: str) -> None:
    from safetensors.torch import load_file

    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(os.path.join(model_dir, f)))
    missing, unexpected = unwrap(model).load_state_dict(sd, strict=False)
    # Tied weights (lm_head = wte; BERT's cls.predictions.decoder = the word embeddings) are saved once;
    # anything else missing is a real mismatch.
    tied = set(getattr(unwrap(model), "all_tied_weights_keys", None) or {})
    missing = [k for k in missing if "lm_head" not in k and k not in tied]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


