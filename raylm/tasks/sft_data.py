"""sft (instruction tuning) for `raylm prepare` (`raylm.datasets.labelled`): chat rows -> token ids with the
trained tokens marked -> shards, one example a row or several packed into rows of data.max_length tokens.

    files --(chat_data.read_chat: messages | instruction/output | prompt/response | two fields | transcript)-->
          rows {messages_json} | a reject (no_assistant_turn, unknown_role, empty_message, malformed_json, ...)
          --(check_rows: rendered and encoded)--> too_long rejects (data.sft.too_long; truncation that leaves
            no trained token)
          --(features)--> {input_ids, labels (-100 but on the trained tokens)}
          --(pack, data.sft.packing)--> {input_ids, labels, seq_lens, row_ids}: best fit decreasing per
            data.sft.pack_window examples

The manifest's `sft` entry reports the trained-token share and the packing efficiency (real tokens / row
tokens; with padding to max_length what it would be).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylm.datasets.config import DataConfig
from raylm.datasets.labelled import IDS, LabelledFormat, pool_size
from raylm.datasets.pack import sample_id
from raylm.datasets.tokenizers import train_bpe
from raylm.tasks.chat_data import ChatFields, read_chat
from raylm.tasks.collate import IGNORE
from raylm.tasks.packing import best_fit_decreasing

# truncated: examples cut at data.max_length (data.sft.too_long: truncate) in the row, counted in the manifest
ROW_SCHEMA = pa.schema([("sample_id", pa.int64()), ("input_ids", IDS), ("labels", IDS), ("row_id", pa.string()),
                        ("truncated", pa.int32()), ("split", pa.string())])
PACKED_SCHEMA = pa.schema([("sample_id", pa.int64()), ("input_ids", IDS), ("labels", IDS),
                           ("seq_lens", pa.list_(pa.int32())), ("row_ids", pa.list_(pa.string())),
                           ("truncated", pa.int32()), ("split", pa.string())])


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def conversation_text(messages: list[dict]) -> str:
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


class ChatEncoder:
    """A chat tokenizer (template + end-of-turn token) and its plain backend, loaded once per worker."""

    def __init__(self, tokenizer_dir: str) -> None:
        from transformers import AutoTokenizer

        from raylm.datasets._task_io import plain_tokenizer
        from raylm.tasks.chat_template import chat_tokens

        self.tok = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
        self.backend = plain_tokenizer(self.tok)
        self.ids = chat_tokens(self.tok, tokenizer_dir)

    def encode(self, messages: list[dict], loss_on: str) -> tuple[list[int], list[int]]:
        from raylm.tasks.chat_template import encode_chat

        return encode_chat(self.tok, self.backend, messages, self.ids.end_of_turn, loss_on)


def fit(ids: list[int], labels: list[int], max_length: int, too_long: str) -> tuple[list[int], list[int]] | None:
    """The example within max_length (truncated at its end under `truncate`), or None when it cannot train:
    too long under `reject`, or no trained token left after the cut."""
    if len(ids) > max_length:
        if too_long == "reject":
            return None
        ids, labels = ids[:max_length], labels[:max_length]
    if not any(t != IGNORE for t in labels[1:]):  # the first token is never a target (labels are shifted)
        return None
    return ids, labels


class _LengthCheck:
    """check_rows' actor: rows that cannot fit data.max_length become too_long rejects."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg, self.enc = cfg, ChatEncoder(cfg.tokenizer.path)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for r in rows:
            if r["reject"]:
                continue
            ids, labels = self.enc.encode(json.loads(r["messages_json"]), self.cfg.sft.loss_on)
            if fit(ids, labels, self.cfg.max_length, self.cfg.sft.too_long) is None:
                r["reject"] = "too_long"
        return pa.Table.from_pylist(rows, schema=batch.schema)


def pack_rows(batch: pa.Table, max_length: int) -> pa.Table:
    """One block of examples (both splits) packed into rows of at most `max_length` tokens, per split."""
    out: dict[str, list] = {k: [] for k in PACKED_SCHEMA.names}
    for split in set(batch.column("split").to_pylist()):
        part = batch.filter(pc.equal(batch["split"], split)).to_pylist()
        for b in best_fit_decreasing([len(r["input_ids"]) for r in part], max_length):
            rows = [part[i] for i in b]
            out["input_ids"].append([t for r in rows for t in r["input_ids"]])
            out["labels"].append([t for r in rows for t in r["labels"]])
            out["seq_lens"].append([len(r["input_ids"]) for r in rows])
            out["row_ids"].append([r["row_id"] for r in rows])
            out["truncated"].append(sum(r["truncated"] for r in rows))
            out["sample_id"].append(sample_id("|".join(sorted(r["row_id"] for r in rows)), 0))
            out["split"].append(split)
    return pa.table(out, schema=PACKED_SCHEMA)


