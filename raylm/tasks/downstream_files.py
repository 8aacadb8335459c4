"""`raylm predict` and `raylm eval --input` for the downstream tasks: a raw file is featurized on the
fly with the model's own tokenizer (the functions `raylm prepare` uses), run through the exported
model, and decoded per sentence (NER: windows merged by the max-context rule) or per question
(QA: the best span over the windows).

    raylm predict MODEL --input FILE --output OUT.jsonl   one JSON line per sentence / question
    raylm eval MODEL --input FILE                         entity P/R/F1 (NER), EM/F1 (QA)

The task is read from the exported model (`architectures` in config.json). Input files are read as
`raylm prepare` reads them (CoNLL or JSONL; SQuAD JSON or JSONL); `predict` also takes unlabelled
files: JSONL `{tokens}`/`{text}` and one-column CoNLL for NER, questions without answers for QA.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import torch

from raylm.datasets._task_io import numbered_lines, parse_json_object, plain_tokenizer, read_text
from raylm.datasets.config import DataConfig
from raylm.datasets.labelled import refuse_malformed
from raylm.errors import UserError
from raylm.tasks.collate import pad
from raylm.tasks.conll import NerFormat, merge_word_predictions, ner_features
from raylm.tasks.metrics import entity_scores, squad_scores
from raylm.tasks.squad import QaFormat, _spans, qa_windows


def load(model_dir: str, task: str) -> tuple[Any, Any]:
    """(model in eval mode, plain tokenizer) of an NER or QA export."""
    import transformers


    auto = "AutoModelForTokenClassification" if task == "token-classification" else "AutoModelForQuestionAnswering"
    model = getattr(transformers, auto).from_pretrained(model_dir).eval()
    return model, plain_tokenizer(transformers.AutoTokenizer.from_pretrained(model_dir))


def _max_length(model: Any, asked: int | None) -> int:
    limit = getattr(model.config, "max_position_embeddings", 512)
    limit -= 2 if getattr(model.config, "model_type", "") == "roberta" else 0
    return min(asked or limit, limit)


def _data_cfg(max_length: int) -> Any:
    return DataConfig(max_length=max_length, on_error="skip")


# ---------------------------------------------------------------- reading


def _labelled_rows(path: str, task: str, max_length: int) -> Iterator[dict]:
    fmt = NerFormat() if task == "token-classification" else QaFormat()
    return fmt.read_rows(path, _data_cfg(max_length), "skip")


def _unlabelled_rows(path: str, task: str) -> Iterator[dict]:
    """Rows for `predict`: labels are optional."""
    base = re.sub(r"\.(gz|zst|zstd)$", "", path)
    if task == "question-answering":
        yield from _questions(path, base)
        return

    if base.endswith((".jsonl", ".json", ".ndjson")):
        for no, line in numbered_lines(path):
            if line.strip():
                obj = parse_json_object(line, f"{path}:{no}")
                tokens = obj.get("tokens") or str(obj.get("text", "")).split()
                yield {"row_id": f"{path}:{no}", "id": obj.get("id"), "tokens": tokens, "reject": ""}
        return
    words, start = [], 0
    for no, line in [*numbered_lines(path), (-1, "")]:
        cols = line.split()
        if cols and cols[0] != "-DOCSTART-":
            start = start or no
            words.append(cols[0])
        elif words:
            yield {"row_id": f"{path}:{start}", "tokens": words, "reject": ""}
            words, start = [], 0


def _questions(path: str, base: str) -> Iterator[dict]:
    if base.endswith((".jsonl", ".ndjson")):
        for no, line in numbered_lines(path):
            if line.strip():
                obj = parse_json_object(line, f"{path}:{no}")
                yield {"row_id": f"{path}:{no}", "id": str(obj.get("id", no)), "question": obj.get("question") or "",
                       "context": obj.get("context") or "", "reject": ""}
        return
    doc = parse_json_object(read_text(path), f"{path}:1")
    for article in doc.get("data", []):
        for para in article.get("paragraphs", []):
            for qa in para.get("qas", []):
                yield {"row_id": f"{path}:{qa.get('id')}", "id": str(qa.get("id")), "question": qa.get("question") or "",
                       "context": para.get("context") or "", "reject": ""}


# ---------------------------------------------------------------- decoding


def _batches(feats: list[dict], size: int) -> Iterator[list[dict]]:
    for i in range(0, len(feats), size):
        yield feats[i:i + size]


@torch.no_grad()
def _run(model: Any, feats: list[dict], pad_id: int, keys: tuple[str, ...], batch_size: int) -> Iterator[Any]:
    for chunk in _batches(feats, batch_size):
        ids = pad([f["input_ids"] for f in chunk], pad_id)
        inputs = {"input_ids": ids, "attention_mask": pad([[1] * len(f["input_ids"]) for f in chunk], 0)}
        if "token_type_ids" in keys:
            inputs["token_type_ids"] = pad([f["token_type_ids"] for f in chunk], 0, ids.shape[1])
        yield chunk, model(**inputs)


def tag_sentences(model: Any, tok: Any, rows: list[dict], batch_size: int = 32, max_length: int | None = None,
                  stride: int = 0) -> list[list[str]]:
    """One tag per word for each row `{tokens}` (windows merged by the max-context rule)."""

    names = model.config.id2label
    feats = []
    for k, row in enumerate(rows):
        for f in ner_features(tok, {"tokens": row["tokens"]}, {}, _max_length(model, max_length), stride):
            feats.append(f | {"row": k})
    per_row: list[tuple[list, list]] = [([], []) for _ in rows]
    for chunk, out in _run(model, feats, model.config.pad_token_id or 0, (), batch_size):
        for f, logits in zip(chunk, out.logits.argmax(-1).tolist()):
            per_row[f["row"]][0].append(f["word_ids"])
            per_row[f["row"]][1].append(logits[: len(f["word_ids"])])
    tags = []
    for row, (wids, preds) in zip(rows, per_row):
        merged = merge_word_predictions(wids, preds, len(row["tokens"]))
        tags.append([names[p] if p >= 0 else "O" for p in merged])
    return tags


def answer_questions(model: Any, tok: Any, rows: list[dict], batch_size: int = 32, max_length: int | None = None,
                     doc_stride: int = 128, n_best: int = 20, max_answer_tokens: int = 30) -> list[dict]:
    """The best span per question `{id, question, context}`: `{answer, start, end}` (characters of the context)."""

    cfg = _data_cfg(_max_length(model, max_length))
    cfg.qa.doc_stride = min(doc_stride, cfg.max_length // 2)
    feats = [f | {"row": k} for k, row in enumerate(rows) for f in qa_windows(tok, row, cfg, with_answers=False)]
    best: list[tuple[float, int, int]] = [(float("-inf"), 0, 0)] * len(rows)
    for chunk, out in _run(model, feats, model.config.pad_token_id or 0, ("token_type_ids",), batch_size):
        for f, s_log, e_log in zip(chunk, out.start_logits.tolist(), out.end_logits.tolist()):
            offsets = list(zip(f["offset_start"], f["offset_end"]))
            for score, i, j in _spans(offsets, s_log[: len(offsets)], e_log[: len(offsets)], n_best, max_answer_tokens):
                if score > best[f["row"]][0]:
                    best[f["row"]] = (score, offsets[i][0], offsets[j][1])
    return [{"answer": row["context"][s:e], "start": s, "end": e} for row, (_, s, e) in zip(rows, best)]


# ---------------------------------------------------------------- entry points


def predict_file(model_dir: str, input_path: str, output_path: str, task: str, batch_size: int = 32) -> dict:
    """Write one JSON line per sentence (`{id, tokens, tags}`) or question (`{id, answer, start, end}`)."""
    model, tok = load(model_dir, task)
    rows = [r for r in _unlabelled_rows(input_path, task) if not r["reject"]]
    if not rows:
        raise UserError(f"{input_path}: no sentence or question to predict")
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path, "w") as f:
        if task == "token-classification":
            f.writelines(json.dumps({"id": row.get("id") or row["row_id"], "tokens": row["tokens"], "tags": tags}) + "\n" for row, tags in zip(rows, tag_sentences(model, tok, rows, batch_size)))
        else:
            f.writelines(json.dumps({"id": row["id"], "question": row["question"], **ans}) + "\n" for row, ans in zip(rows, answer_questions(model, tok, rows, batch_size)))
    return {"task": task, "rows": len(rows), "output": output_path}


def evaluate_file(model_dir: str, input_path: str, task: str, batch_size: int = 32) -> dict:
    """Score a raw labelled file: entity P/R/F1 per sentence (NER) or SQuAD EM/F1 per question (QA)."""

    model, tok = load(model_dir, task)
    read = refuse_malformed(list(_labelled_rows(input_path, task, _max_length(model, None))),
                            hint="fix the line: CoNLL (a token and its tag a line) or JSONL for NER, SQuAD JSON/JSONL for QA")
    rows = [r for r in read if not r["reject"]]
    if not rows:
        raise UserError(f"{input_path}: no labelled row to evaluate ({len(read)} read, all rejected)",
                        hint="check the file's format (CoNLL/JSONL for NER, SQuAD JSON/JSONL for QA)")
    if task == "token-classification":
        scores = entity_scores(tag_sentences(model, tok, rows, batch_size), [r["tags"] for r in rows])
    else:
        preds = answer_questions(model, tok, rows, batch_size)
        scores = squad_scores([p["answer"] for p in preds], [r["answers"]["text"] for r in rows])
    return {"task": task, "examples": len(rows), "rejected": len(read) - len(rows), **scores}
