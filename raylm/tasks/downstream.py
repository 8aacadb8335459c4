"""Downstream tasks on an encoder (`trainer.task`): token-classification (NER) and question-answering
(extractive, SQuAD). Named in `raylm.tasks.registry` like the language-model tasks.

Each adds `evaluate(model, batches, device, amp, meta)`, which the loop calls instead of the
loss/accuracy evaluation: the task metric needs whole predictions (entity spans, answer text), so
every rank decodes its validation batches and the decoded lists are gathered once per evaluation
(`all_gather_object`, one host sync), then scored by `raylm.tasks.metrics` on every rank.

Training-time scores are per feature window (NER) or per question over the windows seen (QA);
`raylm eval MODEL --input FILE` scores whole sentences/questions (`raylm.tasks.downstream_files`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from raylm.config import RootConfig
from raylm.errors import UserError
from raylm.tasks import downstream_files
from raylm.tasks.base import LabelledTask
from raylm.tasks.collate import IGNORE, pad
from raylm.tasks.conll import NerFormat
from raylm.tasks.meta import ModelMeta
from raylm.tasks.metrics import entity_scores, squad_scores
from raylm.tasks.squad import QaFormat, best_answers
from raylm.trainers.parallel import gather

ENCODERS = ("bert", "roberta")


def encoder_config(cfg: RootConfig, meta: ModelMeta, **kw: Any) -> Any:
    """A BERT (or RoBERTa) config from `model`, sized for the prepared features."""
    from transformers import BertConfig, RobertaConfig

    m = cfg.model
    cls, extra = (RobertaConfig, 2) if m.arch == "roberta" else (BertConfig, 0)  # RoBERTa offsets positions by 2
    conf = cls(vocab_size=meta.vocab_size, hidden_size=m.n_embd, num_hidden_layers=m.n_layer,
               num_attention_heads=m.n_head, intermediate_size=4 * m.n_embd,
               max_position_embeddings=(meta.max_length or 512) + extra, pad_token_id=meta.pad_id,
               hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.dropout, **kw)
    conf._attn_implementation = m.attn_implementation
    return conf


class EncoderTask(LabelledTask):
    """A task on a BERT-style encoder built from `model` or loaded from `model.init_from`; a raw file is
    scored and predicted by raylm.tasks.downstream_files."""

    auto_class = ""
    model_keys: tuple[str, ...] = ()
    meta_keys: tuple[str, ...] = ()  # manifest keys the workers need besides the tokenizer's

    @classmethod
    def check_config(cls, cfg: RootConfig) -> list[str]:
        if cfg.model.init_from or cfg.model.arch in ENCODERS:
            return []
        return [(f"trainer.task={cls.name} builds an encoder: set model.arch to bert or roberta "
                f"(got {cfg.model.arch}), or model.init_from to a pretrained encoder")]

    def evaluate_file(self, model_dir: str, path: str) -> dict:
        return downstream_files.evaluate_file(model_dir, path, self.name)

    def predict_file(self, model_dir: str, path: str, output: str, batch_size: int | None = None) -> dict:
        return downstream_files.predict_file(model_dir, path, output, self.name, batch_size or 32)

    def head_kwargs(self, meta: ModelMeta) -> dict:
        return {}

    def fake_raw_batch(self, meta: ModelMeta, b: int, seq_len: int) -> dict[str, np.ndarray]:
        """A full-length raw training batch (the batch_size=auto probe on a GPU)."""
        def rows(value: int) -> np.ndarray:  # variable-length rows arrive as an object array of arrays
            out = np.empty(b, dtype=object)
            out[:] = [np.full(seq_len, value, np.int32) for _ in range(b)]
            return out

        return {"input_ids": rows(5), "labels": rows(0), "token_type_ids": rows(0), "sample_id": np.arange(b),
                "start_positions": np.ones(b, np.int64), "end_positions": np.ones(b, np.int64)}

    def build_model(self, cfg: RootConfig, meta: ModelMeta) -> torch.nn.Module:
        import transformers

        auto = getattr(transformers, self.auto_class)
        kw = self.head_kwargs(meta)
        if cfg.model.init_from:  # a fresh head on a pretrained encoder (or the head of a raylm export)
            return auto.from_pretrained(cfg.model.init_from, ignore_mismatched_sizes=True,
                                        attn_implementation=cfg.model.attn_implementation, **kw)
        if cfg.model.arch not in ENCODERS:
            raise UserError(self.check_config(cfg))
        return auto.from_config(encoder_config(cfg, meta, **kw))

    def loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**{k: inputs[k] for k in self.model_keys if k in inputs}).loss

    def eval_step(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, None]:
        return self.loss(model, inputs), None


# ---------------------------------------------------------------- NER


class TokenClassification(EncoderTask):
    """Tags per word (CoNLL NER): first sub-token labels, entity-level seqeval P/R/F1."""

    name = "token-classification"
    labelled_format = NerFormat()
    eval_order_free = True
    auto_class = "AutoModelForTokenClassification"
    model_keys = ("input_ids", "attention_mask", "labels")
    meta_keys = ("labels", "num_labels")

    def head_kwargs(self, meta: ModelMeta) -> dict:
        labels = meta.extra["labels"]
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {t: i for i, t in enumerate(labels)}}

    def collate(self, batch: dict[str, np.ndarray], meta: ModelMeta, step_seed: int) -> dict[str, torch.Tensor]:
        ids = pad(batch["input_ids"], meta.pad_id)
        labels = pad(batch["labels"], IGNORE, ids.shape[1])  # pads are no targets
        return {"input_ids": ids, "attention_mask": pad([np.ones(len(r)) for r in batch["input_ids"]], 0),
                "labels": labels, "sample_id": torch.from_numpy(np.array(batch["sample_id"])),
                "_n": labels.ne(IGNORE).sum()}

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batches: list, device: torch.device, amp: torch.dtype | None,
                 meta: ModelMeta) -> dict[str, float]:
        """Loss and entity P/R/F1 (seqeval) over every rank's validation windows."""

        model.eval()
        names, loss_sum, n, preds, golds = meta.extra["labels"], 0.0, 0, [], []
        for b in batches:
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                out = model(**{k: b.inputs[k] for k in self.model_keys})
            if not b.counts:  # a filler only keeps the ranks' forward passes equal
                continue
            loss_sum, n = loss_sum + float(out.loss) * b.n, n + b.n  # host sync per batch: eval only
            gold = b.inputs["labels"].cpu()
            for p, g in zip(out.logits.argmax(-1).cpu(), gold):
                keep = g.ne(IGNORE)
                preds.append([names[i] for i in p[keep].tolist()])
                golds.append([names[i] for i in g[keep].tolist()])
        parts = gather((loss_sum, n, preds, golds))
        loss_sum, n = sum(p[0] for p in parts), sum(p[1] for p in parts)
        preds, golds = [s for p in parts for s in p[2]], [s for p in parts for s in p[3]]
        # An empty validation split scores 0 rather than failing the run at its first evaluation.
        scores = entity_scores(preds, golds) if golds else dict.fromkeys(("f1", "precision", "recall", "accuracy"), 0.0)
        return {"val_loss": loss_sum / max(n, 1), "val_f1": scores["f1"], "val_precision": scores["precision"],
                "val_recall": scores["recall"], "val_accuracy": scores["accuracy"]}


