"""Tokenizers: train a byte-level BPE on a streamed sample, or load a local HF directory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

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


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    p = Path(path)
    if not (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
        raise UserError(f"tokenizer: no tokenizer files in '{p}'", hint="run `raylm tokenizer train CONFIG` or set data.tokenizer.path")
    tok = AutoTokenizer.from_pretrained(str(p))
    if not tok.is_fast:
        raise UserError(f"tokenizer: '{p}' is not a fast tokenizer (tokenizer.json needed)")
    return tok


def check_tokenizer(tok, task: str) -> list[str]:
    """Problems that make a tokenizer unusable for a task, one line each."""
    problems = []
    if task in ("causal-lm",) and tok.eos_token_id is None:
        problems.append("tokenizer has no EOS token: causal LM packing needs one between documents")
    if task == "masked-lm" and tok.mask_token_id is None:
        problems.append("tokenizer has no mask token: masked LM needs one")
    if len(tok) <= len(set(tok.all_special_tokens)):
        problems.append(
            f"tokenizer vocabulary ({len(tok)}) is no larger than its special tokens "
            f"({len(set(tok.all_special_tokens))}): train it with a larger data.tokenizer.vocab_size"
        )
    return problems


def fingerprint(path: str | Path) -> str:
    """sha256 of the files that define the tokenizer: shards are only valid with the same one."""
    h = hashlib.sha256()
    for name in ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "special_tokens_map.json"):
        f = Path(path) / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def sample_texts(ds, n: int, batch_size: int = 512) -> Iterator[str]:
    """Stream the first n texts of a Ray Dataset through the driver (bounded memory)."""
    seen = 0
    for batch in ds.limit(n).iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        for t in batch.column("text").to_pylist():
            yield t
            seen += 1
    if not seen:
        raise UserError("the corpus is empty: no document survived reading and cleaning", hint="check data.source and the rejects/ ledger")


def resolve_tokenizer_dir(prepared_dir: str, configured: str | None) -> str:
    return configured or os.path.join(prepared_dir, "tokenizer")
