"""raylm generate / the main job's sample: sampling settings reach the model (a real tiny GPT-2)."""

from __future__ import annotations

from pathlib import Path

import torch

from raylm.tasks.corpus_eval import generate

WORDS = ["return", "the", "list", "of", "file", "name", "value"]


def _export(out: Path) -> Path:
    """A word-level tokenizer and a GPT-2 whose final layer norm outputs one constant vector, which the
    LM head maps to the same logits everywhere: "the", "list", "of" by far the likeliest, never the end.
    Left alone it draws 31 words from three, so some 3-gram must come twice (27 exist)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<|endoftext|>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(str(out))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=16, n_layer=1, n_head=2,
                                       tie_word_embeddings=False))
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0  # every position's hidden state: (1, 0, ..., 0)
        logits = torch.full((len(vocab),), -4.0)
        logits[[vocab["the"], vocab["list"], vocab["of"]]] = 4.0
        logits[0] = -30.0  # never end
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, 0] = logits
    model.save_pretrained(str(out))
    return out


def _trigrams(words: list[str]) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + 3]) for i in range(len(words) - 2)]


def test_no_repeat_ngram_keeps_a_looping_model_from_repeating_itself(tmp_path):
    d = str(_export(tmp_path / "m"))
    looped = generate(d, "return", max_new_tokens=30, no_repeat_ngram_size=0, seed=1)[0].split()
    guarded = generate(d, "return", max_new_tokens=30, no_repeat_ngram_size=3, seed=1)[0].split()
    assert len(looped) == len(guarded) == 31
    assert len(set(_trigrams(looped))) < len(_trigrams(looped))  # the model alone repeats 3-grams
    assert len(set(_trigrams(guarded))) == len(_trigrams(guarded))  # the guard: none twice


def test_samples_are_reproducible_by_seed(tmp_path):
    d = str(_export(tmp_path / "m"))
    assert generate(d, "return", max_new_tokens=12, seed=3) == generate(d, "return", max_new_tokens=12, seed=3)
    # draws from one load: the same as one call per seed
    assert generate(d, "return", max_new_tokens=12, seed=3, draws=2) == [
        *generate(d, "return", max_new_tokens=12, seed=3), *generate(d, "return", max_new_tokens=12, seed=4)]