# ---------------------------------------------------------------- QA


class QuestionAnswering(EncoderTask):
    """Extractive QA (SQuAD): start/end logits over `[CLS] question [SEP] context [SEP]` windows; EM/F1."""

    name = "question-answering"
    labelled_format = QaFormat()
    auto_class = "AutoModelForQuestionAnswering"
    model_keys = ("input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions")
    meta_keys = ("qa",)

    def collate(self, batch: dict[str, np.ndarray], meta: ModelMeta, step_seed: int) -> dict[str, torch.Tensor]:
        ids = pad(batch["input_ids"], meta.pad_id)
        out = {"input_ids": ids, "token_type_ids": pad(batch["token_type_ids"], 0, ids.shape[1]),
               "attention_mask": pad([np.ones(len(r)) for r in batch["input_ids"]], 0),
               "start_positions": torch.as_tensor(np.asarray(batch["start_positions"], dtype=np.int64)),
               "end_positions": torch.as_tensor(np.asarray(batch["end_positions"], dtype=np.int64)),
               "sample_id": torch.from_numpy(np.array(batch["sample_id"])), "_n": torch.tensor(len(ids))}
        if "context" in batch:  # validation shards: what decoding the answer text needs, as tensors
            out["_offsets"] = torch.stack([pad(batch["offset_start"], -1, ids.shape[1]),
                                           pad(batch["offset_end"], -1, ids.shape[1])], -1)
            out["_text"] = pad([np.frombuffer(_side(c, e, a), np.uint8) for c, e, a in
                                zip(batch["context"], batch["example_id"], batch["answers"])], 0)
        return out

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batches: list, device: torch.device, amp: torch.dtype | None,
                 meta: ModelMeta) -> dict[str, float]:
        """Loss and SQuAD EM/F1 of the best span per question over the windows every rank saw."""

        model.eval()
        loss_sum, n, feats, starts, ends, contexts, golds = 0.0, 0, [], [], [], {}, {}
        for b in batches:
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                out = model(**{k: b.inputs[k] for k in self.model_keys})
            if not b.counts:  # a filler only keeps the ranks' forward passes equal
                continue
            loss_sum, n = loss_sum + float(out.loss) * b.n, n + b.n
            if "_text" not in b.inputs:
                continue
            for k, (offs, raw) in enumerate(zip(b.inputs["_offsets"].cpu().tolist(), b.inputs["_text"].cpu())):
                context, qid, answers = _unside(raw)
                feats.append({"example_id": qid, "offsets": offs})
                starts.append(out.start_logits[k].float().cpu().tolist())
                ends.append(out.end_logits[k].float().cpu().tolist())
                contexts[qid], golds[qid] = context, answers
        parts = gather((loss_sum, n, feats, starts, ends, contexts, golds))
        qa = meta.extra.get("qa") or {}
        for p in parts:
            contexts.update(p[5])
            golds.update(p[6])
        pred = best_answers([f for p in parts for f in p[2]], [s for p in parts for s in p[3]],
                            [e for p in parts for e in p[4]], contexts, qa.get("n_best", 20),
                            qa.get("max_answer_tokens", 30))
        scores = squad_scores([pred[q] for q in pred], [golds[q] for q in pred])
        return {"val_loss": sum(p[0] for p in parts) / max(sum(p[1] for p in parts), 1),
                "val_exact_match": scores["exact_match"], "val_f1": scores["f1"], "val_questions": float(len(pred))}


_SEP = "\x1f"  # ASCII unit separator


def _side(context: str, example_id: str, answers: Any) -> bytes:
    return _SEP.join([context, str(example_id), *[str(a) for a in answers]]).encode("utf-8")


def _unside(raw: torch.Tensor) -> tuple[str, str, list[str]]:
    parts = bytes(raw[raw.ne(0)].tolist()).decode("utf-8").split(_SEP)  # 0: the padding
    return parts[0], parts[1], parts[2:]
