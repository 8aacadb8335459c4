"""Tasks, chosen by `trainer.task`: how to build the model, collate a batch and compute the loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from raylm.config import RootConfig

TASKS: dict[str, type[Task]] = {}


def register(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        TASKS[name] = cls
        cls.name = name
        return cls

    return deco


def get_task(name: str) -> Task:
    return TASKS[name]()


class Task:
    name = ""
    metric = "val_loss"  # what "best" means
    mode = "min"
    # Validation metrics are sums over examples (not over the batches' order): the loop may regroup the
    # eval batches by length, so that each pads to its own longest row.
    eval_order_free = False

    def build_model(self, cfg: RootConfig, meta: dict) -> torch.nn.Module:
        raise NotImplementedError

    def collate(self, batch: dict[str, np.ndarray], meta: dict, step_seed: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss over the batch's targets, on the device. Its weight (the number of targets) is
        counted on the host at collate time (`step.Batch.n`): reading it here would be a host sync."""
        return model(**inputs).loss

    def eval_step(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean loss and class predictions (None for language models), both left on the device."""
        return self.loss(model, inputs), None

    def metric_of(self, cfg: RootConfig) -> tuple[str, str]:
        """(metric, "min"|"max") this task optimises under `cfg`: the default of eval.best_metric and sweeps."""
        return self.metric, self.mode


def _from_pretrained(auto_cls: Any, path: str, **kw: Any) -> torch.nn.Module:
    return auto_cls.from_pretrained(path, **kw)


def _stack(col: np.ndarray) -> np.ndarray:
    return np.stack(col) if col.dtype == object else np.array(col)  # a copy: Ray's arrays are read-only


@register("causal-lm")
class CausalLM(Task):
    def build_model(self, cfg: RootConfig, meta: dict) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

        m = cfg.model
        if m.init_from:
            return _from_pretrained(AutoModelForCausalLM, m.init_from, attn_implementation=m.attn_implementation)
        if m.arch == "llama":
            conf = LlamaConfig(vocab_size=meta["vocab_size"], hidden_size=m.n_embd, num_hidden_layers=m.n_layer,
                               num_attention_heads=m.n_head, intermediate_size=4 * m.n_embd,
                               max_position_embeddings=meta["block_size"], eos_token_id=meta["eos_id"],
                               bos_token_id=meta["eos_id"], tie_word_embeddings=True)
        else:
            conf = GPT2Config(vocab_size=meta["vocab_size"], n_positions=meta["block_size"], n_embd=m.n_embd,
                              n_layer=m.n_layer, n_head=m.n_head, resid_pdrop=m.dropout, embd_pdrop=m.dropout,
                              attn_pdrop=m.dropout, bos_token_id=meta["eos_id"], eos_token_id=meta["eos_id"])
        conf._attn_implementation = m.attn_implementation
        return AutoModelForCausalLM.from_config(conf)

    def collate(self, batch: dict[str, np.ndarray], meta: dict, step_seed: int) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(_stack(batch["input_ids"]).astype(np.int64))
        # HF shifts labels inside the model: each block predicts its own next tokens.
        return {"input_ids": ids, "labels": ids.clone(), "sample_id": torch.from_numpy(np.array(batch["sample_id"])),
                "_n": torch.tensor(ids.numel() - ids.shape[0])}

    def loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=inputs["input_ids"], labels=inputs["labels"]).loss


@register("masked-lm")
class MaskedLM(Task):
    """Masked LM on packed blocks; on sentence-pair shards (data.nsp, the manifest's `nsp`) BERT
    pretraining, MLM + next-sentence prediction (raylm.trainers.pretraining)."""

    mask_prob = 0.15
    meta_keys = ("nsp",)

    @classmethod
    def check_config(cls, cfg: RootConfig) -> list[str]:
        from raylm.trainers import pretraining

        return pretraining.check_config(cfg)

    def build_model(self, cfg: RootConfig, meta: dict) -> torch.nn.Module:
        from transformers import AutoModelForMaskedLM, BertConfig, RobertaConfig

        if meta.get("nsp"):
            from raylm.trainers import pretraining

            return pretraining.build_model(cfg, meta)
        m = cfg.model
        if m.init_from:
            return _from_pretrained(AutoModelForMaskedLM, m.init_from, attn_implementation=m.attn_implementation)
        cls = RobertaConfig if m.arch == "roberta" else BertConfig
        conf = cls(vocab_size=meta["vocab_size"], hidden_size=m.n_embd, num_hidden_layers=m.n_layer,
                   num_attention_heads=m.n_head, intermediate_size=4 * m.n_embd,
                   max_position_embeddings=meta["block_size"] + 2, pad_token_id=meta["pad_id"],
                   hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.dropout)
        conf._attn_implementation = m.attn_implementation
        return AutoModelForMaskedLM.from_config(conf)

    def collate(self, batch: dict[str, np.ndarray], meta: dict, step_seed: int) -> dict[str, torch.Tensor]:
        if meta.get("nsp"):
            from raylm.trainers import pretraining

            return pretraining.collate(batch, meta, step_seed, self.mask_prob)
        ids = torch.from_numpy(_stack(batch["input_ids"]).astype(np.int64))
        ids, labels = mask_tokens(ids, meta, torch.Generator().manual_seed(step_seed), self.mask_prob)
        return {"input_ids": ids, "labels": labels, "sample_id": torch.from_numpy(np.array(batch["sample_id"]))}

    def fake_raw_batch(self, meta: dict, b: int, seq_len: int) -> dict[str, np.ndarray]:
        """A full-length raw batch for the batch_size=auto probe: pairs (data.nsp) or blocks."""
        from raylm.trainers import autobatch, pretraining

        if meta.get("nsp"):
            return pretraining.fake_raw_batch(meta, b, seq_len)
        return autobatch.fake_raw_batch(self.name, meta, b, seq_len)

    def evaluate(self, model: torch.nn.Module, batches: list, device: torch.device, amp: torch.dtype | None,
                 meta: dict) -> dict[str, float]:
        """Pairs: MLM loss and NSP accuracy; blocks: the loss evaluation every LM task gets."""
        from raylm.trainers import pretraining
        from raylm.trainers.step import evaluate

        if meta.get("nsp"):
            return pretraining.evaluate(model, batches, device, amp)
        return evaluate(model, self.eval_step, batches, device, amp)


def mask_tokens(ids: torch.Tensor, meta: dict, gen: torch.Generator, prob: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT dynamic masking: 15% of tokens are targets; of those 80% [MASK], 10% random, 10% kept."""
    labels = ids.clone()
    special = ids.eq(meta["eos_id"]) | ids.eq(meta["pad_id"])
    chosen = (torch.rand(ids.shape, generator=gen) < prob) & ~special
    labels[~chosen] = -100
    return replace_chosen(ids, chosen, meta, gen), labels


def replace_chosen(ids: torch.Tensor, chosen: torch.Tensor, meta: dict, gen: torch.Generator) -> torch.Tensor:
    """A copy of `ids` where the chosen targets are 80% [MASK], 10% a random token, 10% kept (BERT)."""
    roll = torch.rand(ids.shape, generator=gen)
    ids = ids.clone()
    ids[chosen & (roll < 0.8)] = meta["mask_id"]
    rand = chosen & (roll >= 0.8) & (roll < 0.9)
    ids[rand] = torch.randint(meta["vocab_size"], ids.shape, generator=gen)[rand]
    return ids


@register("sequence-classification")
class SequenceClassification(Task):
    metric, mode = "val_accuracy", "max"
    eval_order_free = True

    def build_model(self, cfg: RootConfig, meta: dict) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification, BertConfig

        m, n = cfg.model, meta["num_labels"]
        if m.init_from:
            return _from_pretrained(AutoModelForSequenceClassification, m.init_from, num_labels=n,
                                    ignore_mismatched_sizes=True, attn_implementation=m.attn_implementation)
        conf = BertConfig(vocab_size=meta["vocab_size"], hidden_size=m.n_embd, num_hidden_layers=m.n_layer,
                          num_attention_heads=m.n_head, intermediate_size=4 * m.n_embd,
                          max_position_embeddings=meta["max_length"] + 2, pad_token_id=meta["pad_id"],
                          num_labels=n)
        return AutoModelForSequenceClassification.from_config(conf)

    def collate(self, batch: dict[str, np.ndarray], meta: dict, step_seed: int) -> dict[str, torch.Tensor]:
        seqs = [with_special_tokens(s, meta) for s in batch["input_ids"]]
        ids, mask = pad_batch(seqs, meta["pad_id"])
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.from_numpy(batch["label"].astype(np.int64)),
                "sample_id": torch.from_numpy(np.array(batch["sample_id"])), "_n": torch.tensor(len(seqs))}

    def eval_step(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = model(**inputs)
        return out.loss, out.logits.argmax(-1)


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


def with_special_tokens(ids: np.ndarray, meta: dict) -> np.ndarray:
    """[CLS] ids [SEP] for tokenizers that define them (BERT-style pretrained encoders read the
    first position), the ids truncated to max_length - 2; shards hold ids without special tokens.

    Shards of prepare schema < 4 stored ids padded to the tokenizer's fixed length: trailing pad ids
    are dropped first, so [SEP] follows the last real token (issue 15), not the padding.
    """
    body = np.asarray(ids)
    pad = meta.get("pad_id")
    if pad is not None and len(body) and body[-1] == pad:
        real = np.flatnonzero(body != pad)
        body = body[: real[-1] + 1 if len(real) else 1]
    cls_id, sep_id = meta.get("cls_id"), meta.get("sep_id")
    if cls_id is None or sep_id is None:
        return body
    body = body[: max(1, (meta.get("max_length") or len(body) + 2) - 2)]
    return np.concatenate([[cls_id], body, [sep_id]])


from raylm.trainers import downstream as _downstream  # noqa: E402, F401  registers NER and QA (after Task)
from raylm.trainers import seq2seq as _seq2seq  # noqa: E402, F401  registers seq2seq (after Task)
