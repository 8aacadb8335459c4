"""Issue 15: classification examples keep their true length from shard to batch.

Shards hold unpadded ids even when tokenizer.json pads (as all-MiniLM-L6-v2's does); collate pads
once per batch with [SEP] after the last real token; the training stream groups lengths while
every row is still seen once per epoch and a resume sees the same remaining batches.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raylm.datasets.bucketing import padding_fraction, row_lengths
from raylm.datasets.config import DataConfig
from raylm.datasets.prepare import UnitWorker
from raylm.datasets.sources import plan_units
from raylm.datasets.streaming import TrainStream, grouping_mode
from raylm.datasets.tokenizers import load_backend
from raylm.datasets.units import UnitTask
from raylm.tasks.collate import with_special_tokens
from raylm.tasks.corpus import SequenceClassification
from raylm.tasks.meta import ModelMeta
from raylm.tasks.registry import get_task

pytestmark = pytest.mark.unit
WORDS = "the a film movie is was good bad great awful plot acting long short fun dull story end".split()
FIXED = 32  # tokenizer.json pads and truncates to this, like MiniLM's 128


@pytest.fixture(scope="module")
def bert_tok_dir(tmp_path_factory) -> Path:
    """A tiny BERT-style WordPiece tokenizer whose tokenizer.json pads to a fixed length."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    out = tmp_path_factory.mktemp("bert") / "tok"
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(str(out))
    tok.enable_padding(length=FIXED, pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(FIXED)
    tok.save(str(out / "tokenizer.json"))  # as the MiniLM package ships it: padding on
    assert json.loads((out / "tokenizer.json").read_text())["padding"]["strategy"] == {"Fixed": FIXED}
    return out


def test_backend_encodes_true_lengths(bert_tok_dir):
    tok, _ = load_backend(bert_tok_dir)
    words = " ".join(WORDS * 3)  # 54 words: longer than the file's truncation
    assert len(tok.encode("good film", add_special_tokens=False).ids) == 2
    assert len(tok.encode(words, add_special_tokens=False).ids) == 3 * len(WORDS)


def test_prepared_classification_shard_holds_unpadded_sequences(bert_tok_dir, tmp_path):
    rng = np.random.default_rng(0)
    n_words = rng.integers(1, 40, 60)
    src = tmp_path / "train.tsv"
    src.write_text("label\tsentence\n" + "".join(
        f"{i % 2}\t{' '.join(rng.choice(WORDS, n))} {i}\n" for i, n in enumerate(n_words)))
    out = tmp_path / "prepared"
    (out / "_progress").mkdir(parents=True)
    cfg = DataConfig(source=str(src), format="tsv", text_field="sentence", label_field="label", max_length=24,
                     validation_fraction=0.0, dedup=False, shard_rows=1000)
    worker = UnitWorker(cfg, str(bert_tok_dir), str(out), UnitTask("sequence-classification", labelled=True), None)
    for unit in plan_units(cfg, cfg.source):
        worker.process(unit)
    table = pq.read_table(next(out.glob("train/*.parquet")))
    lengths = sorted(len(x) for x in table.column("input_ids").to_pylist())
    # The number suffix is [UNK]: each text is its words + 1 token, truncated to max_length by raylm.
    assert lengths == sorted(min(int(n) + 1, 24) for n in n_words)
    assert all(0 not in x for x in table.column("input_ids").to_pylist())  # no [PAD] stored


META = ModelMeta(pad_id=0, cls_id=2, sep_id=3, max_length=8)


def test_collate_pads_to_the_longest_example_plus_specials():
    ids = np.empty(3, dtype=object)
    ids[:] = [np.array([7, 8], np.int32), np.array([9, 10, 11, 12], np.int32), np.array([13], np.int32)]
    batch = {"input_ids": ids, "label": np.array([0, 1, 0]), "sample_id": np.arange(3)}
    out = SequenceClassification().collate(batch, META, 0)
    assert out["input_ids"].shape == (3, 4 + 2)
    assert out["input_ids"][0].tolist() == [2, 7, 8, 3, 0, 0]
    assert out["input_ids"][1].tolist() == [2, 9, 10, 11, 12, 3]
    assert out["attention_mask"].sum(1).tolist() == [4, 6, 3]


def test_special_tokens_follow_real_tokens_even_in_old_padded_shards():
    assert with_special_tokens(np.array([5, 6, 7, 0, 0, 0, 0, 0]), META).tolist() == [2, 5, 6, 7, 3]
    assert with_special_tokens(np.arange(10, 30), META).tolist() == [2, 10, 11, 12, 13, 14, 15, 3]
    assert with_special_tokens(np.array([5, 0]), dataclasses.replace(META, cls_id=None)).tolist() == [5]


# ---------------------------------------------------------------- the training stream


class FakeShard:
    """What TrainStream uses of Ray's DataIterator: iter_batches over fixed rows (seeded local shuffle,
    exact batch sizes). `ragged_windows` cuts the stream unevenly, as a batcher is free to."""

    def __init__(self, lengths: list[int], ragged_windows: bool = False) -> None:
        self.lengths, self.ragged = lengths, ragged_windows

    def iter_batches(self, *, batch_size: int, batch_format: str, drop_last: bool, prefetch_batches: int,
                     local_shuffle_buffer_size: int | None = None, local_shuffle_seed: int | None = None):
        n = len(self.lengths)
        order = np.random.default_rng(local_shuffle_seed).permutation(n) if local_shuffle_buffer_size else np.arange(n)
        rng, i = np.random.default_rng(1), 0
        while i < n:
            size = int(rng.integers(1, 2 * batch_size)) if self.ragged else batch_size
            idx = order[i: i + size]
            i += size
            if drop_last and len(idx) < batch_size:
                return
            ids = np.empty(len(idx), dtype=object)
            ids[:] = [np.full(self.lengths[j], 5, np.int32) for j in idx]
            yield {"sample_id": idx.astype(np.int64), "input_ids": ids, "label": idx % 2}


def sst2_like_lengths(n: int, seed: int = 0) -> list[int]:
    """Short sentences with a long tail, as SST-2's (mean ~13 tokens, longest ~60)."""
    return [int(x) for x in np.clip(np.random.default_rng(seed).lognormal(2.3, 0.7, n), 1, 62)]


def stream(shard: FakeShard, group: bool | str = "auto", task: str | None = "sequence-classification",
           epoch: int = 0, position: int = 0, bs: int = 16) -> TrainStream:
    varied = None if task is None else get_task(task).group_by_length
    return TrainStream(shard, bs, 7, 64, lambda b, _seed: b, epoch, position, varied_lengths=varied,
                       group_by_length=group, length_group_batches=20)


def take_epoch(s: TrainStream) -> list[dict]:
    out, epoch = [], s.epoch
    while True:
        b = s.next()
        if s.epoch != epoch:
            return out
        out.append(b)


def ids_of(batches: list[dict]) -> list[list[int]]:
    return [b["sample_id"].tolist() for b in batches]


def test_grouping_mode_follows_the_task():
    def varied(task):
        return get_task(task).group_by_length

    assert grouping_mode("auto", varied("sequence-classification")) is True
    assert grouping_mode("auto", varied("seq2seq")) is True
    assert grouping_mode("auto", varied("causal-lm")) is False and grouping_mode("auto", None) is None
    assert grouping_mode(False, varied("sequence-classification")) is False
    assert grouping_mode(True, varied("masked-lm")) is True


def test_grouped_stream_cuts_padding_and_sees_every_row_once():
    lengths = sst2_like_lengths(1000)
    grouped, plain = take_epoch(stream(FakeShard(lengths))), take_epoch(stream(FakeShard(lengths), False))
    assert len(grouped) == len(plain) == 1000 // 16  # drop_last, as before: every rank yields as many
    seen = [i for b in ids_of(grouped) for i in b]
    assert len(seen) == len(set(seen)) == 1000 // 16 * 16
    frac = lambda bs: padding_fraction([list(row_lengths(b["input_ids"])) for b in bs], key=int)  # noqa: E731
    assert frac(grouped[:40]) < 0.15 < 0.35 < frac(plain[:40])


def test_grouped_stream_counts_rows_not_windows():
    """However the shard cuts its windows, R rows give R // batch_size full batches."""
    lengths = sst2_like_lengths(777, seed=3)
    batches = take_epoch(stream(FakeShard(lengths, ragged_windows=True)))
    assert len(batches) == 777 // 16 and all(len(b["sample_id"]) == 16 for b in batches)
    assert len({i for b in ids_of(batches) for i in b}) == 777 // 16 * 16


def test_resumed_grouped_stream_sees_the_same_batches():
    shard = FakeShard(sst2_like_lengths(700, seed=1))
    first = stream(shard)
    run = ids_of([first.next() for _ in range(43 + 10)])  # 43 batches an epoch, 10 into epoch 1
    assert first.epoch == 1 and first.position == 10
    for k in (0, 5, 31):
        assert ids_of(take_epoch(stream(shard, position=k))) == run[k: 43]
    again = stream(shard, epoch=1, position=4)
    assert ids_of([again.next() for _ in range(6)]) == run[43 + 4: 43 + 10]
    assert run[43:53] != run[:10]  # a new epoch, a new order


def test_packed_blocks_stay_in_stream_order_without_a_task():
    shard = FakeShard([16] * 200)
    auto, plain = take_epoch(stream(shard, task=None)), take_epoch(stream(shard, group=False, task=None))
    assert ids_of(auto) == ids_of(plain)
    ragged = take_epoch(stream(FakeShard(sst2_like_lengths(400)), task=None))  # classification rows
    assert ids_of(ragged) != ids_of(take_epoch(stream(FakeShard(sst2_like_lengths(400)), False, task=None)))
