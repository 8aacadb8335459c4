"""Issue 15: classification examples keep their true length from shard to batch.

Shards hold unpadded ids even when tokenizer.json pads (as all-MiniLM-L6-v2's does); collate pads
once per batch with [SEP] after the last real token.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raylm.datasets.config import DataConfig
from raylm.datasets.prepare import UnitWorker
from raylm.datasets.sources import plan_units
from raylm.datasets.tokenizers import load_backend
from raylm.trainers.tasks import SequenceClassification, with_special_tokens

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
    worker = UnitWorker(cfg, str(bert_tok_dir), str(out), "sequence-classification", None)
    for unit in plan_units(cfg, cfg.source):
        worker.process(unit)
    table = pq.read_table(next(out.glob("train/*.parquet")))
    lengths = sorted(len(x) for x in table.column("input_ids").to_pylist())
    # The number suffix is [UNK]: each text is its words + 1 token, truncated to max_length by raylm.
    assert lengths == sorted(min(int(n) + 1, 24) for n in n_words)
    assert all(0 not in x for x in table.column("input_ids").to_pylist())  # no [PAD] stored


META = {"pad_id": 0, "cls_id": 2, "sep_id": 3, "max_length": 8}


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
    assert with_special_tokens(np.array([5, 0]), {**META, "cls_id": None}).tolist() == [5]
