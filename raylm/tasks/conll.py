"""Token classification (NER) data: CoNLL column files and JSONL {tokens, tags}, IOB2 tags, and
word-level labels aligned to a fast tokenizer's sub-tokens.

Rows are `{tokens, tags, source, row_id, reject}` with `tags` in IOB2 whatever the input scheme
(CoNLL-2003 ships IOB1: `B-` only between two adjacent entities of one type). Sub-token labels
follow BERT (Devlin et al. 2019, 5.3): the first sub-token of a word carries the word's tag, the
others and the special tokens -100, so the loss and the metric see one prediction per word.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from raylm.datasets._task_io import base_row, check_on_error, encoder, numbered_lines, plain_tokenizer, reject
from raylm.datasets.config import DataConfig
from raylm.datasets.labelled import IDS, LabelledFormat
from raylm.datasets.sources import BadRowError

__all__ = ["IGNORE", "align_labels", "label_list", "merge_word_predictions", "plain_tokenizer", "read_conll",
           "read_ner", "read_token_jsonl", "to_iob2", "tokenize_ner_batch", "word_windows"]

IGNORE = -100  # torch.nn.CrossEntropyLoss's default ignore_index
DOCSTART = "-DOCSTART-"
_TAG = re.compile(r"^(O|[BI]-\S+)$")


# ---------------------------------------------------------------- tags


def to_iob2(tags: Sequence[str]) -> list[str]:
    """IOB1 or IOB2 tags as IOB2: an `I-X` that does not continue an `X` entity begins one.

    Valid IOB2 comes back unchanged, so the input scheme need not be known. Raises ValueError
    on a tag that is neither `O` nor `B-`/`I-` + type (IOBES `S-`/`E-`, bare `PER`).
    """
    out: list[str] = []
    prev = "O"
    for tag in tags:
        if not _TAG.match(tag):
            raise ValueError(f"tag {tag!r} is not O, B-TYPE or I-TYPE (IOB1/IOB2)")
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        prev = tag
    return out


def label_list(tag_rows: Iterable[Sequence[str]]) -> list[str]:
    """Tag names in id order: `O` first, then `B-T`, `I-T` for each entity type T sorted."""
    types = sorted({t[2:] for tags in tag_rows for t in tags if t != "O"})
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


# ---------------------------------------------------------------- readers


def read_conll(path: str, tag_column: int = -1, on_error: str = "fail") -> Iterator[dict]:
    """Sentences of a CoNLL column file: one token a line (`word ... tag`, whitespace separated),
    sentences ended by blank lines and `-DOCSTART-` lines. Every token line must have as many
    columns as the file's first; `row_id` is the file and line of the sentence's first token."""
    check_on_error(on_error)
    width, start, lines = None, 0, []
    for no, line in numbered_lines(path):
        cols = line.split()
        if cols and cols[0] != DOCSTART:
            width = width or len(cols)
            start = start or no
            lines.append((no, cols))
            continue
        if lines:
            yield _sentence(path, start, lines, width, tag_column, on_error)
        start, lines = 0, []
    if lines:
        yield _sentence(path, start, lines, width, tag_column, on_error)


def _sentence(path: str, start: int, lines: list, width: int, tag_column: int, on_error: str) -> dict:
    row = base_row(path, start) | {"tokens": [], "tags": []}
    for no, cols in lines:
        if len(cols) != width or not -width <= tag_column < width:
            row["row_id"] = f"{path}:{no}"
            what = (f"expected {width} columns (as the file's first token line), got {len(cols)}" if len(cols) != width
                    else f"tag column {tag_column} out of range for {width} columns")
            return _bad(row, "wrong_columns", what, on_error)
    row["tokens"] = [cols[0] for _, cols in lines]
    return _with_tags(row, [cols[tag_column] for _, cols in lines], on_error,
                      lines=[no for no, _ in lines])


def read_token_jsonl(path: str, tokens_field: str = "tokens", tags_field: str = "tags",
                     on_error: str = "fail") -> Iterator[dict]:
    """Sentences of a JSONL file, one `{tokens: [...], tags: [...]}` object a line (blank lines skipped)."""
    check_on_error(on_error)
    for no, line in numbered_lines(path):
        if line.strip():
            yield _json_sentence(base_row(path, no) | {"tokens": [], "tags": []}, line, tokens_field, tags_field,
                                 on_error)


def _json_sentence(row: dict, line: str, tokens_field: str, tags_field: str, on_error: str) -> dict:
    try:
        obj = json.loads(line)
    except ValueError:
        return _bad(row, "malformed_json", "malformed JSON", on_error)
    tokens, tags = (obj.get(tokens_field), obj.get(tags_field)) if isinstance(obj, dict) else (None, None)
    if not _str_list(tokens) or not _str_list(tags):
        return _bad(row, "missing_field", f"'{tokens_field}' and '{tags_field}' must be lists of strings", on_error)
    if len(tokens) != len(tags):
        return _bad(row, "wrong_columns", f"{len(tokens)} tokens but {len(tags)} tags", on_error)
    row["tokens"] = tokens
    return _with_tags(row, tags, on_error)


def read_ner(path: str, tag_column: int = -1, on_error: str = "fail") -> Iterator[dict]:
    """`read_token_jsonl` for .jsonl/.json(.gz), `read_conll` for anything else (eng.train, .conll, .txt)."""
    base = re.sub(r"\.(gz|zst|zstd)$", "", path)
    if base.endswith((".jsonl", ".json", ".ndjson")):
        return read_token_jsonl(path, on_error=on_error)
    return read_conll(path, tag_column=tag_column, on_error=on_error)


def _with_tags(row: dict, tags: list[str], on_error: str, lines: list[int] | None = None) -> dict:
    bad = next((i for i, t in enumerate(tags) if not _TAG.match(t)), None)
    if bad is not None:
        if lines:
            row["row_id"] = f"{row['source']}:{lines[bad]}"
        return _bad(row, "bad_tag", f"tag {tags[bad]!r} is not O, B-TYPE or I-TYPE (IOB1/IOB2)", on_error)
    row["tags"] = to_iob2(tags)
    return row


def _bad(row: dict, reason: str, detail: str, on_error: str) -> dict:
    row["tokens"], row["tags"] = [], []
    return reject(row, reason, detail, on_error)


def _str_list(x: object) -> bool:
    return isinstance(x, list) and all(isinstance(s, str) for s in x)


# ---------------------------------------------------------------- sub-token labels


def word_windows(word_starts: Sequence[int], n_tokens: int, budget: int, stride: int = 0) -> list[tuple[int, int]]:
    """Sub-token ranges [a, b) of at most `budget` tokens covering every word's first sub-token.

    Each window starts on a word and ends before a word (a single word longer than `budget` is cut
    after `budget` sub-tokens: its first one, which carries the label, is kept). Consecutive
    windows overlap by at most `stride` tokens, rounded down to whole words, for context.
    """
    if budget < 1 or stride < 0:
        raise ValueError(f"need budget >= 1 and stride >= 0, got budget={budget} stride={stride}")
    starts = list(word_starts) + [n_tokens]
    windows, i = [], 0
    while True:
        a = starts[i]
        j = max(i + 1, bisect.bisect_right(starts, a + budget) - 1)  # the first word left out
        b = min(starts[j], a + budget)
        windows.append((a, b))
        if j == len(starts) - 1:
            return windows
        # Next: the first word starting within `stride` tokens before b (word j at the latest).
        i = next(k for k in range(i + 1, j + 1) if starts[k] >= b - stride)


def align_labels(tokenizer, words: Sequence[str], label_ids: Sequence[int], max_length: int = 512,
                 stride: int = 0) -> list[dict]:
    """Features `{input_ids, attention_mask, labels, word_ids}` for one sentence, one per window.

    `tokenizer` is a `tokenizers.Tokenizer` or a transformers fast tokenizer without truncation
    or padding (see `plain_tokenizer`). Words are encoded
    once, pre-tokenized (`is_split_into_words`); a sentence longer than `max_length` is cut into
    `word_windows` that keep the tokenizer's special tokens around each window. `word_ids` holds
    each token's word index (-1 for specials), for `merge_word_predictions`.
    """
    if len(words) != len(label_ids):
        raise ValueError(f"{len(words)} words but {len(label_ids)} labels")
    enc = encoder(tokenizer).encode(list(words), is_pretokenized=True)
    ids, wids = enc.ids, enc.word_ids
    inner = [t for t, w in enumerate(wids) if w is not None]
    lo, hi = (inner[0], inner[-1] + 1) if inner else (len(ids), len(ids))
    head, tail = list(range(lo)), list(range(hi, len(ids)))
    budget = max_length - len(head) - len(tail)
    starts = [t - lo for t in range(lo, hi) if t == lo or wids[t] != wids[t - 1]]
    out = []
    for a, b in word_windows(starts, hi - lo, budget, stride) if hi > lo else [(0, 0)]:
        keep = head + list(range(lo + a, lo + b)) + tail
        w = [wids[t] for t in keep]
        first = [t == lo + a or wids[t] != wids[t - 1] for t in keep]  # a window starts on a word
        out.append({
            "input_ids": [ids[t] for t in keep],
            "attention_mask": [1] * len(keep),
            "labels": [label_ids[wi] if wi is not None and f else IGNORE for wi, f in zip(w, first)],
            "word_ids": [-1 if wi is None else wi for wi in w],
        })
    return out


def tokenize_ner_batch(batch: dict, tokenizer, label2id: dict[str, int], max_length: int = 512,
                       stride: int = 0) -> dict[str, list]:
    """A Ray Data `map_batches` body: rows `{tokens, tags, row_id}` -> one row per window, with the
    sentence's `row_id` on each (a long sentence gives several)."""
    cols: dict[str, list] = {k: [] for k in ("input_ids", "attention_mask", "labels", "word_ids", "row_id")}
    for words, tags, rid in zip(batch["tokens"], batch["tags"], batch["row_id"]):
        for feat in align_labels(tokenizer, list(words), [label2id[t] for t in tags], max_length, stride):
            for k, v in feat.items():
                cols[k].append(v)
            cols["row_id"].append(rid)
    return cols


