"""preflight_overlapped: the tokenizer check (seconds of imports) runs beside Ray's start, and its
problems still stop the command with a UserError; problems found without imports stop it before."""

from __future__ import annotations

import pytest

from raylm.config import validate
from raylm.errors import UserError
from raylm.preflight import preflight_overlapped


def _tokenizer(tmp_path, vocab: dict[str, int]):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    out = tmp_path / "tok"
    PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>", pad_token="<pad>").save_pretrained(out)
    return str(out)


def _cfg(tmp_path, tok: str, **model):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text\n")
    return validate({"data": {"source": str(corpus), "tokenizer": {"path": tok}}, "model": model})


def test_a_bad_tokenizer_is_reported_by_the_wait_not_before(tmp_path):
    # Only its special tokens: unusable for training. The check needs transformers: it runs in a thread.
    cfg = _cfg(tmp_path, _tokenizer(tmp_path, {"<|endoftext|>": 0, "<pad>": 1}))
    wait = preflight_overlapped(cfg, "train")  # returns (the check runs on): a synchronous check raised here
    with pytest.raises(UserError, match="no larger than its special tokens"):
        wait()


def test_a_good_tokenizer_passes(tmp_path):
    vocab = {"<|endoftext|>": 0, "<pad>": 1, **{f"w{i}": i + 2 for i in range(300)}}
    wait = preflight_overlapped(_cfg(tmp_path, _tokenizer(tmp_path, vocab)), "train")
    assert wait() is None


def test_problems_found_without_imports_fail_at_once_and_list_the_tokenizers_too(tmp_path):
    # A missing model directory is a fast check: it fails here, before any Ray start, and the slow check
    # runs here as well so that the message lists every problem.
    cfg = _cfg(tmp_path, _tokenizer(tmp_path, {"<|endoftext|>": 0, "<pad>": 1}), init_from=str(tmp_path / "nope"))
    with pytest.raises(UserError) as err:
        preflight_overlapped(cfg, "train")
    text = "\n".join(err.value.problems)
    assert "model.init_from" in text and "no larger than its special tokens" in text


def test_a_tokenizer_path_without_files_fails_at_once(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no tokenizer files"):
        preflight_overlapped(_cfg(tmp_path, str(tmp_path / "empty")), "prepare")
