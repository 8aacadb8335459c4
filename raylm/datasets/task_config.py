"""The `data.ner` and `data.qa` config sections: what the downstream-task readers need to know about
the input files (`raylm.datasets.task_prepare`). The shared knobs stay in `data`: `source` and
`validation_source` (files), `max_length` (sub-tokens a feature holds, special tokens included),
`labels` (tag names in id order; unset: read from the data), `on_error`, `shard_rows`,
`tokenizer`, `tokenize_actors`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class NERDataConfig(BaseModel):
    """token-classification: CoNLL column files (`word ... tag`, blank line between sentences,
    `-DOCSTART-` lines skipped) or JSONL `{tokens: [...], tags: [...]}` (.jsonl/.json). Tags may be
    IOB1 (CoNLL-2003) or IOB2 and are stored as IOB2; other schemes (IOBES) are rejected as bad_tag."""

    model_config = ConfigDict(extra="forbid")

    tag_column: int = Field(
        -1, description="CoNLL: the column holding the tag (0-based; negative counts from the end, "
        "-1 = last, CoNLL-2003's NER column).",
    )
    tokens_field: str = Field("tokens", description="JSONL: the key holding the list of words.")
    tags_field: str = Field("tags", description="JSONL: the key holding the list of tags.")
    stride: int = Field(
        0, ge=0, description="Sub-tokens of overlap between the windows of a sentence longer than "
        "data.max_length (rounded down to whole words).",
    )


class QADataConfig(BaseModel):
    """question-answering (extractive): SQuAD v1.1/v2.0 JSON or flat JSONL
    `{id, question, context, answers: {text: [...], answer_start: [...]}}`."""

    model_config = ConfigDict(extra="forbid")

    doc_stride: int = Field(
        128, ge=0, description="Context sub-tokens shared by consecutive windows of a long context "
        "(must be below the context room of a window).",
    )
    max_question_tokens: int = Field(64, ge=1, description="Question sub-tokens kept (the rest is cut).")
    max_answer_tokens: int = Field(30, ge=1, description="Longest answer span considered at prediction.")
    n_best: int = Field(20, ge=1, description="Start and end candidates per window at prediction.")
