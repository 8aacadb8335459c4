"""Checks that need no Ray: run before starting a cluster so bad input fails in a second."""

from __future__ import annotations

import os

from raylm.config import RootConfig
from raylm.errors import UserError


def preflight(cfg: RootConfig) -> None:
    """Raise UserError listing every problem found in the config's inputs."""
    problems: list[str] = []
    d = cfg.data
    if d.source != "demo" and "://" not in d.source:
        from raylm.datasets.sources import list_files

        try:
            files = list_files(d.source)
            if all(os.path.getsize(f) == 0 for f in files):
                problems.append(f"data.source: the corpus is empty: every file matching '{d.source}' has 0 bytes")
        except UserError as err:
            problems += err.problems
    if d.tokenizer.path:
        from raylm.datasets.tokenizers import check_tokenizer, load_tokenizer

        try:
            problems += [f"data.tokenizer.path={d.tokenizer.path}: {p}"
                         for p in check_tokenizer(load_tokenizer(d.tokenizer.path), cfg.trainer.task)]
        except UserError as err:
            problems += err.problems
    if cfg.model.init_from and "://" not in cfg.model.init_from and not os.path.isdir(cfg.model.init_from):
        problems.append(f"model.init_from: '{cfg.model.init_from}' is not a directory (a local HF model or raylm checkpoint)")
    if problems:
        raise UserError(problems)
