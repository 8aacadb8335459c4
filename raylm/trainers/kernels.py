"""Fused kernels, from a well-kept library where one exists, and a loss that never materialises the
full fp32 logits.

- Liger Kernel (`pip install 'raylm[kernels]'`, CUDA only): RMSNorm, RoPE and SwiGLU for the
  `llama` architecture when its blocks are not compiled (compiled, inductor fuses those better), and
  its fused linear cross-entropy (the logits are computed chunk by chunk
  inside the kernel and never stored), applied to the model instance: the HF export is unchanged.
- Elsewhere (GPT-2 blocks, CPU, no Liger): `chunked_linear_cross_entropy`, which computes the lm
  head and the loss over chunks of positions under activation checkpointing, so at most one chunk
  of fp32 logits exists at a time, in forward and in backward.

`trainer.fused_kernels: auto` turns this on for CUDA; `on` also on CPU (the chunked loss).
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from raylm.trainers.adapters import base_of
from raylm.trainers.state import unwrap

log = logging.getLogger(__name__)
CHUNK_ROWS = 4096  # positions per chunk: 4096 x 50k vocab x 4 B = 0.8 GB of fp32 logits at most


def liger() -> Any | None:
    """The liger_kernel.transformers module, or None when it is not installed."""
    try:
        import liger_kernel.transformers as lk
    except ImportError:
        return None
    return lk


def enabled(mode: str, device: torch.device) -> bool:
    return mode == "on" or (mode == "auto" and device.type == "cuda")


_FUSED_LOSS_MODELS = ("gpt2", "llama")  # their lm head reads the final hidden states as is (no softcap, no scale)


def apply_fused_kernels(model: torch.nn.Module, fused_loss: bool, mode: str, device: torch.device,
                        say: Callable[[str], None], compiled: bool = False) -> bool:
    """Patch the model instance with Liger's kernels where they apply; True when the fused loss is used.
    `fused_loss`: the task's loss is next-token cross-entropy (`Task.fused_loss`).
    `compiled`: the blocks will be torch.compiled; inductor then fuses RMSNorm, RoPE and SwiGLU itself,
    and Liger's hand-written kernels inside a compiled block only cut its graph into pieces
    (H200, 1.1B llama: 43.5% MFU with them against 49.0% for the same blocks compiled without), so
    only the fused linear cross-entropy (outside the blocks) is used."""
    model = base_of(model)  # model.adapter: Liger patches the transformers model inside the peft one
    kind = getattr(model.config, "model_type", "")
    if not enabled(mode, device) or not fused_loss or kind not in _FUSED_LOSS_MODELS:
        return False
    if not isinstance(model.get_output_embeddings(), torch.nn.Linear):  # a peft wrapper (trainable tokens)
        return False
    lk = liger()
    if device.type == "cuda" and lk is None:
        say("[raylm] fused kernels: Liger Kernel is not installed (pip install 'raylm[kernels]'); "
            "using the chunked cross-entropy only")
    elif device.type == "cuda" and kind == "llama" and not compiled:
        lk._apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=False, cross_entropy=False)
    _pass_hidden(model.get_output_embeddings())
    return True


def _pass_hidden(head: torch.nn.Module) -> None:
    """While `head._raylm_pass` is set, the lm head returns its input (the final hidden states): the
    model's forward then skips the full-vocabulary matmul and the loss computes it chunk by chunk."""
    linear_forward = head.forward

    def forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x if getattr(self, "_raylm_pass", False) else linear_forward(x)

    head.forward = types.MethodType(forward, head)


def chunked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                 chunk: int = CHUNK_ROWS) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `labels` (-100 ignored), one chunk of rows at
    a time; each chunk's logits are recomputed in backward instead of stored."""
    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, hidden.shape[0], chunk):
        total = total + checkpoint(_chunk_loss_sum, hidden[s:s + chunk], weight, labels[s:s + chunk],
                                   use_reentrant=False)
    return total / labels.ne(-100).sum()  # a device tensor: no host sync (0 targets gives nan, as HF does)


def _chunk_loss_sum(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy((h @ w.t()).float(), y, ignore_index=-100, reduction="sum")


def causal_lm_fused_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Causal LM loss through the (wrapped) model without the full logits: HF's shift (position t
    predicts t+1) and its -100 convention, so the value equals `model(..., labels=...).loss`."""

    head = unwrap(model).get_output_embeddings()
    head._raylm_pass = True
    try:  # through the wrapper: DDP/FSDP hooks run as in a plain forward
        hidden = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                       position_ids=inputs.get("position_ids"), use_cache=False).logits  # packed rows: document masking
    finally:
        head._raylm_pass = False
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = inputs["labels"][:, 1:].reshape(-1)
    lk = liger() if h.is_cuda else None
    if lk is not None:
        return lk.LigerFusedLinearCrossEntropyLoss()(head.weight, h, y, head.bias)
    return chunked_linear_cross_entropy(h, head.weight, y)


def loss_fn_for(task: Any, fused: bool) -> Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]:
    """The task's loss, or the fused causal LM loss when `apply_fused_kernels` said it applies."""
    return causal_lm_fused_loss if fused else task.loss
