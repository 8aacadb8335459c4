"""`tokenizer_facts` reads a raylm-trained tokenizer without transformers and says what
AutoTokenizer says; anything it cannot be sure of goes through transformers."""

from __future__ import annotations

import json

import pytest

from raylm.datasets import tokenizers as toks

pytestmark = pytest.mark.unit


def _specials_only(tmp_path, **tokens):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "<pad>": 1, "a": 2}, unk_token="<pad>"))
    PreTrainedTokenizerFast(tokenizer_object=t, **tokens).save_pretrained(tmp_path / "tok")
    return tmp_path / "tok"


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    toks.train_bpe(iter(["the quick brown fox jumps over the lazy dog"] * 50), out, vocab_size=300, min_frequency=1)
    return out


def test_trained_tokenizer_facts_match_transformers_without_it(bpe_dir):
    assert toks._plain_facts(bpe_dir) is not None  # the fast path, not the fallback
    assert toks.tokenizer_facts(bpe_dir) == toks._hf_facts(toks.load_tokenizer(bpe_dir))
    assert toks.check_facts(toks.tokenizer_facts(bpe_dir), ("eos_id",)) == []


@pytest.mark.parametrize("tokens", [{"eos_token": "<|endoftext|>", "pad_token": "<pad>"},
                                    {"pad_token": "<pad>"}, {"eos_token": "<|endoftext|>", "mask_token": "<nope>"}])
def test_other_special_tokens_match_transformers(tmp_path, tokens):
    d = _specials_only(tmp_path, **tokens)
    assert toks.tokenizer_facts(d) == toks._hf_facts(toks.load_tokenizer(d))
    assert toks.check_facts(toks.tokenizer_facts(d), ("eos_id",)) == toks.check_tokenizer(toks.load_tokenizer(d),
                                                                                          ("eos_id",))


def test_anything_unusual_goes_through_transformers(tmp_path, bpe_dir):
    d = _specials_only(tmp_path, eos_token="<|endoftext|>")
    conf = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**conf, "tokenizer_class": "BertTokenizer"}))
    assert toks._plain_facts(d) is None
    (d / "tokenizer_config.json").write_text(json.dumps({**conf, "extra_special_tokens": ["<x>"]}))
    assert toks._plain_facts(d) is None
    (d / "tokenizer_config.json").write_text(json.dumps(conf))
    (d / "special_tokens_map.json").write_text("{}")
    assert toks._plain_facts(d) is None
