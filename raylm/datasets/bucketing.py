"""Length-bucketed batches for classification: padding per batch stays small.

Sorting a pool of `pool_batches * batch_size` examples by length and cutting it into batches
puts similar lengths together; yielding those batches in a seeded random order keeps the
gradient noise of random batches (the "bucket iterator" of fairseq/torchtext). Deterministic
for a seed, so a resumed run that skips the first k batches sees the same batches as before.
`length_grouped` is the form the training stream uses (`streaming.TrainStream`, issue 15).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
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


Columns = dict[str, np.ndarray]


def _col(rows: Columns) -> np.ndarray:
    return next(iter(rows.values()))


def row_lengths(col: np.ndarray) -> np.ndarray:
    """Tokens per row of an `input_ids` column: ragged (object array of arrays) or fixed (2-D)."""
    if col.dtype != object:
        return np.full(len(col), col.shape[1] if col.ndim > 1 else 1, dtype=np.int64)
    return np.fromiter((len(x) for x in col), dtype=np.int64, count=len(col))


def split_full(rows: Columns, batch_size: int) -> tuple[Columns, Columns]:
    """(the first whole batches' rows, the rest) in stream order. The rest is what an ungrouped
    stream would put into its last partial batch: cutting it here, before sorting, keeps
    `drop_last` dropping arbitrary rows rather than the longest ones."""
    n = len(_col(rows)) // batch_size * batch_size
    return {k: v[:n] for k, v in rows.items()}, {k: v[n:] for k, v in rows.items()}


def concat_rows(a: Columns, b: Columns) -> Columns:
    """Rows of `a` then rows of `b` (same columns; ragged object columns stay ragged)."""
    if not a or not len(_col(a)):
        return b
    return {k: np.concatenate([a[k], b[k]]) for k in b}


def length_grouped(windows: Iterable[Columns], batch_size: int, seed: Sequence[int], *, varied_only: bool = False,
                   length_key: str = "input_ids") -> Iterator[Columns]:
    """Whole batches from a stream of row windows, length-grouped within each window.

    Rows that do not fill a batch carry over to the next window and the final remainder is dropped,
    so a stream of R rows yields exactly R // batch_size batches however the windows are cut: ranks
    with equal rows (Ray's `equal=True` split) yield equal batch counts. Window w is grouped with an
    rng seeded by (*seed, w): the same batches on every run, so a resume can skip the consumed ones.
    `varied_only`: cut windows whose rows are all one length (packed LM blocks) in stream order.
    """
    carry: Columns = {}
    for w, window in enumerate(windows):
        full, carry = split_full(concat_rows(carry, window), batch_size)
        lengths = row_lengths(full[length_key])
        if varied_only and (not len(lengths) or lengths.min() == lengths.max()):
            for i in range(0, len(lengths), batch_size):
                yield {k: v[i: i + batch_size] for k, v in full.items()}
        else:
            yield from group_window(full, batch_size, np.random.default_rng([*seed, w]), length_key)


def group_window(rows: Columns, batch_size: int, rng: np.random.Generator,
                 length_key: str = "input_ids") -> Iterator[Columns]:
    """Whole batches of similar length from `rows` (a multiple of `batch_size` rows), in a random order.

    A random permutation before the stable sort breaks ties between equal lengths, so batch
    composition changes from epoch to epoch even when the window holds the same rows.
    """
    perm = rng.permutation(len(_col(rows)))
    order = perm[np.argsort(row_lengths(rows[length_key])[perm], kind="stable")]
    cuts = order.reshape(-1, batch_size)
    for i in rng.permutation(len(cuts)):
        yield {k: v[cuts[i]] for k, v in rows.items()}


def bucket_dict_batches(batches: Iterable[dict[str, np.ndarray]], batch_size: int, *, length_key: str = "input_ids",
                        seed: int = 0, drop_last: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data form: feed `iter_batches(batch_size=batch_size * pool)` (numpy dicts); get batches of
    `batch_size` rows of similar length, each a dict with the same columns."""
    rng = np.random.default_rng(seed)
    for big in batches:
        full, rest = split_full(big, batch_size)
        yield from group_window(full, batch_size, rng, length_key)
        if len(_col(rest)) and not drop_last:
            yield rest


def padding_fraction(batches: Iterable[list[Any]], key: Callable[[Any], int] = len) -> float:  # type: ignore[assignment]
    """Share of the padded tensor that is padding when each batch pads to its longest item."""
    real = padded = 0
    for b in batches:
        lengths = [key(x) for x in b]
        real += sum(lengths)
        padded += max(lengths) * len(lengths)
    return 1 - real / padded if padded else 0.0
