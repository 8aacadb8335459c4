"""`raylm prepare`: which prepare a task's data gets. Labelled files (NER, QA, seq2seq) go through
`raylm.datasets.task_prepare`; corpora through the prepare template (`raylm.datasets.units.prepare_corpus`),
as packed LM blocks or, with `data.nsp`, as BERT's sentence pairs (`raylm.tasks.nsp_data`).
"""

from __future__ import annotations

from raylm.datasets import task_prepare
from raylm.datasets.config import DataConfig
from raylm.datasets.manifest import COUNTS, SCHEMA_VERSION, SPLITS, load_manifest
from raylm.datasets.tokenizer_training import ensure_tokenizer, sample_documents
from raylm.datasets.units import PROGRESS, UnitWorker, prepare_corpus, resolve_source
from raylm.tasks.nsp_data import prepare_nsp

# Imported here too, so that `from raylm.datasets.prepare import ...` keeps working where they moved from.
__all__ = ["COUNTS", "PROGRESS", "SCHEMA_VERSION", "SPLITS", "UnitWorker", "ensure_tokenizer", "load_manifest",
           "prepare", "resolve_source", "sample_documents"]


def prepare(cfg: DataConfig, task: str = "causal-lm", force: bool = False) -> dict:
    """Prepare shards (Ray must be initialised). Idempotent and resumable (see raylm.datasets.units)."""
    if task in task_prepare.TASKS:  # labelled files (NER, QA, seq2seq): their own readers and features
        return task_prepare.prepare_task(cfg, task, force)
    if task == "masked-lm" and cfg.nsp:  # sentence pairs for BERT pretraining (MLM + NSP)
        return prepare_nsp(cfg, force)
    return prepare_corpus(cfg, task, force)
