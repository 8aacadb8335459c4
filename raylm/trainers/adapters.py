"""`model.adapter`: LoRA, DoRA and QLoRA adapters through `peft` (issue 29). The base stays frozen; only the
adapter's parameters reach the optimizer and the checkpoints."""

from __future__ import annotations

from typing import Any

from raylm.trainers.config import ModelConfig


def pretrained_kwargs(m: ModelConfig) -> dict[str, Any]:
    """Keyword arguments of `from_pretrained` for `model.init_from`: safetensors weights only, no shipped code
    unless `model.trust_remote_code`."""
    return {"use_safetensors": True, "trust_remote_code": m.trust_remote_code}
