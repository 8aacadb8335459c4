"""Packing with document masking: several examples in one row, positions restarting for each, and no token
attending outside its own example.

The block-diagonal causal mask is not built here: transformers (>= 4.56, `masking_utils`) reads the restarting
`position_ids` of a row passed without an attention mask as packed sequences and builds block-causal attention
for every kernel (sdpa and eager on CPU, varlen flash attention on CUDA: the padding-free path), which gives the
logits each example has alone. The first token of each example is no target (it would be predicted from the
example before it).
"""

from __future__ import annotations

import bisect

import numpy as np
import torch

from raylm.errors import UserError
from raylm.tasks.collate import IGNORE


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of at most `capacity`, longest first, each into the fullest bin
    it fits (best fit decreasing); bins in order of creation, examples in each in order of placement."""
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = min(lengths[i], capacity)
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, b))
    return bins


def segment_positions(seq_lens: list[int] | np.ndarray, width: int) -> np.ndarray:
    """Positions 0.. restarting at each example of a packed row, the padding after them a segment of its own."""
    out = np.zeros(width, dtype=np.int64)
    at = 0
    for n in list(seq_lens) + [width - int(np.sum(seq_lens))]:
        out[at: at + n] = np.arange(n)
        at += n
    return out


def document_positions(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Positions of packed corpus blocks [b, t] restarting after each EOS (a document ends with its EOS)."""
    b, t = ids.shape
    idx = torch.arange(t).expand(b, t)
    starts = torch.zeros_like(ids, dtype=torch.bool)
    starts[:, 1:] = ids[:, :-1].eq(eos_id)
    starts[:, 0] = True
    last_start = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - last_start


def mask_segment_starts(labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """`labels` with each segment's first token no target (HF shifts labels: it would be predicted across)."""
    return labels.masked_fill(positions.eq(0), IGNORE)


def packed_batch(ids: list, labels: list, seq_lens: list, pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids, labels and position_ids of packed rows, right-padded to the longest (no attention mask: the
    positions carry the example boundaries)."""
    width = max(len(r) for r in ids)
    out_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    out_labels = torch.full((len(ids), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(ids), width), dtype=torch.long)
    for i, (r, lab, lens) in enumerate(zip(ids, labels, seq_lens)):
        out_ids[i, : len(r)] = torch.as_tensor(np.asarray(r), dtype=torch.long)
        out_labels[i, : len(lab)] = torch.as_tensor(np.asarray(lab), dtype=torch.long)
        pos[i] = torch.from_numpy(segment_positions(np.asarray(lens), width))
    return {"input_ids": out_ids, "labels": mask_segment_starts(out_labels, pos), "position_ids": pos}


def check_packing_support() -> None:
    """A UserError when the installed transformers cannot read packed positions (before 4.56)."""
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError:
        import transformers

        raise UserError(f"packing with document masking needs transformers >= 4.56 (installed: "
                        f"{transformers.__version__})", hint="pip install -U transformers, or set "
                        "data.sft.packing: false / data.document_masking: false") from None


def packing_problems() -> list[str]:
    """The config checks' view of `check_packing_support`: [] or its one line."""
    try:
        check_packing_support()
    except UserError as err:
        return [str(err)]
    return []
