"""Packing keeps every token and puts EOS at document boundaries; tokenizers round-trip."""

from __future__ import annotations

import numpy as np
import pytest

from raylm.datasets.pack import pack_documents, split_of
from raylm.datasets.tokenizers import check_tokenizer, fingerprint, load_tokenizer, train_bpe
from raylm.errors import UserError

EOS = 0


def test_pack_keeps_every_token_and_marks_boundaries():
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(1, 100, size=n)) for n in rng.integers(1, 40, size=50)]
    blocks, dropped = pack_documents(docs, EOS, 16)
    assert blocks.shape[1] == 16
    total = sum(len(d) + 1 for d in docs)
    assert blocks.size + dropped == total and 0 <= dropped < 16
    flat = np.concatenate([np.r_[d, EOS] for d in docs])
    assert np.array_equal(blocks.reshape(-1), flat[: blocks.size])
    # EOS exactly where documents end (within the kept tokens)
    ends = np.cumsum([len(d) + 1 for d in docs]) - 1
    assert set(np.flatnonzero(blocks.reshape(-1) == EOS)) == {e for e in ends if e < blocks.size}


def test_pack_short_corpus_drops_partial_block():
    blocks, dropped = pack_documents([[5, 6, 7]], EOS, 8)
    assert blocks.shape == (0, 8) and dropped == 4


def test_split_is_deterministic_and_roughly_proportional():
    ids = [f"f.txt:{i}" for i in range(4000)]
    splits = [split_of(i, 0.1) for i in ids]
    assert splits == [split_of(i, 0.1) for i in ids]
    share = splits.count("validation") / len(ids)
    assert 0.07 < share < 0.13
    assert all(split_of(i, 0.0) == "train" for i in ids[:50])


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    texts = ["The quick brown fox jumps over the lazy dog. " * 3, "Return the value of x; raise ValueError."] * 200
    train_bpe(iter(texts), out, vocab_size=400, min_frequency=1)
    return out


def test_tokenizer_round_trip(tok_dir):
    tok = load_tokenizer(tok_dir)
    text = "Return the quick fox, raise ValueError!\n  indented  ünïcode"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token_id is not None and tok.mask_token_id is not None
    assert check_tokenizer(tok, ("eos_id",)) == []
    assert len(fingerprint(tok_dir)) == 16


def test_tokenizer_with_only_special_tokens_is_refused(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "<pad>": 1}, unk_token="<pad>"))
    fast = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>", pad_token="<pad>")
    fast.save_pretrained(tmp_path / "tiny")
    problems = check_tokenizer(load_tokenizer(tmp_path / "tiny"), ("eos_id",))
    assert any("no larger than its special tokens" in p for p in problems)


def test_missing_tokenizer_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no tokenizer files"):
        load_tokenizer(tmp_path)


def test_tokenizer_training_prints_nothing(tmp_path, capfd):
    """The Rust trainer's progress bars, off a terminal, left three blank lines in the demo's console."""
    from raylm.datasets.tokenizers import train_wordpiece

    train_bpe(iter(["the quick brown fox jumps over the lazy dog"] * 200), tmp_path / "bpe", vocab_size=300)
    train_wordpiece(iter(["the quick brown fox jumps over the lazy dog"] * 200), str(tmp_path / "wp"), 120, 1)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
