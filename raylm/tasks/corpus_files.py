"""`raylm eval EXPORT --input FILE` and `raylm predict` for causal LMs, masked LMs and sequence classifiers.

The file is read and cleaned as `raylm prepare` reads a corpus (text, JSONL, CSV/TSV, Parquet; `.gz`/`.zst`;
a directory or glob), with the export's own tokenizer, so a held-out file scores as the validation split
would. A malformed row stops with `file:line: what` (exit 2); rows the cleaning drops are counted.

- causal LM: documents joined with EOS and cut into blocks of the model's context; loss, perplexity, nats per
  character and bits per byte. `predict`: a sampled continuation of each row (the row is the prompt).
- masked LM: BERT's 15% dynamic masking, seeded; MLM loss and perplexity. `predict`: the 5 likeliest tokens at
  each mask token of each row.
- sequence classification: accuracy and F1 against the label column (the training run's `data.text_field` and
  `data.label_field`, kept in the export's config, else `text`/`label`). `predict`: label and probabilities.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from raylm.datasets import _fs
from raylm.datasets.clean import normalize, reject_reason
from raylm.datasets.config import DataConfig
from raylm.datasets.sources import BadRowError, Unit, check_row, file_format, read_unit
from raylm.errors import UserError
from raylm.tasks.collate import mask_tokens, pad_batch, with_special_tokens
from raylm.tasks.corpus_eval import sample_continuation
from raylm.tasks.meta import ModelMeta
from raylm.tasks.metrics import classification_metrics, confusion_counts

MAX_BLOCK = 1024  # tokens per causal/masked LM block at most (the model's context when shorter)


# ---------------------------------------------------------------- reading


def data_fields(model_dir: str) -> dict[str, Any]:
    """The training run's text/label columns and label names (kept by raylm in the export's config)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        kept = json.load(f).get("raylm_data") or {}
    return {"text_field": kept.get("text_field") or "text", "label_field": kept.get("label_field") or "label",
            "labels": kept.get("labels")}


def read_rows(path: str, text_field: str = "text", label_field: str | None = None) -> tuple[list[dict], Counter]:
    """(kept rows {row_id, text, label}, rejected rows by reason) of a raw file, cleaned as prepare cleans.

    A malformed row stops with `file:line: what`; a file without the text (or label) column, or with no row
    left, is refused as a whole: all exit 2."""
    cfg = DataConfig(on_error="fail", text_field=text_field, label_field=label_field, dedup=False)
    files = _fs.list_files(path)
    if not files:
        raise UserError(f"{path}: no such file", hint="pass a text, JSONL, CSV/TSV or Parquet file (or a glob)")
    kept, rejected, notes = [], Counter(), []
    for uri, size in files:
        try:
            for row in read_unit(Unit(uri, file_format(uri, cfg.format), size), cfg, notes):
                check_row(row, cfg)
                text = normalize(row["text"]) if not row["reject"] else ""
                reason = row["reject"] or reject_reason(text, cfg)
                if reason:
                    rejected[reason] += 1
                    continue
                kept.append({"row_id": row["row_id"], "text": text, "label": row["label"]})
        except BadRowError as err:
            raise UserError(str(err), hint="fix the line (or drop it) and run again") from None
    if notes:
        raise UserError(notes, hint=f"name the columns: the export reads '{text_field}'"
                        + (f" and '{label_field}'" if label_field else ""))
    if not kept:
        raise UserError(f"{path}: no row to score ({sum(rejected.values())} read, rejected: {dict(rejected) or 'none'})")
    return kept, rejected


def _load(model_dir: str, kind: str) -> tuple[Any, Any]:
    import transformers

    transformers.logging.disable_progress_bar()  # "Loading weights" bars would interleave with the metrics
    auto = {"causal-lm": "AutoModelForCausalLM", "masked-lm": "AutoModelForMaskedLM",
            "sequence-classification": "AutoModelForSequenceClassification"}[kind]
    model = getattr(transformers, auto).from_pretrained(model_dir).eval()
    return model, transformers.AutoTokenizer.from_pretrained(model_dir)


