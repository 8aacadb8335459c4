"""`ModelMeta`: what a task's model and batches need to know of the prepared data. The driver builds it
from the manifest on every run (raylm.tasks.registry.model_meta); serving builds one from an export's
tokenizer. Imports no torch (the driver imports it at start)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelMeta:
    """Sizes and special token ids every task may read (None where the data has none), and in `extra`
    what one task adds: its `Task.meta_keys` read from the manifest and its `Task.extra_meta`, e.g.
    `meta.extra["num_labels"]`. Picklable plain data: the loop config carries it to the workers."""

    vocab_size: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    mask_id: int | None = None
    block_size: int | None = None  # tokens per packed block (packed corpus tasks)
    max_length: int | None = None  # the longest row (row tasks: classification, NER, QA, seq2seq)
    cls_id: int | None = None
    sep_id: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # read-only by convention

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The typed fields (all but `extra`)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelMeta:
        """Keys naming a typed field fill it; every other key goes to `extra`."""
        names = cls.field_names()
        return cls(**{k: v for k, v in values.items() if k in names},
                   extra={k: v for k, v in values.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        """The flat dict `from_dict` reads back (the typed fields and `extra`'s keys side by side)."""
        return {**{k: getattr(self, k) for k in self.field_names()}, **self.extra}
