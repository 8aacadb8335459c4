"""Ray Data corpus pipeline: sources, cleaning + rejects ledger, tokenizers, pack, shards, streaming."""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "DataConfig": "raylm.datasets.config", "TokenizerConfig": "raylm.datasets.config",
    "pack_documents": "raylm.datasets.pack", "split_of": "raylm.datasets.pack",
    "load_manifest": "raylm.datasets.manifest", "prepare": "raylm.datasets.prepare",
    "read_corpus": "raylm.datasets.sources", "plan_units": "raylm.datasets.sources",
    "bucket_batches": "raylm.datasets.bucketing", "bucket_dict_batches": "raylm.datasets.bucketing",
    "padding_fraction": "raylm.datasets.bucketing", "length_grouped": "raylm.datasets.bucketing",
    "read_rejects": "raylm.datasets.clean",
    "print_rejects": "raylm.datasets.report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
