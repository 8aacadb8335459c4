"""Extractive QA data (SQuAD v1.1/v2.0): readers, windowed question+context features, and the
post-processing that turns per-window start/end logits back into answer text.

Rows are `{id, title, question, context, answers: {text: [...], answer_start: [...]},
is_impossible, source, row_id, reject}` (the flat layout of HF `datasets`' squad). A context
longer than the model sees is cut into overlapping windows ("doc stride", Devlin et al. 2019,
4.2): only the context is cut, the question repeats in each window, and each window keeps the
character offsets of its context tokens so a predicted span maps back to the original text.
"""

from __future__ import annotations

import heapq
import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa

from raylm.datasets._task_io import (
    base_row,
    check_on_error,
    encoder,
    jsonl_rows,
    plain_tokenizer,
    read_text,
    reject,
)
from raylm.datasets.config import DataConfig
from raylm.datasets.labelled import IDS, LabelledFormat
from raylm.datasets.sources import BadRowError

__all__ = ["CLS_INDEX", "NO_OFFSET", "answer_problem", "answer_tokens", "best_answers", "plain_tokenizer",
           "qa_features", "read_squad", "span_windows", "tokenize_qa_batch"]

CLS_INDEX = 0  # an answer outside the window (or none, v2) is labelled [CLS], as in BERT
NO_OFFSET = (-1, -1)  # offsets of tokens that are not context (Arrow-friendly, unlike None)


# ---------------------------------------------------------------- readers


def read_squad(path: str, on_error: str = "fail") -> Iterator[dict]:
    """Questions of a SQuAD JSON file (articles -> paragraphs -> qas) or of a JSONL file with one
    flat row `{id, question, context, answers: {text, answer_start}}` a line; `.gz` too."""
    check_on_error(on_error)
    base = re.sub(r"\.(gz|zst|zstd)$", "", path)
    if base.endswith((".jsonl", ".ndjson")):
        return _read_squad_jsonl(path, on_error)
    return _read_squad_json(path, on_error)


def _read_squad_json(path: str, on_error: str) -> Iterator[dict]:
    try:
        doc = json.loads(read_text(path))
        articles = doc["data"]
    except (ValueError, KeyError, TypeError):
        raise BadRowError(f"{path}:1: not a SQuAD JSON file ({{data: [articles]}})") from None
    for a, article in enumerate(articles):
        for p, para in enumerate(article.get("paragraphs", [])):
            for q, qa in enumerate(para.get("qas", [])):
                qid = str(qa.get("id", f"#{a}.{p}.{q}"))
                answers = qa.get("answers", [])
                flat = {"text": [x.get("text") for x in answers], "answer_start": [x.get("answer_start") for x in answers]}
                yield _check(base_row(path, qid) | {
                    "id": qid, "title": article.get("title", ""), "question": qa.get("question"),
                    "context": para.get("context"), "answers": flat,
                    "is_impossible": bool(qa.get("is_impossible", False))}, on_error)


def _read_squad_jsonl(path: str, on_error: str) -> Iterator[dict]:
    for no, row, line in jsonl_rows(path):
        try:
            obj = json.loads(line)
            answers = obj.get("answers") or {"text": [], "answer_start": []}
            row |= {"id": str(obj.get("id", no)), "title": obj.get("title", ""), "question": obj.get("question"),
                    "context": obj.get("context"), "answers": {k: list(answers[k]) for k in ("text", "answer_start")},
                    "is_impossible": bool(obj.get("is_impossible", not answers["text"]))}
        except (ValueError, KeyError, TypeError, AttributeError):
            yield _empty(reject(row, "malformed_json", "malformed JSON or answers not {text: [...], answer_start: [...]}",
                                on_error))
            continue
        yield _check(row, on_error)


def answer_problem(row: dict) -> str:
    """What is wrong with a question row, or "" (each answer must be the context at its offset)."""
    q, ctx, ans = row["question"], row["context"], row["answers"]
    if not isinstance(q, str) or not q.strip() or not isinstance(ctx, str) or not ctx.strip():
        return "question and context must be non-empty strings"
    if len(ans["text"]) != len(ans["answer_start"]):
        return f"{len(ans['text'])} answer texts but {len(ans['answer_start'])} answer_start"
    if not ans["text"] and not row["is_impossible"]:
        return "no answers (and not is_impossible)"
    for text, start in zip(ans["text"], ans["answer_start"]):
        if not isinstance(text, str) or not text or not isinstance(start, int):
            return f"answer {text!r} at {start!r}: text must be a non-empty string, answer_start an int"
        if ctx[start:start + len(text)] != text:
            return f"answer {text!r} is not the context at answer_start {start} (found {ctx[start:start + len(text)]!r})"
    return ""