def merge_word_predictions(word_ids: Sequence[Sequence[int]], predictions: Sequence[Sequence[int]],
                           n_words: int) -> list[int]:
    """One prediction per word from a sentence's windows (sub-token predictions, labelled tokens only).

    A word seen by two overlapping windows takes the prediction of the window where it has the most
    context on its shorter side (the "max context" rule of BERT's run_squad.py). -1: never seen.
    """
    best: list[tuple[int, int]] = [(-1, -1)] * n_words  # (context, prediction)
    for wids, preds in zip(word_ids, predictions):
        pos = [k for k, w in enumerate(wids) if w >= 0 and (k == 0 or wids[k - 1] != w)]
        for rank, k in enumerate(pos):
            context = min(rank, len(pos) - 1 - rank)
            if context > best[wids[k]][0]:
                best[wids[k]] = (context, int(preds[k]))
    return [p for _, p in best]


# ---------------------------------------------------------------- `raylm prepare` (raylm.datasets.labelled)


def ner_features(tokenizer: Any, row: dict, label2id: dict[str, int], max_length: int, stride: int) -> list[dict]:
    """Windows of one sentence: input_ids, labels (-100 off first sub-tokens), word_ids (see align_labels)."""
    words = list(row["tokens"])
    tags = list(row.get("tags") or ["O"] * len(words))
    feats = align_labels(tokenizer, words, [label2id.get(t, 0) for t in tags], max_length, stride)
    return [{k: f[k] for k in ("input_ids", "labels", "word_ids")} for f in feats]


