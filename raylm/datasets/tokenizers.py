"""Tokenizers: train a byte-level BPE or a BERT WordPiece on a streamed sample, or load a local HF directory."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from raylm.errors import UserError

EOS, PAD, UNK, MASK = "<|endoftext|>", "<pad>", "<unk>", "<mask>"
SPECIALS = [EOS, PAD, UNK, MASK]


def train_bpe(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 4096, min_frequency: int = 2):
    """Train a byte-level BPE (GPT-2 style) and save a directory AutoTokenizer loads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # off a terminal its bars leave only blank lines on stdout
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD, unk_token=UNK, mask_token=MASK
    )
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    fast.save_pretrained(str(tmp))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return fast


def has_tokenizer_files(path: str | Path) -> bool:
    p = Path(path)
    return (p / "tokenizer.json").is_file() or (p / "tokenizer_config.json").is_file()


def load_tokenizer(path: str | Path):
    p = Path(path)
    if not has_tokenizer_files(p):  # before importing transformers: a wrong path fails at once
        raise UserError(f"tokenizer: no tokenizer files in '{p}'", hint="run `raylm tokenizer train CONFIG` or set data.tokenizer.path")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(p))
    if not tok.is_fast:
        raise UserError(f"tokenizer: '{p}' is not a fast tokenizer (tokenizer.json needed)")
    return tok


def load_backend(path: str | Path) -> tuple[Any, int | None]:
    """(tokenizers.Tokenizer, eos id) straight from tokenizer.json, encoding without padding or
    truncation: workers skip importing transformers (seconds per actor) since they only encode."""
    import json

    from tokenizers import Tokenizer

    p = Path(path)
    tok = Tokenizer.from_file(str(p / "tokenizer.json"))
    # tokenizer.json may carry its own padding/truncation (all-MiniLM-L6-v2's pads every text to 128):
    # shards must hold each example at its true length, raylm truncates (data.max_length) and pads
    # per batch itself. Padded shards made 79% of SST-2 compute padding (issue 15).
    tok.no_padding()
    tok.no_truncation()
    eos = None
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = p / name
        if eos is None and f.is_file():
            eos = json.loads(f.read_text()).get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    return tok, tok.token_to_id(eos) if eos else None


# What a missing special token breaks, for the facts a task needs (`Task.tokenizer_needs`).
NEED_WHY = {"eos_id": "tokenizer has no EOS token: causal LM packing needs one between documents",
            "mask_id": "tokenizer has no mask token: masked LM needs one"}


def check_tokenizer(tok, needs: tuple[str, ...] = ()) -> list[str]:
    """Problems that make a tokenizer unusable for a task needing `needs`, one line each."""
    return check_facts(_hf_facts(tok), needs)


def check_facts(facts: dict, needs: tuple[str, ...] = ()) -> list[str]:
    """`check_tokenizer` on `tokenizer_facts`."""
    problems = [NEED_WHY.get(k, f"tokenizer has no {k.removesuffix('_id')} token") for k in needs if facts.get(k) is None]
    if facts["vocab_size"] <= len(facts["specials"]):
        problems.append(
            f"tokenizer vocabulary ({facts['vocab_size']}) is no larger than its special tokens "
            f"({len(facts['specials'])}): train it with a larger data.tokenizer.vocab_size"
        )
    return problems


# What AutoTokenizer says about a tokenizer, read from its files when raylm wrote them (a plain
# fast tokenizer, no class defaults, no extra special tokens): importing transformers costs the
# prepare driver seconds of CPU (torch comes with it) before any worker starts. Anything else,
# and any doubt, asks transformers.
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_PLAIN_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}
_ID_KEYS = {"eos_id": "eos_token", "pad_id": "pad_token", "mask_id": "mask_token", "cls_id": "cls_token",
            "sep_id": "sep_token"}


def tokenizer_facts(path: str | Path) -> dict:
    """{vocab_size, eos_id, pad_id, mask_id, cls_id, sep_id, specials}: as AutoTokenizer gives them."""
    return _plain_facts(Path(path)) or _hf_facts(load_tokenizer(path))


def _hf_facts(tok) -> dict:
    return {"vocab_size": len(tok), **{k: getattr(tok, f"{v}_id") for k, v in _ID_KEYS.items()},
            "specials": sorted(set(tok.all_special_tokens))}


def _plain_facts(p: Path) -> dict | None:
    import json

    from tokenizers import Tokenizer

    conf_file, tok_file = p / "tokenizer_config.json", p / "tokenizer.json"
    if not conf_file.is_file() or not tok_file.is_file() or (p / "special_tokens_map.json").exists():
        return None
    conf = json.loads(conf_file.read_text())
    if conf.get("tokenizer_class") not in _PLAIN_CLASSES or set(conf) - {*_SPECIAL_KEYS, "tokenizer_class",
                                                                          "backend", "model_max_length"}:
        return None
    specials = {k: conf.get(k) for k in _SPECIAL_KEYS}
    if not all(v is None or isinstance(v, str) for v in specials.values()):
        return None  # AddedToken dicts: their flags are transformers' business
    backend = Tokenizer.from_file(str(tok_file))
    ids = {k: backend.token_to_id(v) for k, v in specials.items() if v is not None}
    if None in ids.values():
        return None  # a special token outside the vocabulary: transformers maps it to <unk>
    return {"vocab_size": backend.get_vocab_size(with_added_tokens=True),
            **{k: ids.get(v) for k, v in _ID_KEYS.items()},
            "specials": sorted({v for v in specials.values() if v is not None})}


def fingerprint(path: str | Path) -> str:
    """sha256 of the files that define the tokenizer: shards are only valid with the same one."""
    h = hashlib.sha256()
    for name in ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "special_tokens_map.json"):
        f = Path(path) / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def resolve_tokenizer_dir(prepared_dir: str, configured: str | None) -> str:
    return configured or os.path.join(prepared_dir, "tokenizer")


def cls_sep_ids(tokenizer_dir: str) -> dict:
    """{cls_id, sep_id} of a BERT-style tokenizer directory (None for GPT-style ones; {} if it does not load)."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError):
        return {}
    return {"cls_id": tok.cls_token_id, "sep_id": tok.sep_token_id}


BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # in BERT's order


def train_wordpiece(texts: Iterator[str], out_dir: str, vocab_size: int, min_frequency: int) -> None:
    """A BERT-style uncased WordPiece tokenizer ([CLS] A [SEP] B [SEP]) saved where AutoTokenizer loads it:
    the encoders raylm trains for NER, QA and NSP read [CLS] and segment ids, as BERT does."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                                             special_tokens=BERT_SPECIALS, show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    fast.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
