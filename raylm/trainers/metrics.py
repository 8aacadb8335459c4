"""Throughput and MFU. FLOPs per token follow PaLM (Chowdhery et al. 2022, app. B): 6N + 12·L·H·Q·T."""

from __future__ import annotations

import torch

# Dense bf16 peak per device, FLOP/s (vendor datasheets, no sparsity).
PEAK_FLOPS = {
    "A100": 312e12,
    "H100": 989e12,
    "H200": 989e12,
    "L4": 121e12,
    "A10G": 125e12,
    "L40S": 362e12,
}


def non_embedding_params(model: torch.nn.Module) -> int:
    """Parameters doing matmul work per token: all but position embeddings (the tied lm head counts)."""
    total = sum(p.numel() for p in model.parameters())
    for name, p in model.named_parameters():
        if "wpe" in name or "position_embeddings" in name:
            total -= p.numel()
    return total


def flops_per_token(n_params: int, n_layer: int, n_head: int, head_dim: int, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM's formula."""
    return 6.0 * n_params + 12.0 * n_layer * n_head * head_dim * seq_len


def device_peak_flops(device: torch.device, configured: float | None) -> float | None:
    if configured:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in PEAK_FLOPS.items():
            if key in name:
                return peak
    return None


def mfu(tokens_per_s_per_device: float, fpt: float, peak: float | None) -> float | None:
    return None if not peak else tokens_per_s_per_device * fpt / peak


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