class NerFormat(LabelledFormat):
    """Token classification: CoNLL files or JSONL `{tokens, tags}`; the tag set from data.labels or the data."""

    name = "token-classification"
    fields = [("tokens", pa.list_(pa.string())), ("tags", pa.list_(pa.string()))]
    feature_schema = pa.schema([("sample_id", pa.int64()), ("input_ids", IDS), ("labels", IDS), ("word_ids", IDS),
                                ("row_id", pa.string()), ("split", pa.string())])

    def read_rows(self, path: str, cfg: DataConfig, on_error: str) -> Iterator[dict]:
        if re.sub(r"\.(gz|zst|zstd)$", "", path).endswith((".jsonl", ".json", ".ndjson")):
            return read_token_jsonl(path, cfg.ner.tokens_field, cfg.ner.tags_field, on_error)
        return read_conll(path, cfg.ner.tag_column, on_error)

    def row_text(self, row: dict) -> str:
        return " ".join(row["tokens"])

    def check_rows(self, rows: Any, cfg: DataConfig) -> Any:
        """With data.labels given, a sentence holding another tag is rejected as unknown_tag."""
        if not cfg.labels:
            return rows
        labels, on_error = list(cfg.labels), cfg.on_error
        known = set(labels)

        def mark(batch: pa.Table) -> pa.Table:
            out = batch.to_pylist()
            for r in out:
                bad = next((t for t in r["tags"] if t not in known), None)
                if not r["reject"] and bad is not None:
                    if on_error == "fail":
                        raise BadRowError(f"{r['row_id']}: tag {bad!r} is not in data.labels {labels}")
                    r["reject"] = "unknown_tag"
            return pa.Table.from_pylist(out, schema=batch.schema)

        return rows.map_batches(mark, batch_format="pyarrow")

    def labels(self, cfg: DataConfig, tags: set[str]) -> list[str] | None:
        """Tag names in id order: data.labels, else O then B-/I- of each type seen in the kept rows."""
        return list(cfg.labels) if cfg.labels else label_list([sorted(tags)])

    def features(self, tok: Any, row: dict, cfg: DataConfig, label2id: dict[str, int], state: Any) -> list[dict]:
        return ner_features(tok, row, label2id, cfg.max_length, cfg.ner.stride)
