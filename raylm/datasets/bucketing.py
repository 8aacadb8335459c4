"""Length-bucketed batches for classification: padding per batch stays small.

Sorting a pool of `pool_batches * batch_size` examples by length and cutting it into batches
puts similar lengths together; yielding those batches in a seeded random order keeps the
gradient noise of random batches (the "bucket iterator" of fairseq/torchtext). Deterministic
for a seed, so a resumed run that skips the first k batches sees the same batches as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def bucket_batches(items: Iterable[T], batch_size: int, *, key: Callable[[T], int] = len,  # type: ignore[assignment]
                   pool_batches: int = 50, seed: int = 0, drop_last: bool = False) -> Iterator[list[T]]:
    """Batches of `batch_size` items of similar `key` (length), from a stream of items."""
    rng = np.random.default_rng(seed)
    pool: list[T] = []
    for item in items:
        pool.append(item)
        if len(pool) == batch_size * pool_batches:
            yield from _cut(pool, batch_size, key, rng, drop_last)
            pool = []
    if pool:
        yield from _cut(pool, batch_size, key, rng, drop_last)


def _cut(pool: list[T], batch_size: int, key: Callable[[T], int], rng: np.random.Generator,
         drop_last: bool) -> Iterator[list[T]]:
    ordered = sorted(pool, key=key)
    batches = [ordered[i: i + batch_size] for i in range(0, len(ordered), batch_size)]
    if drop_last and len(batches[-1]) < batch_size:
        batches.pop()
    for i in rng.permutation(len(batches)):
        yield batches[i]


def bucket_dict_batches(batches: Iterable[dict[str, np.ndarray]], batch_size: int, *, length_key: str = "input_ids",
                        seed: int = 0, drop_last: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data form: feed `iter_batches(batch_size=batch_size * pool)` (numpy dicts); get batches of
    `batch_size` rows of similar length, each a dict with the same columns."""
    rng = np.random.default_rng(seed)
    for big in batches:
        lengths = np.fromiter((len(x) for x in big[length_key]), dtype=np.int64, count=len(big[length_key]))
        order = np.argsort(lengths, kind="stable")
        cuts = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
        if drop_last and cuts and len(cuts[-1]) < batch_size:
            cuts.pop()
        for i in rng.permutation(len(cuts)):
            yield {k: v[cuts[i]] for k, v in big.items()}


def padding_fraction(batches: Iterable[list[Any]], key: Callable[[Any], int] = len) -> float:  # type: ignore[assignment]
    """Share of the padded tensor that is padding when each batch pads to its longest item."""
    real = padded = 0
    for b in batches:
        lengths = [key(x) for x in b]
        real += sum(lengths)
        padded += max(lengths) * len(lengths)
    return 1 - real / padded if padded else 0.0
