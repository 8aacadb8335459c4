"""Checks that need no Ray: run before starting a cluster so bad input fails in a second.

Each command checks only the inputs it uses: `raylm prepare` never loads the model, so a
missing `model.init_from` is not its problem (it is `raylm train`'s).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from raylm.cluster.storage import is_remote
from raylm.config import RootConfig
from raylm.errors import UserError


def _corpus(cfg: RootConfig) -> list[str]:
    d, problems = cfg.data, []
    for key, source in (("data.source", d.source), ("data.validation_source", d.validation_source)):
        if not source or source == "demo" or is_remote(source):
            continue
        from raylm.datasets.sources import list_files

        try:
            files = list_files(source)
            if all(os.path.getsize(f) == 0 for f in files):
                problems.append(f"{key}: the corpus is empty: every file matching '{source}' has 0 bytes")
        except UserError as err:  # _fs names data.source; say which of the two it was
            problems += [p.replace("data.source:", f"{key}:", 1) for p in err.problems]
    return problems


def _tokenizer(cfg: RootConfig) -> list[str]:
    path = cfg.data.tokenizer.path
    if not path:
        return []
    from raylm.datasets.tokenizers import check_tokenizer, load_tokenizer

    try:
        return [f"data.tokenizer.path={path}: {p}" for p in check_tokenizer(load_tokenizer(path), cfg.trainer.task)]
    except UserError as err:
        return err.problems


def _model(cfg: RootConfig) -> list[str]:
    src = cfg.model.init_from
    if src and "://" not in src and not os.path.isdir(src):
        return [f"model.init_from: '{src}' is not a directory (a local HF model or raylm checkpoint)"]
    return []


def _pairs(cfg: RootConfig) -> list[str]:
    """seq2seq: each source file has its parallel partner (or is JSONL)."""
    if cfg.trainer.task != "seq2seq" or _corpus(cfg):
        return []
    from raylm.datasets.seq2seq_prepare import check_files

    return check_files(cfg.data)


CHECKS: dict[str, Callable[[RootConfig], list[str]]] = {"corpus": _corpus, "tokenizer": _tokenizer, "model": _model,
                                                        "pairs": _pairs}
# What each command reads. prepare and tokenizer never build the model.
USES: dict[str, tuple[str, ...]] = {
    "prepare": ("corpus", "tokenizer", "pairs"),
    "tokenizer": ("corpus", "tokenizer", "pairs"),
    "train": ("corpus", "tokenizer", "model", "pairs"),
    "run": ("corpus", "tokenizer", "model", "pairs"),
    "tune": ("corpus", "tokenizer", "model", "pairs"),
}


def preflight(cfg: RootConfig, command: str = "run") -> None:
    """Raise UserError listing every problem found in the inputs `command` uses."""
    problems = [p for name in USES[command] for p in CHECKS[name](cfg)]
    if problems:
        raise UserError(problems)