def _check(row: dict, on_error: str) -> dict:
    if row["is_impossible"]:
        row["answers"] = {"text": [], "answer_start": []}  # v2 keeps "plausible_answers" elsewhere
    problem = answer_problem(row)
    if problem:
        return _empty(reject(row, "bad_answer", f"question {row['id']}: {problem}", on_error))
    return row


def _empty(row: dict) -> dict:
    defaults = {"id": "", "title": "", "question": "", "context": "", "is_impossible": False,
                "answers": {"text": [], "answer_start": []}}
    return defaults | {k: v for k, v in row.items() if k in ("id", "source", "row_id", "reject")}


# ---------------------------------------------------------------- features


def span_windows(n_tokens: int, budget: int, stride: int) -> list[tuple[int, int]]:
    """Token ranges [a, b) of `budget` tokens covering [0, n_tokens), each overlapping the previous
    by `stride` tokens (the overflowing-tokens rule of HF tokenizers)."""
    if not 0 <= stride < budget:
        raise ValueError(f"doc stride must be >= 0 and below the {budget} context tokens a window holds, got {stride}")
    windows, a = [], 0
    while True:
        b = min(n_tokens, a + budget)
        windows.append((a, b))
        if b >= n_tokens:
            return windows
        a = b - stride


def answer_tokens(offsets: Sequence[Sequence[int]], start_char: int, end_char: int) -> tuple[int, int] | None:
    """(first, last) index of the tokens covering characters [start_char, end_char), or None when the
    span is not wholly inside these tokens. `offsets` are (start, end) character offsets, in order."""
    if not offsets or offsets[0][0] > start_char or offsets[-1][1] < end_char:
        return None
    first = next(i for i, (_, e) in enumerate(offsets) if e > start_char)
    last = max(i for i, (s, _) in enumerate(offsets) if s < end_char)
    return first, max(first, last)


def qa_features(tokenizer, question: str, context: str, answers: Mapping | None = None, max_length: int = 384,
                stride: int = 128, max_question_tokens: int = 64) -> list[dict]:
    """Windows of `[CLS] question [SEP] context-slice [SEP]` (the tokenizer's own pair template);
    `tokenizer` must not truncate or pad (see `plain_tokenizer`).

    Each feature: input_ids, token_type_ids, attention_mask, offsets (character spans of context
    tokens in `context`, NO_OFFSET elsewhere), and, when `answers` is given, start_positions /
    end_positions of its first answer (CLS_INDEX when outside the window or no answer).
    """
    enc = encoder(tokenizer).encode(question, context)
    seq = enc.sequence_ids
    q = set([t for t, s in enumerate(seq) if s == 0][:max_question_tokens])
    c = [t for t, s in enumerate(seq) if s == 1]
    c_lo, c_hi = (c[0], c[-1] + 1) if c else (len(seq), len(seq))
    head = [t for t in range(c_lo) if seq[t] is None or t in q]  # specials + the (cut) question
    tail = list(range(c_hi, len(seq)))
    span = _answer_chars(answers)
    out = []
    for a, b in span_windows(len(c), max_length - len(head) - len(tail), stride) if c else [(0, 0)]:
        keep = head + c[a:b] + tail
        offsets = [tuple(enc.offsets[t]) if seq[t] == 1 else NO_OFFSET for t in keep]
        feat = {"input_ids": [enc.ids[t] for t in keep], "token_type_ids": [enc.type_ids[t] for t in keep],
                "attention_mask": [1] * len(keep), "offsets": [list(o) for o in offsets]}
        if answers is not None:
            where = answer_tokens([enc.offsets[t] for t in c[a:b]], *span) if span else None
            feat["start_positions"], feat["end_positions"] = (
                (len(head) + where[0], len(head) + where[1]) if where else (CLS_INDEX, CLS_INDEX))
        out.append(feat)
    return out


def _answer_chars(answers: Mapping | None) -> tuple[int, int] | None:
    if not answers or not len(answers["text"]):
        return None
    start = int(answers["answer_start"][0])
    return start, start + len(answers["text"][0])


def tokenize_qa_batch(batch: Mapping, tokenizer, max_length: int = 384, stride: int = 128,
                      max_question_tokens: int = 64, with_answers: bool = True) -> dict[str, list]:
    """A Ray Data `map_batches` body: question rows -> one row per window, with `example_id`."""
    cols: dict[str, list] = {}
    for i, qid in enumerate(batch["id"]):
        answers = {k: list(batch["answers"][i][k]) for k in ("text", "answer_start")} if with_answers else None
        for feat in qa_features(tokenizer, batch["question"][i], batch["context"][i], answers, max_length, stride,
                                max_question_tokens):
            for k, v in (feat | {"example_id": qid}).items():
                cols.setdefault(k, []).append(v)
    return cols


# ---------------------------------------------------------------- post-processing