def _context(model: Any) -> int:
    c = model.config
    return min(getattr(c, "n_positions", None) or getattr(c, "max_position_embeddings", MAX_BLOCK), MAX_BLOCK)


def _encode(tok: Any, texts: list[str]) -> list[list[int]]:
    return tok(texts, add_special_tokens=False)["input_ids"] if texts else []


def _blocks(tok: Any, rows: list[dict], size: int, sep: int) -> Iterator[list[int]]:
    """The rows' tokens, each document followed by `sep`, in consecutive blocks of `size` (the last shorter)."""
    buf: list[int] = []
    for i in range(0, len(rows), 256):
        for ids in _encode(tok, [r["text"] for r in rows[i:i + 256]]):
            buf += [*ids, sep]
            while len(buf) >= size:
                yield buf[:size]
                buf = buf[size:]
    if buf:
        yield buf


def _batched(blocks: Iterator[list[int]], n: int) -> Iterator[torch.Tensor]:
    """Blocks of equal length stacked n at a time (the shorter last block alone)."""
    batch: list[list[int]] = []
    for b in blocks:
        if batch and len(b) != len(batch[0]):
            yield torch.tensor(batch)
            batch = []
        batch.append(b)
        if len(batch) == n:
            yield torch.tensor(batch)
            batch = []
    if batch:
        yield torch.tensor(batch)


# ---------------------------------------------------------------- eval


@torch.no_grad()
def evaluate_file(model_dir: str, input_path: str, kind: str, batch_size: int = 16) -> dict:
    """Loss and perplexity of a text file (causal LM: nats/char and bits/byte too; masked LM: of the
    masked tokens), or accuracy/F1 of a labelled file (classifier). `kind`: the task's name."""
    model, tok = _load(model_dir, kind)
    if kind == "sequence-classification":
        return _classify(model, tok, input_path, data_fields(model_dir), batch_size)
    rows, rejected = read_rows(input_path)
    sep = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    loss_sum = targets = 0.0
    gen = torch.Generator().manual_seed(0)
    meta = ModelMeta(eos_id=sep, pad_id=tok.pad_token_id if tok.pad_token_id is not None else sep,
                     mask_id=tok.mask_token_id, vocab_size=len(tok))
    for ids in _batched(_blocks(tok, rows, _context(model), sep), batch_size):
        if kind == "causal-lm":
            n = ids.numel() - ids.shape[0]  # each block predicts all but its first token
            loss = model(input_ids=ids, labels=ids).loss if n else torch.zeros(())
        else:
            masked, labels = mask_tokens(ids, meta, gen)
            n = int(labels.ne(-100).sum())
            loss = model(input_ids=masked, labels=labels).loss if n else torch.zeros(())
        loss_sum, targets = loss_sum + float(loss) * n, targets + n
    mean = loss_sum / max(targets, 1)
    out = {"examples": len(rows), "rejected": sum(rejected.values()), "tokens": int(targets), "loss": mean,
           "perplexity": math.exp(min(mean, 50))}
    if kind == "causal-lm":
        chars = sum(len(r["text"]) for r in rows)
        out |= {"nats_per_char": loss_sum / max(chars, 1),
                "bits_per_byte": loss_sum / math.log(2) / max(sum(len(r["text"].encode()) for r in rows), 1)}
    return out


def _label_ids(rows: list[dict], labels: list[str] | None, model: Any) -> list[int]:
    """Label column values as class ids: a name of `labels` (or of the model's label2id), or an integer."""
    names = labels or [model.config.id2label[i] for i in range(model.config.num_labels)]
    ids = []
    for r in rows:
        value = r["label"]
        if value is None:
            raise UserError(f"{r['row_id']}: no label", hint="every row needs the label column to be scored")
        if value in names:
            ids.append(names.index(value))
        elif value.lstrip("-").isdigit() and 0 <= int(value) < model.config.num_labels:
            ids.append(int(value))
        else:
            raise UserError(f"{r['row_id']}: label '{value}' is not one of the model's {model.config.num_labels} "
                            f"classes ({', '.join(map(str, names))})")
    return ids


