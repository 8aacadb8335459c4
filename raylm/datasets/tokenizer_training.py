"""The tokenizer `prepare` uses: the configured one, the one trained earlier for this corpus, or a
byte-level BPE trained here on documents streamed from the corpus (cleaned as prepare cleans them)."""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from raylm.datasets import _fs
from raylm.datasets import tokenizers as toks
from raylm.datasets.clean import normalize, reject_reason
from raylm.datasets.config import DataConfig
from raylm.datasets.sources import BadRowError, Unit, check_row, file_format, read_unit
from raylm.errors import UserError

log = logging.getLogger("raylm.datasets.prepare")


def sample_documents(cfg: DataConfig, source: str, n: int, max_files: int = 64) -> Iterator[str]:
    """Up to n cleaned documents streamed from up to `max_files` files spread over the corpus
    (never the whole corpus in memory). Bad rows stop it under on_error=fail."""
    files = _fs.list_files(source)
    step = max(1, len(files) // max_files)
    picked = files[::step][:max_files]
    quota = -(-n // len(picked))
    for uri, size in picked:
        got = 0
        for row in read_unit(Unit(uri, file_format(uri, cfg.format), size), cfg):
            check_row(row, cfg)
            text = normalize(row["text"]) if not row["reject"] else ""
            if text and not reject_reason(text, cfg):
                yield text
                got += 1
                if got >= quota:
                    break


def ensure_tokenizer(cfg: DataConfig, source: str, needs: tuple[str, ...] = ()) -> str:
    """Use the configured tokenizer, the one already trained for this corpus, or train a byte-level BPE;
    `needs`: the special tokens the task cannot do without (`Task.tokenizer_needs`)."""
    tok_dir = toks.resolve_tokenizer_dir(cfg.prepared_dir, cfg.tokenizer.path)
    _train_if_missing(cfg, source, tok_dir, toks.train_bpe, "BPE")
    problems = toks.check_facts(toks.tokenizer_facts(tok_dir), needs)
    if problems:
        raise UserError([f"tokenizer {tok_dir}: {p}" for p in problems])
    return tok_dir


def nsp_tokenizer(cfg: DataConfig, source: str) -> str:
    """data.tokenizer.path, the one trained for this data before, or an uncased BERT WordPiece
    (`[CLS] A [SEP] B [SEP]`, segment ids) trained on a sample of the documents."""
    tok_dir = toks.resolve_tokenizer_dir(cfg.prepared_dir, cfg.tokenizer.path)
    _train_if_missing(cfg, source, tok_dir, toks.train_wordpiece, "WordPiece")
    facts = toks.tokenizer_facts(tok_dir)
    problems = toks.check_facts(facts, ("mask_id",)) + [
        f"no {name} token: NSP examples are [CLS] A [SEP] B [SEP]" for name in ("cls", "sep")
        if facts[f"{name}_id"] is None]
    if problems:
        hint = ("a BERT-style tokenizer: unset data.tokenizer.path to train one" if cfg.tokenizer.path else
                f"remove {tok_dir} (trained for another task) and prepare again")
        raise UserError([f"tokenizer {tok_dir}: {p}" for p in problems], hint=hint)
    return tok_dir


def _train_if_missing(cfg: DataConfig, source: str, tok_dir: str, train: Callable[..., Any], kind: str) -> None:
    """Train `kind` with `train(texts, out_dir, vocab_size, min_frequency)` on a streamed sample of the
    corpus, unless `tok_dir` already holds a tokenizer or data.tokenizer.path names one."""
    if Path(tok_dir, "tokenizer.json").is_file() or cfg.tokenizer.path:
        return
    t0 = time.time()
    try:
        sample = sample_documents(cfg, source, cfg.tokenizer.sample_docs)
        first = next(sample, None)  # raise here, not inside the Rust trainer
        if first is None:
            raise UserError("the corpus is empty: no document survived reading and cleaning",
                            hint="check data.source, data.text_field and data.min_chars")
        os.makedirs(os.path.dirname(os.path.abspath(tok_dir)), exist_ok=True)
        train(itertools.chain([first], sample), tok_dir, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
    except BadRowError as err:
        raise UserError(f"{err} (data.on_error=fail)", hint="fix the file or set data.on_error=skip") from None
    log.info("tokenizer: trained %s %s in %.1fs", kind, tok_dir, time.time() - t0)
