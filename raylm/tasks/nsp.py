"""BERT pretraining: masked LM + next-sentence prediction (Devlin et al. 2019, 3.1), the model and
batches of `trainer.task: masked-lm` when the prepared shards hold sentence pairs (`data.nsp: true`,
`raylm.tasks.nsp_data`; the manifest says `nsp: true`). `tasks.MaskedLM` hands over to it.

The model is `BertForPreTraining` (built from `model`, or `model.init_from` a BERT directory: a
missing NSP head starts fresh); its training loss is HF's, the MLM loss (mean over masked tokens)
plus the NSP loss (mean over pairs). Validation reports the MLM loss as `val_loss` (and `val_ppl`),
and `val_nsp_accuracy`, `val_nsp_loss` over every rank's validation pairs (one all-reduce).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from raylm.config import RootConfig
from raylm.errors import UserError
from raylm.tasks.collate import IGNORE, pad, replace_chosen
from raylm.tasks.meta import ModelMeta

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def check_config(cfg: RootConfig) -> list[str]:
    if cfg.data.nsp and not cfg.model.init_from and cfg.model.arch != "bert":
        return [f"data.nsp trains BertForPreTraining: set model.arch to bert (got {cfg.model.arch}; "
                "RoBERTa has no next-sentence head), or model.init_from to a BERT directory"]
    return []


def build_model(cfg: RootConfig, meta: ModelMeta) -> torch.nn.Module:
    from transformers import BertConfig, BertForPreTraining

    m = cfg.model
    if m.init_from:
        return BertForPreTraining.from_pretrained(m.init_from, attn_implementation=m.attn_implementation)
    if m.arch != "bert":
        raise UserError(check_config(cfg) or [f"model.arch={m.arch}: NSP shards need a BERT model"])
    conf = BertConfig(vocab_size=meta.vocab_size, hidden_size=m.n_embd, num_hidden_layers=m.n_layer,
                      num_attention_heads=m.n_head, intermediate_size=4 * m.n_embd,
                      max_position_embeddings=meta.block_size, type_vocab_size=2, pad_token_id=meta.pad_id,
                      hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.dropout)
    conf._attn_implementation = m.attn_implementation
    return BertForPreTraining(conf)


# ---------------------------------------------------------------- batches


def mask_pairs(ids: torch.Tensor, special: torch.Tensor, meta: ModelMeta, gen: torch.Generator,
               prob: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT dynamic masking over the non-special tokens: `prob` of them are targets, of those 80%
    [MASK], 10% a random token, 10% kept. A batch gets at least one target (else its MLM loss is NaN)."""
    chosen = (torch.rand(ids.shape, generator=gen) < prob) & ~special
    if not chosen.any():
        free = (~special).flatten().nonzero()
        if len(free):
            chosen.view(-1)[free[torch.randint(len(free), (1,), generator=gen)]] = True
    labels = ids.masked_fill(~chosen, IGNORE)
    return replace_chosen(ids, chosen, meta, gen), labels


def pad_pairs(batch: dict[str, Any], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids, token_type_ids and attention_mask of variable-length pairs, right-padded to the longest."""
    ids = pad(batch["input_ids"], pad_id)
    return {"input_ids": ids, "token_type_ids": pad(batch["token_type_ids"], 0, ids.shape[1]),
            "attention_mask": pad([np.ones(len(r)) for r in batch["input_ids"]], 0, ids.shape[1])}


def collate(batch: dict[str, Any], meta: ModelMeta, step_seed: int, prob: float = 0.15) -> dict[str, torch.Tensor]:
    """Padded pairs, masked (the seed makes a batch's masks the same after a resume), NSP labels."""
    out = pad_pairs(batch, meta.pad_id)
    ids = out["input_ids"]
    special = out["attention_mask"].eq(0) | ids.eq(meta.cls_id) | ids.eq(meta.sep_id)
    out["input_ids"], out["labels"] = mask_pairs(ids, special, meta, torch.Generator().manual_seed(step_seed), prob)
    out["next_sentence_label"] = torch.from_numpy(np.array(batch["next_sentence_label"], dtype=np.int64))  # a copy: Ray's arrays are read-only
    if "sample_id" in batch:
        out["sample_id"] = torch.from_numpy(np.array(batch["sample_id"]))
    return out


def fake_raw_batch(meta: ModelMeta, b: int, seq_len: int) -> dict[str, np.ndarray]:
    """A full-length raw batch of pairs as the shards hold them (the batch_size=auto probe on a GPU)."""
    half = max(1, (seq_len - 3) // 2)
    row = np.array([meta.cls_id, *[8] * half, meta.sep_id, *[9] * (seq_len - 3 - half), meta.sep_id], np.int32)
    types = (np.arange(seq_len) > half + 1).astype(np.int8)
    ids, tts = np.empty(b, dtype=object), np.empty(b, dtype=object)
    ids[:], tts[:] = [row.copy() for _ in range(b)], [types.copy() for _ in range(b)]
    return {"input_ids": ids, "token_type_ids": tts, "next_sentence_label": np.arange(b) % 2, "sample_id": np.arange(b)}


# ---------------------------------------------------------------- evaluation


def score(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """[MLM loss sum, masked tokens, NSP correct, pairs, NSP loss sum] of one batch, on its device."""
    out = model(**{k: inputs[k] for k in MODEL_KEYS if k in inputs})
    labels, nsl = inputs["labels"], inputs["next_sentence_label"]
    logits = out.prediction_logits.float()
    mlm = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=IGNORE, reduction="sum")
    rel = out.seq_relationship_logits.float()
    return torch.stack([mlm, labels.ne(IGNORE).sum().float(), rel.argmax(-1).eq(nsl).sum().float(),
                        torch.tensor(float(len(nsl)), device=rel.device), F.cross_entropy(rel, nsl, reduction="sum")])


def metrics(total: list[float], prefix: str = "val_") -> dict[str, float]:
    mlm, n, correct, pairs, nsp = total
    loss = mlm / max(n, 1)
    return {f"{prefix}loss": loss, f"{prefix}ppl": math.exp(min(loss, 50)), f"{prefix}nsp_accuracy": correct / max(pairs, 1),
            f"{prefix}nsp_loss": nsp / max(pairs, 1), f"{prefix}pairs": pairs}


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable, device: torch.device, amp: torch.dtype | None) -> dict[str, float]:
    """MLM loss (val_loss) and NSP accuracy over every rank's validation batches: sums stay on the
    device, one all-reduce and one host read."""
    model.eval()
    total = torch.zeros(5, device=device, dtype=torch.float64)
    for b in batches:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            scored = score(model, b.inputs).double()
        if b.counts:  # a filler only keeps the ranks' forward passes equal
            total += scored
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    return metrics(total.tolist())  # host sync: once per evaluation