def _features(tok: Any, model: Any, rows: list[dict]) -> list[np.ndarray]:
    """As training collates: [CLS] ids [SEP] (BERT-style tokenizers), cut to the model's length."""
    meta = ModelMeta(cls_id=tok.cls_token_id, sep_id=tok.sep_token_id, pad_id=None,
                     max_length=getattr(model.config, "max_position_embeddings", 512))
    return [with_special_tokens(np.asarray(ids), meta) for ids in _encode(tok, [r["text"] for r in rows])]


def _logits(model: Any, tok: Any, rows: list[dict], batch_size: int) -> Iterator[torch.Tensor]:
    feats = _features(tok, model, rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for i in range(0, len(feats), batch_size):
        ids, mask = pad_batch(feats[i:i + batch_size], pad)
        yield model(input_ids=ids, attention_mask=mask).logits.float()


def _classify(model: Any, tok: Any, path: str, fields: dict, batch_size: int) -> dict:
    rows, rejected = read_rows(path, fields["text_field"], fields["label_field"])
    gold = torch.tensor(_label_ids(rows, fields["labels"], model))
    k = model.config.num_labels
    confusion = np.zeros(k * k)
    for i, logits in enumerate(_logits(model, tok, rows, batch_size)):
        confusion += confusion_counts(logits.argmax(-1), gold[i * batch_size: i * batch_size + len(logits)], k)
    return {"rejected": sum(rejected.values()), **classification_metrics(confusion)}


# ---------------------------------------------------------------- predict


@torch.no_grad()
def predict_file(model_dir: str, input_path: str, output_path: str, kind: str, batch_size: int = 16,
                 max_new_tokens: int = 40, seed: int = 0) -> dict:
    """One JSON line per row: a continuation (causal LM), the masks filled (masked LM), or the label and
    class probabilities (classifier). `kind`: the task's name."""
    model, tok = _load(model_dir, kind)
    fields = data_fields(model_dir) if kind == "sequence-classification" else {"text_field": "text"}
    rows, _ = read_rows(input_path, fields["text_field"])
    if kind == "sequence-classification":
        preds = _predict_labels(model, tok, rows, fields["labels"], batch_size)
    elif kind == "causal-lm":
        preds = _continue(model, tok, rows, max_new_tokens, seed)
    else:
        preds = _fill_masks(model, tok, rows)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path, "w") as f:
        f.writelines(json.dumps({"id": r["row_id"], "text": r["text"], **p}) + "\n" for r, p in zip(rows, preds))
    return {"task": kind, "rows": len(rows), "output": output_path}


def _predict_labels(model: Any, tok: Any, rows: list[dict], labels: list[str] | None,
                    batch_size: int) -> Iterator[dict]:
    names = labels or [model.config.id2label[i] for i in range(model.config.num_labels)]
    for logits in _logits(model, tok, rows, batch_size):
        for p in logits.softmax(-1).tolist():
            best = int(np.argmax(p))
            yield {"label": names[best], "label_id": best, "probs": [round(x, 6) for x in p]}


def _continue(model: Any, tok: Any, rows: list[dict], max_new_tokens: int, seed: int) -> Iterator[dict]:
    """A sampled continuation of each row, as `raylm generate` samples (evaluation.sample_continuation)."""
    for i, r in enumerate(rows):
        prompt, out = sample_continuation(model, tok, _encode(tok, [r["text"]])[0], max_new_tokens, seed + i)
        yield {"completion": tok.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)}


def _fill_masks(model: Any, tok: Any, rows: list[dict], top: int = 5) -> Iterator[dict]:
    """The `top` likeliest tokens at each of the row's mask tokens (write the tokenizer's mask token in the text)."""
    if tok.mask_token is None:
        raise UserError("this masked LM's tokenizer has no mask token to fill")
    for r in rows:
        ids = torch.tensor([_encode(tok, [r["text"]])[0][:_context(model)]])
        where = ids[0].eq(tok.mask_token_id).nonzero().flatten().tolist()
        probs = model(input_ids=ids).logits[0, where].softmax(-1) if where else torch.zeros(0)
        yield {"masks": [[{"token": tok.decode([int(t)]), "prob": round(float(p), 6)}
                          for p, t in zip(*row.topk(top))] for row in probs]}
