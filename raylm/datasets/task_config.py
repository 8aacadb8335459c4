"""The `data.ner`, `data.qa` and `data.seq2seq` config sections: what the downstream-task readers need to know about
the input files (`raylm.datasets.labelled` with the task's `LabelledFormat`). The shared knobs stay in `data`: `source` and
`validation_source` (files), `max_length` (sub-tokens a feature holds, special tokens included),
`labels` (tag names in id order; unset: read from the data), `on_error`, `shard_rows`,
`tokenizer`, `tokenize_actors`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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


class Seq2SeqDataConfig(BaseModel):
    """seq2seq (translation, summarization): line-aligned parallel text files (`train.de` + `train.en`)
    or JSONL `{source|document, target|summary}` (.gz too). With `source_suffix` set, `data.source` names
    the source-side files (a file, glob or directory) and each one's target is the same path with the
    suffix swapped (`train.de` -> `train.en`); files ending in the target suffix are those partners."""

    model_config = ConfigDict(extra="forbid")

    source_suffix: str | None = Field(
        None, description="Parallel text: the source language's file suffix (e.g. 'de' for train.de). "
        "Unset: the files are JSONL.",
    )
    target_suffix: str | None = Field(
        None, description="Parallel text: the target language's file suffix (e.g. 'en' for train.en).",
    )
    source_field: str | None = Field(
        None, description="JSONL: the key holding the source text. Unset: 'source', else 'document'.",
    )
    target_field: str | None = Field(
        None, description="JSONL: the key holding the target text. Unset: 'target', else 'summary'.",
    )
    max_source_length: int | None = Field(
        None, ge=4, description="Source sub-tokens kept, EOS included (longer sources are cut, as the HF "
        "example scripts do). Unset: data.max_length.",
    )
    max_target_length: int = Field(
        128, ge=4, description="Target sub-tokens kept, EOS included (longer targets are cut).",
    )
    metric: Literal["bleu", "rouge"] = Field(
        "bleu", description="The task's metric (the default of trainer.eval.best_metric and of sweeps): "
        "bleu = sacreBLEU, val_bleu (translation); rouge = ROUGE-L F, val_rougeL (summarization). "
        "Validation reports both.",
    )

    @model_validator(mode="after")
    def _suffixes_in_pairs(self) -> "Seq2SeqDataConfig":
        if (self.source_suffix is None) != (self.target_suffix is None):
            raise ValueError("set both data.seq2seq.source_suffix and target_suffix (parallel text), or neither (JSONL)")
        if self.source_suffix is not None and self.source_suffix == self.target_suffix:
            raise ValueError(f"data.seq2seq.source_suffix and target_suffix are both '{self.source_suffix}'")
        return self


class SftDataConfig(BaseModel):
    """sft (instruction tuning, raylm.tasks.sft): JSONL conversations in any of the shapes
    raylm.tasks.chat_data reads (`messages`, instruction/input/output, prompt/response, two named fields,
    a Human:/Assistant: transcript), rendered with a chat template and tokenized with the assistant's
    tokens marked as the targets. `data.max_length` is the longest example (or packed row)."""

    model_config = ConfigDict(extra="forbid")

    prompt_field: str | None = Field(None, description="The user's turn in rows of two named fields (GSM8K: 'question').")
    response_field: str | None = Field(None, description="The assistant's turn in those rows (GSM8K: 'answer').")
    transcript_field: str | None = Field(
        None, description="A field holding a `Human: ... Assistant: ...` transcript (HH-RLHF: 'chosen').")
    system_prompt: str | None = Field(None, description="A system turn put before rows that have none.")
    chat_template: str = Field(
        "auto", description="auto: the tokenizer's own chat template, else chatml; chatml: the ChatML template "
        "(<|im_start|>role ... <|im_end|>, its two tokens added to the vocabulary); or a path to a Jinja file "
        "(HF's chat-template variables: messages, add_generation_prompt, bos_token, eos_token).",
    )
    loss_on: Literal["assistant", "last_assistant", "all"] = Field(
        "assistant", description="The tokens trained: every assistant turn (its text and end-of-turn token), "
        "the last assistant turn only, or every token of the conversation.",
    )
    too_long: Literal["truncate", "reject"] = Field(
        "truncate", description="An example longer than data.max_length: truncate keeps its first max_length "
        "tokens (the end of the conversation is lost; a row left with no trained token is rejected as "
        "too_long), reject drops it (counted as too_long in the ledger).",
    )
    packing: bool = Field(
        False, description="Pack several examples into one row of data.max_length tokens (best-fit decreasing "
        "per batch of examples). Positions restart for each example and no token attends outside its own "
        "example (document masking); off: one example a row, batches length-grouped.",
    )
    pack_window: int = Field(2000, ge=1, description="packing: examples packed together at a time.")
    answer_pattern: str = Field(
        r"####\s*(.+)", description="`raylm eval --input` with generation: the final answer of a response is the "
        "first group of this pattern's last match (GSM8K's '#### 42'); exact match compares it with the reference's.",
    )
    max_new_tokens: int = Field(256, ge=1, description="Tokens generated per row by `raylm predict` and eval's exact match.")
