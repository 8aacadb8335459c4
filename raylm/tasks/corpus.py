"""The corpus tasks (one text column, the packed/units prepare pipeline): causal LM, masked LM (MLM + NSP
on sentence pairs, raylm.tasks.nsp) and sequence classification: model, collate, loss and evaluation."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from raylm.config import RootConfig
from raylm.datasets.config import DataConfig
from raylm.datasets.tokenizer_training import nsp_tokenizer
from raylm.datasets.tokenizers import cls_sep_ids
from raylm.datasets.units import prepare_corpus, resolve_source
from raylm.tasks import corpus_eval, corpus_files, nsp_files
from raylm.tasks import nsp as pretraining
from raylm.tasks.base import GenerateOptions, Task
from raylm.tasks.collate import IGNORE, mask_tokens, pad_batch, with_special_tokens
from raylm.tasks.meta import ModelMeta
from raylm.tasks.nsp_data import prepare_nsp
from raylm.tasks.packing import document_positions, mask_segment_starts, packing_problems
from raylm.trainers import adapters, autobatch
from raylm.trainers.step import Batch, evaluate


def _from_pretrained(auto_cls: Any, path: str, **kw: Any) -> torch.nn.Module:
    return auto_cls.from_pretrained(path, **kw)


def _stack(col: np.ndarray) -> np.ndarray:
    return np.stack(col) if col.dtype == object else np.array(col)  # a copy: Ray's arrays are read-only


def causal_model(cfg: RootConfig, meta: ModelMeta) -> torch.nn.Module:
    """A decoder LM: `model.init_from` (its embeddings grown to the data's vocabulary when the tokenizer got new
    tokens, e.g. a chat template's), else GPT-2 or Llama built from `model` for blocks of meta.block_size."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    m = cfg.model
    if m.init_from:
        model = _from_pretrained(AutoModelForCausalLM, m.init_from, attn_implementation=m.attn_implementation,
                                 **adapters.pretrained_kwargs(m))
        if meta.vocab_size and meta.vocab_size > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(meta.vocab_size)
        return model
    if m.arch == "llama":
        conf = LlamaConfig(vocab_size=meta.vocab_size, hidden_size=m.n_embd, num_hidden_layers=m.n_layer,
                           num_attention_heads=m.n_head, intermediate_size=4 * m.n_embd,
                           max_position_embeddings=meta.block_size, eos_token_id=meta.eos_id,
                           bos_token_id=meta.eos_id, tie_word_embeddings=True)
    else:
        conf = GPT2Config(vocab_size=meta.vocab_size, n_positions=meta.block_size, n_embd=m.n_embd,
                          n_layer=m.n_layer, n_head=m.n_head, resid_pdrop=m.dropout, embd_pdrop=m.dropout,
                          attn_pdrop=m.dropout, bos_token_id=meta.eos_id, eos_token_id=meta.eos_id)
    conf._attn_implementation = m.attn_implementation
    return AutoModelForCausalLM.from_config(conf)


class CorpusTask(Task):
    """Serving shared by the corpus tasks: raw files through raylm.tasks.corpus_files, prepared splits
    through raylm.tasks.corpus_eval."""

    def evaluate_file(self, model_dir: str, path: str) -> dict:
        return corpus_files.evaluate_file(model_dir, path, self.name)

    def predict_file(self, model_dir: str, path: str, output: str, batch_size: int | None = None) -> dict:
        return corpus_files.predict_file(model_dir, path, output, self.name, batch_size or 16)

    def evaluate_prepared(self, model_dir: str, prepared_dir: str, manifest: dict, split: str,
                          max_batches: int | None) -> dict:
        return corpus_eval.perplexity(model_dir, prepared_dir, manifest, split, max_batches=max_batches)


class CausalLM(CorpusTask):
    name = "causal-lm"
    packed_blocks = True
    meta_auto_model = "AutoModelForCausalLM"
    tokenizer_needs = ("eos_id",)

    def fused_loss(self) -> bool:
        return True

    def generate(self, model_dir: str, prompt: str, options: GenerateOptions) -> str:
        """A sampled continuation (temperature, nucleus, no repeated n-gram), prompt included."""
        return corpus_eval.generate(model_dir, prompt, options.max_new_tokens or 60, options.temperature,
                                    top_p=options.top_p, no_repeat_ngram_size=options.no_repeat_ngram,
                                    seed=options.seed)[0]

    def build_model(self, cfg: RootConfig, meta: ModelMeta) -> torch.nn.Module:
        return causal_model(cfg, meta)

    def extra_meta(self, cfg: RootConfig, manifest: dict) -> dict:
        return {"document_masking": cfg.data.document_masking}

    @classmethod
    def check_config(cls, cfg: RootConfig) -> list[str]:
        return packing_problems() if cfg.data.document_masking else []

    def collate(self, batch: dict[str, np.ndarray], meta: ModelMeta, step_seed: int) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(_stack(batch["input_ids"]).astype(np.int64))
        sample = torch.from_numpy(np.array(batch["sample_id"]))
        if meta.extra.get("document_masking"):  # block-causal: positions restart after each EOS
            pos = document_positions(ids, meta.eos_id)
            labels = mask_segment_starts(ids, pos)
            return {"input_ids": ids, "labels": labels, "position_ids": pos, "sample_id": sample,
                    "_n": labels[:, 1:].ne(IGNORE).sum()}
        # HF shifts labels inside the model: each block predicts its own next tokens.
        return {"input_ids": ids, "labels": ids.clone(), "sample_id": sample, "_n": torch.tensor(ids.numel() - ids.shape[0])}

    def loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if "position_ids" in inputs:  # document masking (no cache: with one, packed positions are not read as such)
            return model(input_ids=inputs["input_ids"], labels=inputs["labels"], position_ids=inputs["position_ids"],
                         use_cache=False).loss
        return model(input_ids=inputs["input_ids"], labels=inputs["labels"]).loss


class MaskedLM(CorpusTask):
    """Masked LM on packed blocks; on sentence-pair shards (data.nsp, the manifest's `nsp`) BERT
    pretraining, MLM + next-sentence prediction (raylm.tasks.nsp)."""

    name = "masked-lm"
    mask_prob = 0.15
    meta_keys = ("nsp",)
    packed_blocks = True
    meta_auto_model = "AutoModelForMaskedLM"
    tokenizer_needs = ("mask_id",)

    def prepare(self, data: DataConfig, force: bool = False) -> dict:
        """Packed blocks, or with data.nsp BERT's sentence pairs (raylm.tasks.nsp_data)."""
        return prepare_nsp(data, force) if data.nsp else super().prepare(data, force)

    def train_tokenizer(self, data: DataConfig) -> str:
        """Sentence pairs need a BERT WordPiece ([CLS], [SEP], segments); blocks take the BPE."""
        return nsp_tokenizer(data, resolve_source(data)) if data.nsp else super().train_tokenizer(data)

    def meta_init_class(self, meta: ModelMeta) -> str:
        """BertForPreTraining (data.nsp) has no Auto class: built whole, then sharded."""
        return "" if meta.extra.get("nsp") else self.meta_auto_model

    def trains_on(self, prepared_task: str) -> bool:
        """Any corpus's blocks train a masked LM (causal LM shards too): only their length must match."""
        return True

    def evaluate_file(self, model_dir: str, path: str) -> dict:
        if _is_nsp_export(model_dir):  # MLM + NSP: pairs from documents
            return nsp_files.evaluate_file(model_dir, path)
        return super().evaluate_file(model_dir, path)

    def predict_file(self, model_dir: str, path: str, output: str, batch_size: int | None = None) -> dict:
        if _is_nsp_export(model_dir):  # is-next probabilities of sentence pairs
            return nsp_files.predict_file(model_dir, path, output, batch_size or 32)
        return super().predict_file(model_dir, path, output, batch_size)

    def evaluate_prepared(self, model_dir: str, prepared_dir: str, manifest: dict, split: str,
                          max_batches: int | None) -> dict:
        if manifest.get("nsp"):  # BERT pretraining pairs: MLM loss and NSP accuracy
            return nsp_files.evaluate_prepared(model_dir, prepared_dir, manifest, split, max_batches=max_batches)
        return super().evaluate_prepared(model_dir, prepared_dir, manifest, split, max_batches)

    @classmethod
    def check_config(cls, cfg: RootConfig) -> list[str]:
        return pretraining.check_config(cfg)

    def build_model(self, cfg: RootConfig, meta: ModelMeta) -> torch.nn.Module:
        from transformers import AutoModelForMaskedLM, BertConfig, RobertaConfig

        if meta.extra.get("nsp"):
            return pretraining.build_model(cfg, meta)
        m = cfg.model
        if m.init_from:
            return _from_pretrained(AutoModelForMaskedLM, m.init_from, attn_implementation=m.attn_implementation)
        cls = RobertaConfig if m.arch == "roberta" else BertConfig
        conf = cls(vocab_size=meta.vocab_size, hidden_size=m.n_embd, num_hidden_layers=m.n_layer,
                   num_attention_heads=m.n_head, intermediate_size=4 * m.n_embd,
                   max_position_embeddings=meta.block_size + 2, pad_token_id=meta.pad_id,
                   hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.dropout)
        conf._attn_implementation = m.attn_implementation
        return AutoModelForMaskedLM.from_config(conf)

    def collate(self, batch: dict[str, np.ndarray], meta: ModelMeta, step_seed: int) -> dict[str, torch.Tensor]:
        if meta.extra.get("nsp"):
            return pretraining.collate(batch, meta, step_seed, self.mask_prob)
        ids = torch.from_numpy(_stack(batch["input_ids"]).astype(np.int64))
        ids, labels = mask_tokens(ids, meta, torch.Generator().manual_seed(step_seed), self.mask_prob)
        return {"input_ids": ids, "labels": labels, "sample_id": torch.from_numpy(np.array(batch["sample_id"]))}

    def fake_raw_batch(self, meta: ModelMeta, b: int, seq_len: int) -> dict[str, np.ndarray]:
        """A full-length raw batch for the batch_size=auto probe: pairs (data.nsp) or blocks."""
        if meta.extra.get("nsp"):
            return pretraining.fake_raw_batch(meta, b, seq_len)
        return super().fake_raw_batch(meta, b, seq_len)

    def evaluate(self, model: torch.nn.Module, batches: Iterable[Batch], device: torch.device,
                 amp: torch.dtype | None, meta: ModelMeta) -> dict[str, float]:
        """Pairs: MLM loss and NSP accuracy; blocks: the loss evaluation every LM task gets."""
        if meta.extra.get("nsp"):
            return pretraining.evaluate(model, batches, device, amp)
        return super().evaluate(model, batches, device, amp, meta)


class SequenceClassification(CorpusTask):
    name = "sequence-classification"
    eval_order_free = True
    group_by_length = True
    meta_auto_model = "AutoModelForSequenceClassification"

    def prepare(self, data: DataConfig, force: bool = False) -> dict:
        """The corpus pipeline with a label per row (data.label_field), truncated to data.max_length."""
        return prepare_corpus(data, self.name, force, needs=self.tokenizer_needs, labelled=True)

    def extra_meta(self, cfg: RootConfig, manifest: dict) -> dict:
        """The number of classes, and [CLS]/[SEP] for a tokenizer that has them."""
        extra = {"num_labels": manifest.get("num_labels") or len(manifest.get("labels") or [])
                 or _labels_in_data(cfg.data.prepared_dir, manifest)}
        if manifest.get("cls_id") is None and manifest.get("tokenizer_dir"):
            extra |= cls_sep_ids(manifest["tokenizer_dir"])
        return extra

    def pretrained_kwargs(self, meta: ModelMeta) -> dict:
        return {"num_labels": meta.extra["num_labels"]}

    def evaluate_prepared(self, model_dir: str, prepared_dir: str, manifest: dict, split: str,
                          max_batches: int | None) -> dict:
        return corpus_eval.classify(model_dir, prepared_dir, manifest, split, pad_id=manifest.get("pad_id") or 0)

    def build_model(self, cfg: RootConfig, meta: ModelMeta) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification, BertConfig

        m, n = cfg.model, meta.extra["num_labels"]
        if m.init_from:
            model = _from_pretrained(AutoModelForSequenceClassification, m.init_from, num_labels=n,
                                     ignore_mismatched_sizes=True, attn_implementation=m.attn_implementation)
        else:
            conf = BertConfig(vocab_size=meta.vocab_size, hidden_size=m.n_embd, num_hidden_layers=m.n_layer,
                              num_attention_heads=m.n_head, intermediate_size=4 * m.n_embd,
                              max_position_embeddings=meta.max_length + 2, pad_token_id=meta.pad_id,
                              num_labels=n)
            model = AutoModelForSequenceClassification.from_config(conf)
        # How `raylm eval --input` and `raylm predict` read a raw file, kept with the export (raylm.tasks.corpus_files).
        d = cfg.data
        model.config.raylm_data = {"text_field": d.validation_text_field or d.text_field,
                                   "label_field": d.validation_label_field or d.label_field, "labels": d.labels}
        return model

    def collate(self, batch: dict[str, np.ndarray], meta: ModelMeta, step_seed: int) -> dict[str, torch.Tensor]:
        seqs = [with_special_tokens(s, meta) for s in batch["input_ids"]]
        ids, mask = pad_batch(seqs, meta.pad_id)
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.from_numpy(batch["label"].astype(np.int64)),
                "sample_id": torch.from_numpy(np.array(batch["sample_id"])), "_n": torch.tensor(len(seqs))}

    def eval_step(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = model(**inputs)
        return out.loss, out.logits.argmax(-1)

    def seq_len(self, meta: ModelMeta) -> int:
        return meta.max_length or 128

    def fake_raw_batch(self, meta: ModelMeta, b: int, seq_len: int) -> dict[str, np.ndarray]:
        """Variable-length rows (an object array of arrays, as the shards hold them) at full length."""
        raw = autobatch.fake_raw_batch(meta, b, seq_len)
        rows = np.empty(b, dtype=object)
        rows[:] = list(raw["input_ids"][:, : max(1, seq_len - 2)])
        return {**raw, "input_ids": rows, "label": np.zeros(b, dtype=np.int64)}

    def evaluate(self, model: torch.nn.Module, batches: Iterable[Batch], device: torch.device,
                 amp: torch.dtype | None, meta: ModelMeta) -> dict[str, float]:
        """Loss, accuracy and F1 from the summed confusion counts."""
        return evaluate(model, self.eval_step, batches, device, amp, meta.extra["num_labels"])




def _is_nsp_export(model_dir: str) -> bool:
    """A BertForPreTraining export (MLM + NSP heads), by its config's architectures."""
    with open(os.path.join(model_dir, "config.json")) as f:
        return any(a.endswith("ForPreTraining") for a in json.load(f).get("architectures") or [])


def _labels_in_data(prepared_dir: str, manifest: dict) -> int:
    """num_labels = largest label id in the train shards + 1 (reads the label column only)."""
    top = 0
    for f in manifest["splits"]["train"]["files"]:
        col = pq.read_table(os.path.join(prepared_dir, f["path"]), columns=["label"]).column("label")
        top = max(top, int(pc.max(col).as_py() or 0))
    return max(top + 1, 2)
