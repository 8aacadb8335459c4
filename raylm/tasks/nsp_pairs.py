"""BERT next-sentence-prediction examples (Devlin et al. 2019, 3.1 "Task #2" and appendix A.2).

From documents (lists of sentences, as text or token ids) build `[CLS] A [SEP] B [SEP]` pairs
that fit `block_size`: B is the segment that follows A in its document for half of the examples,
and a segment of ANOTHER document for the other half. Labels follow HF `BertForPreTraining`:
`next_sentence_label` 0 = B continues A, 1 = B is random. The same documents and seed give the
same examples.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

__all__ = ["IS_NEXT", "IS_RANDOM", "nsp_examples", "pack_pair"]

IS_NEXT, IS_RANDOM = 0, 1
Doc = list[list[int]]


def nsp_examples(documents: Sequence[Sequence[str] | Sequence[Sequence[int]]], block_size: int, cls_id: int,
                 sep_id: int, seed: int = 0, tokenize: Callable[[str], list[int]] | None = None) -> list[dict]:
    """Examples `{input_ids, token_type_ids, next_sentence_label}`, each at most `block_size` tokens.

    Each document is walked once: A is a random number of whole sentences, B the rest of a chunk of
    about `block_size - 3` tokens (is-next), or, on the coin's other side, sentences from a random
    other document, A's unused sentences going back to the walk (as BERT's
    create_pretraining_data.py does). Sentences that are text need `tokenize`. A last single
    sentence, which has no next segment, makes no example, so the coin alone sets the label.
    """
    docs = [_doc(d, tokenize) for d in documents]
    usable = [i for i, d in enumerate(docs) if d]
    if len(usable) < 2:
        raise ValueError("NSP needs at least two non-empty documents (random B comes from another document)")
    if block_size < 5:
        raise ValueError(f"block_size {block_size} cannot hold [CLS] A [SEP] B [SEP]")
    rng, target, out = random.Random(seed), block_size - 3, []
    for d in usable:
        i = 0
        while len(docs[d]) - i >= 2:
            chunk = _take(docs[d], i, target, min_sentences=2)
            a_end = rng.randint(1, len(chunk) - 1)
            a = [t for s in chunk[:a_end] for t in s]
            if rng.random() < 0.5:
                b, label, i = _random_segment(docs, usable, d, target - len(a), rng), IS_RANDOM, i + a_end
            else:
                b, label, i = [t for s in chunk[a_end:] for t in s], IS_NEXT, i + len(chunk)
            out.append(pack_pair(a, b, target, cls_id, sep_id, rng) | {"next_sentence_label": label})
    return out


def _doc(doc: Sequence, tokenize: Callable[[str], list[int]] | None) -> Doc:
    if any(isinstance(s, str) for s in doc) and tokenize is None:
        raise ValueError("sentences are text: pass tokenize (text -> token ids)")
    sents = [tokenize(s) if isinstance(s, str) else list(s) for s in doc]
    return [s for s in sents if s]


def _take(doc: Doc, start: int, target: int, min_sentences: int = 1) -> Doc:
    """Sentences from `start` until they hold `target` tokens (at least `min_sentences` of them)."""
    chunk, n = [], 0
    for sent in doc[start:]:
        if n >= target and len(chunk) >= min_sentences:
            break
        chunk.append(sent)
        n += len(sent)
    return chunk


def _random_segment(docs: list[Doc], usable: list[int], own: int, target: int, rng: random.Random) -> list[int]:
    """Sentences from a random start in a random document other than `own`."""
    other = usable[rng.randrange(len(usable) - 1)]
    other = usable[-1] if other == own else other  # never the same document
    doc = docs[other]
    return [t for s in _take(doc, rng.randrange(len(doc)), max(1, target)) for t in s]


def pack_pair(a: list[int], b: list[int], max_tokens: int, cls_id: int, sep_id: int,
              rng: random.Random) -> dict:
    """`[CLS] A [SEP] B [SEP]` with A and B cut to `max_tokens` together: tokens come off the longer
    side, from its front or back at random (BERT's truncate_seq_pair), each side keeping one."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_tokens:
        side = a if len(a) > len(b) else b
        del side[0 if rng.random() < 0.5 else -1]
    ids = [cls_id, *a, sep_id, *b, sep_id]
    return {"input_ids": ids, "token_type_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1)}
