"""`raylm eval` and `raylm predict` for BERT pretraining models (an exported `BertForPreTraining`,
trained with `data.nsp: true`):

    raylm eval MODEL --config CONFIG        MLM loss/perplexity and NSP accuracy on a prepared split
    raylm eval MODEL --input DOCS           the same on a raw document file: the pairs are built with
                                            the model's tokenizer as `raylm prepare` builds them (seed 0)
    raylm predict MODEL --input PAIRS.jsonl --output OUT.jsonl
                                            per input pair `{id?, a, b}` one line `{id, a, b,
                                            is_next_prob, is_next}`

`is_next_prob` is the NSP head's softmax probability that B is the segment that follows A (HF
label 0); `is_next` is `is_next_prob >= 0.5`. A pair longer than the model's positions is cut as in
training (tokens off the longer side). Masking for the MLM loss is seeded: a file scores the same
every time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Iterator
from typing import Any

import torch

from raylm.datasets import _fs
from raylm.datasets._task_io import numbered_lines, plain_tokenizer
from raylm.datasets.clean import normalize, reject_reason
from raylm.datasets.config import DataConfig
from raylm.datasets.labelled import refuse_malformed
from raylm.datasets.sources import Unit, file_format, read_unit
from raylm.errors import UserError
from raylm.tasks.corpus_eval import _empty_split_hint, split_batches
from raylm.tasks.meta import ModelMeta
from raylm.tasks.nsp import collate, metrics, pad_pairs, score
from raylm.tasks.nsp_data import split_sentences
from raylm.tasks.nsp_pairs import IS_NEXT, nsp_examples, pack_pair

TASK = "next-sentence-prediction"
PAIR_KEYS = (("a", "b"), ("sentence1", "sentence2"), ("text_a", "text_b"))


def load(model_dir: str) -> tuple[Any, Any, ModelMeta]:
    """(BertForPreTraining in eval mode, plain tokenizer, the ids and sizes collate needs)."""
    from transformers import AutoTokenizer, BertForPreTraining


    model = BertForPreTraining.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    meta = ModelMeta(pad_id=tok.pad_token_id or 0, cls_id=tok.cls_token_id, sep_id=tok.sep_token_id,
                     mask_id=tok.mask_token_id, vocab_size=model.config.vocab_size,
                     block_size=model.config.max_position_embeddings)
    missing = [k for k in ("cls_id", "sep_id", "mask_id") if getattr(meta, k) is None]
    if missing:
        raise UserError(f"{model_dir}: its tokenizer has no {', '.join(k[:-3] for k in missing)} token",
                        hint="NSP pairs are [CLS] A [SEP] B [SEP]: export the model with its BERT tokenizer")
    return model, plain_tokenizer(tok), meta


@torch.no_grad()
def _score_all(model: Any, batches: Iterator[dict], meta: ModelMeta) -> list[float]:
    total = torch.zeros(5, dtype=torch.float64)
    for i, batch in enumerate(batches):
        total += score(model, collate(batch, meta, step_seed=i)).double()
    return total.tolist()


def _result(total: list[float], **extra: Any) -> dict:
    m = metrics(total, prefix="")
    m["perplexity"] = m.pop("ppl")
    return {**extra, "examples": int(m.pop("pairs")), "masked_tokens": int(total[1]), **m}


# ---------------------------------------------------------------- eval


def evaluate_prepared(model_dir: str, prepared_dir: str, manifest: dict, split: str = "validation",
                      batch_size: int = 32, max_batches: int | None = None) -> dict:
    """MLM loss/perplexity and NSP accuracy of an exported model on a split of NSP shards."""

    model, _, meta = load(model_dir)
    meta = dataclasses.replace(meta, **{k: manifest[k] for k in ("pad_id", "cls_id", "sep_id", "mask_id")
                                        if manifest.get(k) is not None})
    total = _score_all(model, split_batches(prepared_dir, manifest, split, batch_size, max_batches), meta)
    if not total[3]:
        raise UserError(f"split '{split}' of {prepared_dir} has no pairs to evaluate",
                        hint=_empty_split_hint(prepared_dir, manifest, split))
    return _result(total, split=split)


def read_documents(path: str, tok: Any, text_field: str = "text") -> tuple[list[list[list[int]]], int]:
    """(documents as token ids per sentence, rows rejected) of a raw file, read and cleaned as
    `raylm prepare` reads it: text (blank-line separated documents, a sentence a line) or JSONL,
    CSV, Parquet (`text_field`, cut at sentence ends)."""

    cfg = DataConfig(on_error="skip", text_field=text_field)
    docs, rejected = [], 0
    for uri, size in _fs.list_files(path):
        unit = Unit(uri, file_format(uri, cfg.format), size)
        for row in read_unit(unit, cfg):
            refuse_malformed([row], hint=f"fix the line: the export reads the '{text_field}' field")
            text = normalize(row["text"]) if not row["reject"] else ""
            if not text or reject_reason(text, cfg):
                rejected += 1
                continue
            sents = split_sentences(text, unit.fmt == "text")
            docs.append([e.ids for e in tok.encode_batch(sents, add_special_tokens=False)] if sents else [])
    return docs, rejected


def evaluate_file(model_dir: str, input_path: str, batch_size: int = 32, seed: int = 0) -> dict:
    """MLM loss/perplexity and NSP accuracy on pairs built from a raw document file."""

    model, tok, meta = load(model_dir)
    docs, rejected = read_documents(input_path, tok)
    try:
        examples = nsp_examples(docs, meta.block_size, meta.cls_id, meta.sep_id, seed)
    except ValueError as err:
        raise UserError(f"{input_path}: {err} ({len(docs)} documents read, {rejected} rejected)",
                        hint="documents are blank-line separated paragraphs, one sentence a line (or JSONL {text})") from None
    if not examples:
        raise UserError(f"{input_path}: no document has two sentences: no pair to score")
    chunks = (_columns(examples[i:i + batch_size]) for i in range(0, len(examples), batch_size))
    total = _score_all(model, chunks, meta)
    return _result(total, task=TASK, documents=len(docs), rejected=rejected,
                   is_next=sum(e["next_sentence_label"] == IS_NEXT for e in examples))


def _columns(rows: list[dict]) -> dict[str, list]:
    return {k: [r[k] for r in rows] for k in rows[0]}


# ---------------------------------------------------------------- predict


def read_pairs(path: str) -> Iterator[dict]:
    """`{row_id, id, a, b}` per JSONL line `{id?, a, b}` (or sentence1/sentence2, text_a/text_b)."""

    for no, line in numbered_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{no}"
        try:
            obj = json.loads(line)
        except ValueError:
            raise UserError(f"{where}: malformed JSON", hint="one JSON object a line: {\"a\": ..., \"b\": ...}") from None
        keys = next((k for k in PAIR_KEYS if isinstance(obj, dict) and k[0] in obj and k[1] in obj), None)
        if keys is None or not all(isinstance(obj[k], str) and obj[k].strip() for k in keys):
            raise UserError(f"{where}: expected an object with two non-empty texts \"a\" and \"b\"",
                            hint="also read: sentence1/sentence2, text_a/text_b")
        yield {"row_id": where, "id": obj.get("id", where), "a": obj[keys[0]], "b": obj[keys[1]]}


@torch.no_grad()
def is_next_probs(model: Any, tok: Any, meta: ModelMeta, pairs: list[tuple[str, str]], batch_size: int = 32) -> list[float]:
    """P(B follows A) for each (A, B) text pair."""

    rng, out = random.Random(0), []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        enc = tok.encode_batch([t for p in chunk for t in p], add_special_tokens=False)
        rows = [pack_pair(enc[2 * k].ids, enc[2 * k + 1].ids, meta.block_size - 3, meta.cls_id, meta.sep_id, rng)
                for k in range(len(chunk))]
        inputs = pad_pairs(_columns(rows), meta.pad_id)
        logits = model(**inputs).seq_relationship_logits
        out += torch.softmax(logits.float(), -1)[:, 0].tolist()
    return out


def predict_file(model_dir: str, input_path: str, output_path: str, batch_size: int = 32) -> dict:
    """One JSON line per pair: `{id, a, b, is_next_prob, is_next}`."""
    model, tok, meta = load(model_dir)
    rows = list(read_pairs(input_path))
    if not rows:
        raise UserError(f"{input_path}: no sentence pair to predict", hint="JSONL, one {\"a\": ..., \"b\": ...} a line")
    probs = is_next_probs(model, tok, meta, [(r["a"], r["b"]) for r in rows], batch_size)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path, "w") as f:
        f.writelines(json.dumps({"id": r["id"], "a": r["a"], "b": r["b"], "is_next_prob": p, "is_next": p >= 0.5}) + "\n"
                     for r, p in zip(rows, probs))
    return {"task": TASK, "rows": len(rows), "output": output_path}
