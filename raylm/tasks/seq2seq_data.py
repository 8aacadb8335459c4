"""seq2seq (translation, summarization) for `raylm prepare` (`raylm.datasets.labelled`): which files
pair up, how a pair is read, and how it becomes features.

    data.source (+ validation_source) --(pair_files: train.de -> train.en)--> one read task per pair
        --(read_rows: parallel_text)--> {source_text, target_text} | a reject with its reason
        --(features)--> input_ids  = [CLS]? source [EOS]   (max_source_length, EOS kept)
                        labels     = target [EOS]          (max_target_length, EOS kept)

Shards hold unpadded ids; the trainer pads per batch, labels with -100. The decoder input is the
labels shifted right behind `decoder_start_token_id`, which the HF models build themselves from
`labels` (BART/Marian/T5 `shift_tokens_right`, EncoderDecoderModel too). Validation shards keep the
raw target text: BLEU and ROUGE score detokenized text against the reference as written.

One joint tokenizer covers both sides (a byte-level BPE trained on sources and targets together,
shared embeddings): `raylm tokenizer train` or the first `raylm prepare`. A pretrained encoder's
tokenizer (data.tokenizer.path, e.g. all-MiniLM-L6-v2's WordPiece) is used as it is.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from raylm.cluster.storage import is_remote
from raylm.datasets import _fs
from raylm.datasets.config import DataConfig
from raylm.datasets.labelled import IDS, LabelledFormat
from raylm.datasets.tokenizers import tokenizer_facts, train_bpe
from raylm.errors import UserError
from raylm.tasks.parallel_text import read_parallel, read_seq2seq_jsonl

_COMPRESSED = re.compile(r"\.(gz|zst|zstd)$")


# ---------------------------------------------------------------- files


def partner(path: str, source_suffix: str, target_suffix: str) -> str:
    """The target-side file of a source-side one: `train.de(.gz)` -> `train.en(.gz)`."""
    comp = _COMPRESSED.search(path)
    base = path[: comp.start()] if comp else path
    if not base.endswith(f".{source_suffix}"):
        raise UserError(f"{path}: expected a '.{source_suffix}' file (data.seq2seq.source_suffix)",
                        hint="data.source names the source-side files of the parallel text")
    return base[: -len(source_suffix)] + target_suffix + (comp.group(0) if comp else "")


def pair_files(listed: list[tuple[str, int]], cfg: DataConfig) -> tuple[list[str], list[tuple[str, int]]]:
    """(the files to read, one per pair; the listing with each partner's size, for the fingerprint).

    Parallel text: files ending in the target suffix are the partners of source files (a directory or a
    glob may list both); each source file needs its partner."""
    s = cfg.seq2seq
    if s.source_suffix is None:
        not_jsonl = [u for u, _ in listed if not _is_jsonl(u)]
        if not_jsonl:
            raise UserError(f"{not_jsonl[0]}: seq2seq reads JSONL {{source|document, target|summary}} files",
                            hint="for parallel text files set data.seq2seq.source_suffix and target_suffix")
        return [u for u, _ in listed], listed

    target_end = re.compile(rf"\.{re.escape(s.target_suffix)}(\.(gz|zst|zstd))?$")
    sources = [(u, n) for u, n in listed if not target_end.search(u)]
    if not sources:
        raise UserError(f"data.source: no '.{s.source_suffix}' file among {[u for u, _ in listed][:3]}",
                        hint="data.source names the source-side files (e.g. data/train.de)")
    with_partners = []
    for u, n in sources:
        tgt = partner(u, s.source_suffix, s.target_suffix)
        try:
            (found,) = _fs.list_files(tgt)
        except (UserError, ValueError):
            raise UserError(f"{u}: its parallel file {tgt} does not exist",
                            hint="each source file needs its target-side file (data.seq2seq.target_suffix)") from None
        with_partners += [(u, n), found]
    return [u for u, _ in sources], with_partners


def read_rows(path: str, cfg: DataConfig, on_error: str) -> Iterator[dict]:
    """Pairs of one file (JSONL) or of one source file and its partner (parallel text)."""

    s = cfg.seq2seq
    if s.source_suffix is not None:
        return read_parallel(path, partner(path, s.source_suffix, s.target_suffix), on_error)
    if not _is_jsonl(path):
        raise UserError(f"{path}: seq2seq reads JSONL {{source|document, target|summary}} files",
                        hint="for parallel text files set data.seq2seq.source_suffix and target_suffix")
    return read_seq2seq_jsonl(path, s.source_field, s.target_field, on_error)


def _is_jsonl(path: str) -> bool:
    return _COMPRESSED.sub("", path).endswith((".jsonl", ".json", ".ndjson"))


def check_files(cfg: DataConfig) -> list[str]:
    """Preflight (no Ray): every local source file pairs up (parallel text) or is JSONL."""

    problems = []
    for source in (cfg.source, cfg.validation_source):
        if source and not is_remote(source):
            try:
                pair_files(_fs.list_files(source), cfg)
            except UserError as err:
                problems += err.problems
    return problems


def max_lengths(cfg: DataConfig) -> tuple[int, int]:
    return cfg.seq2seq.max_source_length or cfg.max_length, cfg.seq2seq.max_target_length


# ---------------------------------------------------------------- tokenizer and features


def special_ids(tokenizer_dir: str) -> dict[str, int | None]:
    """{bos_id, eos_id, pad_id}: what features and generation put around the text.

    bos_id is the token a source starts with (BERT's [CLS]: a warm-started encoder reads it; None for a
    trained BPE); eos_id ends source and target (EOS, else BERT's [SEP])."""

    f = tokenizer_facts(tokenizer_dir)
    eos = f["eos_id"] if f["eos_id"] is not None else f["sep_id"]
    if eos is None:
        raise UserError(f"tokenizer {tokenizer_dir}: no EOS (or [SEP]) token to end a sequence with",
                        hint="seq2seq needs one; leave data.tokenizer.path unset to train a tokenizer")
    pad = f["pad_id"] if f["pad_id"] is not None else eos
    return {"bos_id": f["cls_id"], "eos_id": eos, "pad_id": pad}


def encode(tok: Any, text: str, limit: int, bos: int | None, eos: int) -> list[int]:
    """`[bos]? ids [eos]` of at most `limit` ids (the end of a long text is cut, EOS kept)."""
    ids = tok.encode(text, add_special_tokens=False).ids
    head = [bos] if bos is not None else []
    return head + ids[: max(0, limit - len(head) - 1)] + [eos]


def features(tok: Any, row: dict, ids: dict[str, int | None], max_source: int, max_target: int,
             with_reference: bool = True) -> dict:
    """One example: source ids, label ids (target + EOS) and the raw reference text."""
    out = {"input_ids": encode(tok, row["source_text"], max_source, ids["bos_id"], ids["eos_id"]),
           "labels": encode(tok, row["target_text"], max_target, None, ids["eos_id"])}
    return out | ({"target_text": row["target_text"]} if with_reference else {})


def sample_texts(rows: Iterator[dict], limit: int) -> Iterator[str]:
    """Source and target text of the first `limit` good pairs: one joint tokenizer learns both sides."""
    for r in itertools.islice((r for r in rows if not r["reject"]), limit):
        yield r["source_text"]
        yield r["target_text"]


def train_tokenizer(texts: Iterator[str], out_dir: str, vocab_size: int, min_frequency: int) -> None:
    """A joint byte-level BPE (cased, lossless: decoded outputs are scored as written)."""

    os.makedirs(Path(out_dir).parent, exist_ok=True)
    train_bpe(texts, out_dir, vocab_size, min_frequency)


def manifest_extra(cfg: DataConfig, tok_dir: str) -> dict:
    """Lengths and the ids around the text; the data settings travel with the exported model."""
    src, tgt = max_lengths(cfg)
    ids = special_ids(tok_dir)
    return {"max_length": max(src, tgt), "block_size": max(src, tgt), "bos_id": ids["bos_id"],
            "seq2seq": cfg.seq2seq.model_dump() | {"max_source_length": src, "eos_id": ids["eos_id"]}}


class PairFormat(LabelledFormat):
    """Parallel text (a file per side, or JSONL with both fields) for `raylm.datasets.labelled`."""

    name = "seq2seq"
    fields = [("source_text", pa.string()), ("target_text", pa.string())]
    # target_text: the raw reference, kept in validation shards only (BLEU/ROUGE score text as written).
    feature_schema = pa.schema([("sample_id", pa.int64()), ("input_ids", IDS), ("labels", IDS),
                                ("row_id", pa.string()), ("target_text", pa.string()), ("split", pa.string())])
    eval_only_columns = ("target_text",)

    def files(self, listed: list[tuple[str, int]], cfg: DataConfig) -> tuple[list[str], list[tuple[str, int]]]:
        """One read per source file; its partner goes into the fingerprint."""
        return pair_files(listed, cfg)

    def read_rows(self, path: str, cfg: DataConfig, on_error: str) -> Iterator[dict]:
        return read_rows(path, cfg, on_error)

    def row_text(self, row: dict) -> str:
        return row["source_text"] or ""  # the source decides the split (one sentence, one side of the split)

    def sample_texts(self, rows: Iterator[dict], limit: int) -> Iterator[str]:
        return sample_texts(rows, limit)

    def train_tokenizer(self, texts: Iterator[str], out_dir: str, vocab_size: int, min_frequency: int) -> None:
        train_tokenizer(texts, out_dir, vocab_size, min_frequency)

    def featurizer_state(self, tokenizer_dir: str) -> Any:
        return special_ids(tokenizer_dir)

    def features(self, tok: Any, row: dict, cfg: DataConfig, label2id: dict[str, int], state: Any) -> list[dict]:
        return [features(tok, row, state, *max_lengths(cfg))]

    def manifest_extra(self, cfg: DataConfig, tok_dir: str) -> dict:
        return manifest_extra(cfg, tok_dir)
