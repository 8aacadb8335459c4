"""The `data` config section: corpus sources, cleaning, tokenizer, packing, shards."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from raylm.datasets.task_config import NERDataConfig, QADataConfig, Seq2SeqDataConfig, SftDataConfig


class TokenizerConfig(BaseModel):
    """The tokenizer: a local HF one, or a byte-level BPE trained on a sample of the corpus."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        None,
        description="A local HF tokenizer directory to use as is. Unset: raylm trains a "
        "byte-level BPE tokenizer into `<prepared_dir>/tokenizer`.",
    )
    vocab_size: int = Field(4096, ge=300, description="Vocabulary size of a trained tokenizer.")
    sample_docs: int = Field(
        20000, ge=1, description="Documents streamed from the corpus to train the tokenizer."
    )
    min_frequency: int = Field(2, ge=1, description="A trained tokenizer's merges need this many occurrences.")


class StreamConfig(BaseModel):
    """`data.stream`: how the training workers read the prepared shards (not what the shards hold)."""

    model_config = ConfigDict(extra="forbid")

    materialize_max_mb: int = Field(
        1024, ge=0, description="Training splits smaller than this are read once into the object store "
        "(no re-read per epoch); larger ones stream from the shards every epoch.",
    )
    shuffle_buffer_rows: int = Field(
        2048, ge=0, description="Rows in the seeded local shuffle buffer when streaming into training (exact on "
        "resume: the same order per epoch and seed). Without it rows arrive in file order, one document's or "
        "article's rows together (the demo: validation perplexity 205 without, 166 with 4,096; CoNLL NER F1 "
        "4 points lower at 250 steps). 0: shard order only."
    )
    sharding: Literal["auto", "split", "stride"] = Field(
        "auto", description="How workers share the train split. split: Ray Data splits it, each row read "
        "once, by one worker; a resume needs the same worker count. stride: every worker reads the split "
        "in one global order and takes every N-th micro-batch; the position counts global batches, so a "
        "run resumes exactly with another worker count (N x the reads). auto: stride for elastic "
        "trainer.scaling.num_workers ([min, max]), else split.",
    )
    group_by_length: bool | Literal["auto"] = Field(
        "auto",
        description="Length-grouped training batches: read `length_group_batches` micro-batches of rows "
        "at a time, sort them by length, cut them into micro-batches and yield those in a seeded random "
        "order (HF `group_by_length`, fairseq's bucket iterator), so per-batch padding stays small. "
        "'auto': on for tasks whose examples vary in length (sequence-classification), off for packed "
        "LM blocks (all one length).",
    )
    length_group_batches: int = Field(
        50, ge=1,
        description="Micro-batches per length-grouping window: a larger window gives closer lengths "
        "within a batch (less padding) but less random batch composition.",
    )


# Keys of `data` that moved into `data.stream` (old configs keep working with a one-line notice).
MOVED_DATA_KEYS: dict[str, str] = {k: f"stream.{k}" for k in StreamConfig.model_fields}


# Keys added after prepare fingerprints existed: at their defaults they leave the fingerprint as it was.
_ADDED_KEYS = ("sft",)