def best_answers(features: Sequence[Mapping], start_logits: Sequence[Sequence[float]],
                 end_logits: Sequence[Sequence[float]], contexts: Mapping[str, str], n_best: int = 20,
                 max_answer_length: int = 30, allow_null: bool = False, null_threshold: float = 0.0) -> dict[str, str]:
    """The best answer text per question from its windows' logits (features carry `example_id`, `offsets`).

    Candidates are the `n_best` start x `n_best` end tokens of each window that lie in the context,
    end >= start, at most `max_answer_length` tokens; score = start + end logit. With `allow_null`
    (SQuAD v2) the answer is "" when the lowest [CLS] score over the windows beats the best span by
    more than `null_threshold`.
    """
    best: dict[str, tuple[float, str]] = {}
    null: dict[str, float] = {}
    for feat, s_log, e_log in zip(features, start_logits, end_logits):
        qid, offsets = feat["example_id"], feat["offsets"]
        # The least confident window's null score, as BERT's run_squad.py and HF's run_qa.py take.
        null[qid] = min(null.get(qid, float("inf")), s_log[CLS_INDEX] + e_log[CLS_INDEX])
        for score, i, j in _spans(offsets, s_log, e_log, n_best, max_answer_length):
            if score > best.get(qid, (float("-inf"), ""))[0]:
                best[qid] = (score, contexts[qid][offsets[i][0]:offsets[j][1]])
    out = {}
    for qid in null:
        score, text = best.get(qid, (float("-inf"), ""))
        out[qid] = "" if allow_null and null[qid] > score + null_threshold else text
    return out


def _spans(offsets: Sequence, s_log: Sequence[float], e_log: Sequence[float], n_best: int,
           max_len: int) -> Iterator[tuple[float, int, int]]:
    in_ctx = [k for k, o in enumerate(offsets) if o[0] >= 0]
    starts = heapq.nlargest(n_best, in_ctx, key=lambda k: s_log[k])
    ends = heapq.nlargest(n_best, in_ctx, key=lambda k: e_log[k])
    for i in starts:
        for j in ends:
            if i <= j < i + max_len:
                yield float(s_log[i]) + float(e_log[j]), i, j


# ---------------------------------------------------------------- `raylm prepare` (raylm.datasets.labelled)


def qa_windows(tokenizer: Any, row: dict, cfg: DataConfig, with_answers: bool = True) -> list[dict]:
    """Windows of one question (see qa_features), offsets split in two int lists for Arrow."""
    answers = row["answers"] if with_answers else None
    out = []
    for f in qa_features(tokenizer, row["question"], row["context"], answers, cfg.max_length, cfg.qa.doc_stride,
                         cfg.qa.max_question_tokens):
        out.append({"input_ids": f["input_ids"], "token_type_ids": f["token_type_ids"],
                    "start_positions": f.get("start_positions", 0), "end_positions": f.get("end_positions", 0),
                    "offset_start": [o[0] for o in f["offsets"]], "offset_end": [o[1] for o in f["offsets"]],
                    "example_id": row["id"], "context": row["context"],
                    "answers": list((row.get("answers") or {}).get("text") or [])})
    return out


class QaFormat(LabelledFormat):
    """Extractive QA: SQuAD JSON or JSONL; one row per question, windows over its context."""

    name = "question-answering"
    fields = [("id", pa.string()), ("question", pa.string()), ("context", pa.string()),
              ("answers", pa.struct([("text", pa.list_(pa.string())), ("answer_start", pa.list_(pa.int64()))])),
              ("is_impossible", pa.bool_())]
    feature_schema = pa.schema([
        ("sample_id", pa.int64()), ("input_ids", IDS), ("token_type_ids", IDS), ("start_positions", pa.int32()),
        ("end_positions", pa.int32()), ("offset_start", IDS), ("offset_end", IDS), ("example_id", pa.string()),
        ("context", pa.string()), ("answers", pa.list_(pa.string())), ("split", pa.string())])
    row_key = "example_id"
    eval_only_columns = ("context", "answers")

    def read_rows(self, path: str, cfg: DataConfig, on_error: str) -> Iterator[dict]:
        return read_squad(path, on_error)

    def row_text(self, row: dict) -> str:
        # Questions about one paragraph share a split (no context seen in training is scored).
        return row.get("context") or ""

    def sample_texts(self, rows: Iterator[dict], limit: int) -> Iterator[str]:
        return (f"{r['question']} {r['context']}" for r in itertools.islice(rows, limit))

    def features(self, tok: Any, row: dict, cfg: DataConfig, label2id: dict[str, int], state: Any) -> list[dict]:
        return qa_windows(tok, row, cfg)

    def manifest_extra(self, cfg: DataConfig, tok_dir: str) -> dict:
        return {"qa": cfg.qa.model_dump()}