def summary(manifest: dict) -> dict:
    """What the shards train on: the trained-token share, and the packing efficiency (real tokens / row tokens)
    beside what padding every example to max_length would give."""
    width = manifest["max_length"]
    out = {}
    for split, s in manifest["splits"].items():
        tokens, examples, rows = s.get("tokens_out", 0), s.get("examples", 0), s.get("rows", 0)
        out[split] = {"examples": examples, "truncated": s.get("truncated", 0), "rows": rows, "tokens": tokens,
                      "trained_tokens": s.get("trained_tokens", 0),
                      "trained_share": round(s.get("trained_tokens", 0) / max(tokens, 1), 4),
                      "row_efficiency": round(tokens / max(rows * width, 1), 4),
                      "padded_to_max_length_efficiency": round(tokens / max(examples * width, 1), 4),
                      "longest_example": s.get("longest_example", 0)}
    return out


class ChatFormat(LabelledFormat):
    """Chat rows for `raylm.datasets.labelled` (trainer.task: sft). `cfg.tokenizer.path` is the chat tokenizer
    (raylm.tasks.chat_template.chat_tokenizer) when features are made: raylm.tasks.sft.SFT.prepare sets it."""

    name = "sft"
    fields = [("messages_json", pa.string())]
    feature_schema = ROW_SCHEMA

    def __init__(self, packed: bool = False) -> None:
        self.packed = packed  # data.sft.packing: the shards hold packed rows (other columns)
        if packed:  # features are made one example a row (ROW_SCHEMA), then packed: the shards' key is a list
            self.row_key = "row_ids"

    def read_rows(self, path: str, cfg: DataConfig, on_error: str) -> Iterator[dict]:
        for r in read_chat(path, ChatFields.of(cfg.sft.model_dump()), on_error):
            r["messages_json"] = json.dumps(with_system(r.pop("messages"), cfg.sft.system_prompt), ensure_ascii=False)
            yield r

    def row_text(self, row: dict) -> str:
        return conversation_text(json.loads(row["messages_json"] or "[]"))

    def train_tokenizer(self, texts: Iterator[str], out_dir: str, vocab_size: int, min_frequency: int) -> None:
        """A byte-level BPE (lossless: generated answers are compared as written)."""
        train_bpe(texts, out_dir, vocab_size, min_frequency)

    def check_rows(self, rows: Any, cfg: DataConfig) -> Any:
        import ray

        return rows.map_batches(_LengthCheck, fn_constructor_args=(cfg,), batch_format="pyarrow",
                                batch_size=cfg.tokenize_batch_size, compute=ray.data.ActorPoolStrategy(size=pool_size(cfg)))

    def featurizer_state(self, tokenizer_dir: str) -> Any:
        return ChatEncoder(tokenizer_dir)

    def features(self, tok: Any, row: dict, cfg: DataConfig, label2id: dict[str, int], state: Any) -> list[dict]:
        ids, labels = state.encode(json.loads(row["messages_json"]), cfg.sft.loss_on)
        fitted = fit(ids, labels, cfg.max_length, cfg.sft.too_long)
        if fitted is None:  # rejected as too_long by check_rows already
            return []
        return [{"input_ids": fitted[0], "labels": fitted[1], "truncated": int(len(fitted[0]) < len(ids))}]

    def pack(self, feats: Any, cfg: DataConfig) -> Any:
        if not cfg.sft.packing:
            return feats
        return feats.map_batches(functools.partial(pack_rows, max_length=cfg.max_length), batch_format="pyarrow",
                                 batch_size=cfg.sft.pack_window)

    def shard_columns(self) -> list[str]:
        return ["input_ids", "labels", "truncated", *(["seq_lens", "row_ids"] if self.packed else ["row_id"])]

    def shard_stats(self, table: pa.Table) -> dict[str, Any]:
        lengths = pc.list_value_length(table["input_ids"])
        labels = pc.list_flatten(table["labels"])
        trained = int(pc.sum(pc.not_equal(labels, IGNORE)).as_py() or 0)
        docs = table["row_ids"].combine_chunks().flatten() if self.packed else table["row_id"]
        examples = (pc.list_flatten(table["seq_lens"]) if self.packed else lengths).to_numpy(zero_copy_only=False)
        return {"tokens_out": int(pc.sum(lengths).as_py() or 0), "docs": set(docs.to_pylist()),
                "trained_tokens": trained, "examples": len(examples),
                "truncated": int(pc.sum(table["truncated"]).as_py() or 0),
                "longest_example": int(np.max(examples)) if len(examples) else 0}

    def manifest_extra(self, cfg: DataConfig, tok_dir: str) -> dict:
        from transformers import AutoTokenizer

        from raylm.tasks.chat_template import chat_tokens

        tok = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=False)
        ids = chat_tokens(tok, tok_dir)
        return {"eos_id": ids.eos_id, "pad_id": ids.pad_id,
                "sft": cfg.sft.model_dump() | {"end_of_turn": ids.end_of_turn, "end_of_turn_id": ids.end_of_turn_id,
                                               "max_length": cfg.max_length}}

    def manifest_summary(self, manifest: dict) -> dict:
        return {"sft_summary": summary(manifest)}
