"""Batch building shared by the tasks and by per-file evaluation: padding variable-length rows, BERT's
special tokens around a sequence, and BERT's dynamic masking."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from raylm.tasks.meta import ModelMeta

IGNORE = -100  # the label of a position that is no target (HF's ignore_index)


def pad(rows: Any, value: int, width: int | None = None) -> torch.Tensor:
    """Variable-length int rows -> a [n, width] long tensor (width: the longest row)."""
    rows = [np.array(r) for r in rows]  # a copy: Ray's arrays are read-only
    width = width or max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r[:width], dtype=torch.long)
    return out


def pad_batch(seqs: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) right-padded to the longest sequence of the batch (not to
    max_length: length-bucketed batches then carry little padding). Used by training and `raylm eval`."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1  # by length: a real token may share the pad id (GPT-style pad = EOS)
    return ids, mask


def with_special_tokens(ids: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """[CLS] ids [SEP] for tokenizers that define them (BERT-style pretrained encoders read the
    first position), the ids truncated to max_length - 2; shards hold ids without special tokens.

    Shards of prepare schema < 4 stored ids padded to the tokenizer's fixed length: trailing pad ids
    are dropped first, so [SEP] follows the last real token (issue 15), not the padding.
    """
    body = np.asarray(ids)
    pad = meta.pad_id
    if pad is not None and len(body) and body[-1] == pad:
        real = np.flatnonzero(body != pad)
        body = body[: real[-1] + 1 if len(real) else 1]
    cls_id, sep_id = meta.cls_id, meta.sep_id
    if cls_id is None or sep_id is None:
        return body
    body = body[: max(1, (meta.max_length or len(body) + 2) - 2)]
    return np.concatenate([[cls_id], body, [sep_id]])


def mask_tokens(ids: torch.Tensor, meta: ModelMeta, gen: torch.Generator, prob: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT dynamic masking: 15% of tokens are targets; of those 80% [MASK], 10% random, 10% kept."""
    labels = ids.clone()
    special = ids.eq(meta.eos_id) | ids.eq(meta.pad_id)
    chosen = (torch.rand(ids.shape, generator=gen) < prob) & ~special
    labels[~chosen] = IGNORE
    return replace_chosen(ids, chosen, meta, gen), labels


def replace_chosen(ids: torch.Tensor, chosen: torch.Tensor, meta: ModelMeta, gen: torch.Generator) -> torch.Tensor:
    """A copy of `ids` where the chosen targets are 80% [MASK], 10% a random token, 10% kept (BERT)."""
    roll = torch.rand(ids.shape, generator=gen)
    ids = ids.clone()
    ids[chosen & (roll < 0.8)] = meta.mask_id
    rand = chosen & (roll >= 0.8) & (roll < 0.9)
    ids[rand] = torch.randint(meta.vocab_size, ids.shape, generator=gen)[rand]
    return ids