class DataConfig(BaseModel):
    """The corpus: sources, cleaning, tokenizer, packing and the prepared Parquet shards."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        "demo",
        description="'demo' (a corpus built from the installed Python standard library's "
        "docstrings, offline) or a path, directory, glob or s3:// URI of corpus files.",
    )
    validation_source: str | None = Field(
        None,
        description="Files held out as the validation split (path, glob or URI). Unset: "
        "`validation_fraction` of the documents, chosen by a hash of their text.",
    )
    format: Literal["auto", "text", "jsonl", "parquet", "csv", "tsv"] = Field(
        "auto", description="File format; 'auto' chooses by extension."
    )
    text_field: str = Field("text", description="Text field (JSONL key, dotted for nested; column).")
    label_field: str | None = Field(None, description="Label column for classification.")
    validation_text_field: str | None = Field(
        None, description="Text field of the `validation_source` files when they name it otherwise "
        "(e.g. 'content' where the training files say 'sentence'). Unset: `text_field`.",
    )
    validation_label_field: str | None = Field(
        None, description="Label column of the `validation_source` files. Unset: `label_field`.",
    )
    labels: list[str] | None = Field(
        None, description="Classification label names in id order; unset: labels are integers."
    )
    text_split: Literal["file", "paragraph", "line"] = Field(
        "paragraph",
        description="Plain text: one document per file, per blank-line-separated paragraph, or per line.",
    )
    on_error: Literal["skip", "fail"] = Field(
        "skip", description="Bad rows: count them under their reason and go on, or stop (exit 2)."
    )
    min_chars: int = Field(1, ge=0, description="Drop documents shorter than this (after cleaning).")
    max_chars: int = Field(1_000_000, ge=1, description="Drop documents longer than this.")
    dedup: bool = Field(True, description="Exact deduplication by a hash of the normalised text.")
    dedup_shards: int = Field(
        2, ge=1, description="Actors holding the dedup index, each a hash range (~100 bytes a document)."
    )
    max_line_bytes: int = Field(
        8 << 20, ge=1024,
        description="A line (or paragraph) longer than this is rejected as too_long without being held in memory.",
    )
    unit_bytes: int = Field(
        32 << 20, ge=1024,
        description="Uncompressed JSONL/text files larger than this are read as several byte ranges in parallel.",
    )
    progress_seconds: float = Field(10.0, ge=0, description="Seconds between progress lines of `prepare` (0: off).")
    prepared_dir: str = Field(
        "data/prepared/demo", description="Where `raylm prepare` writes shards + manifest.json."
    )
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description=TokenizerConfig.__doc__)
    ner: NERDataConfig = Field(default_factory=NERDataConfig, description="token-classification input files.")
    qa: QADataConfig = Field(default_factory=QADataConfig, description="question-answering input files.")
    seq2seq: Seq2SeqDataConfig = Field(default_factory=Seq2SeqDataConfig,
                                       description="seq2seq (translation, summarization) input files.")
    sft: SftDataConfig = Field(default_factory=SftDataConfig, description=SftDataConfig.__doc__)
    document_masking: bool = Field(
        False, description="trainer.task=causal-lm: positions restart after each EOS inside a packed block and no "
        "token attends across a document boundary (block-causal attention, as torchtitan does); the first token "
        "of each document is not a target. (data.sft.packing always masks documents.)",
    )
    block_size: int = Field(64, ge=8, description="Tokens per packed training block.")
    max_length: int = Field(128, ge=8, description="Classification: truncate to this many tokens.")
    nsp: bool = Field(
        False, description="trainer.task=masked-lm: BERT pretraining pairs (masked LM + next-sentence "
        "prediction, raylm.tasks.nsp_data). Documents (text: blank-line separated, one sentence a line; "
        "JSONL etc.: the text field, cut at lines and sentence ends) become `[CLS] A [SEP] B [SEP]` examples of at "
        "most block_size tokens, B the true next segment half the time and a segment of another document "
        "otherwise; the model is BertForPreTraining.",
    )
    nsp_window_docs: int = Field(
        1000, ge=2, description="data.nsp: documents a worker holds at a time; a random B comes from another "
        "document of the same window (and split).",
    )
    validation_fraction: float = Field(
        0.05, ge=0.0, lt=1.0, description="Share of documents (by a hash of the text) held out."
    )
    shard_rows: int = Field(8192, ge=1, description="Rows per Parquet shard.")
    tokenize_batch_size: int = Field(1024, ge=1, description="Documents per tokenize batch.")
    tokenize_actors: int | None = Field(
        None, ge=1, description="Actors in the tokenizer pool; unset: one per CPU of the Ray cluster (of this "
        "machine's cores on the embedded Ray, whose logical CPUs oversubscribe it)."
    )
    prepare_in_driver_mb: float = Field(
        8.0, ge=0, description="Local inputs of at most this many MB are prepared in the command's own process "
        "(the same unit worker, no actor pool to start: seconds saved on small fine-tuning sets); 0: always on "
        "the Ray Data actor pool.")
    seed: int = Field(0, description="Seed of the per-epoch shuffle (data.stream) and of NSP's random pairs.")
    stream: StreamConfig = Field(default_factory=lambda: StreamConfig(), description="How training reads the shards "
                                 "(read when training, never by prepare).")

    def flat_dump(self, exclude: set[str]) -> dict:
        """The keys in one flat mapping, `stream` keys at the top as before that section existed: the prepare
        fingerprints of directories prepared then stay valid."""
        flat = self.model_dump(mode="json", exclude=exclude | {"stream", "document_masking"})  # that one: at train time
        for key in _ADDED_KEYS:  # keys newer than the fingerprints: left out at their defaults
            if getattr(self, key) == DataConfig.model_fields[key].get_default(call_default_factory=True):
                flat.pop(key, None)
        return flat | {k: v for k, v in self.stream.model_dump(mode="json").items() if k not in exclude}

    def for_validation(self) -> "DataConfig":
        """This config as the reader of `validation_source` files sees it: their own column names."""
        return self.model_copy(update={
            "text_field": self.validation_text_field or self.text_field,
            "label_field": self.validation_label_field or self.label_field,
        })

    @model_validator(mode="after")
    def _check_lengths(self) -> "DataConfig":
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is above max_chars ({self.max_chars})")
        return self
