"""`raylm prepare` of a corpus as packed LM blocks (the prepare template, `raylm.datasets.units`), and the
names callers import from here. Which prepare a task's data gets is the task's (`Task.prepare`, through
`raylm.tasks.registry.prepare_data`): labelled files go through `raylm.datasets.labelled`, BERT's
sentence pairs through the template with `raylm.tasks.nsp_data`'s worker.
"""

from __future__ import annotations

from raylm.datasets.config import DataConfig
from raylm.datasets.manifest import COUNTS, SCHEMA_VERSION, SPLITS, load_manifest
from raylm.datasets.tokenizer_training import ensure_tokenizer, sample_documents
from raylm.datasets.units import PROGRESS, UnitWorker, prepare_corpus, resolve_source

# Imported here too, so that `from raylm.datasets.prepare import ...` keeps working where they moved from.
__all__ = ["COUNTS", "PROGRESS", "SCHEMA_VERSION", "SPLITS", "UnitWorker", "ensure_tokenizer", "load_manifest",
           "prepare", "resolve_source", "sample_documents"]


def prepare(cfg: DataConfig, force: bool = False) -> dict:
    """Packed causal-LM blocks of a corpus (Ray must be initialised). Idempotent and resumable."""
    return prepare_corpus(cfg, "causal-lm", force, needs=("eos_id",))
