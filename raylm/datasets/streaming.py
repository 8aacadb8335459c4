"""Streaming prepared shards into training workers, with a resumable data position.

The training split goes through Ray Train's DataConfig split (`get_dataset_shard("train")`);
the order is deterministic for a seed (`preserve_order`, seeded local shuffle), so a resumed
worker skips exactly the micro-batches it consumed before the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def open_split(prepared_dir: str, split: str, manifest: dict):
    """A Ray Dataset over one split's shards (files listed in the manifest, in a fixed order)."""
    import os

    import ray

    files = [os.path.join(prepared_dir, f["path"]) for f in manifest["splits"][split]["files"]]
    return ray.data.read_parquet(files, shuffle=None)


def epoch_batches(shard: Any, batch_size: int, epoch: int, seed: int, skip: int, buffer_rows: int,
                  collate: Callable[[dict], Any]) -> Iterator[Any]:
    """Micro-batches of one epoch for this worker, after skipping `skip` already consumed ones."""
    kw: dict[str, Any] = {}
    if buffer_rows:
        kw = {"local_shuffle_buffer_size": buffer_rows, "local_shuffle_seed": seed * 10_007 + epoch}
    it = shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True, prefetch_batches=2, **kw)
    for i, batch in enumerate(it):
        if i >= skip:
            yield collate(batch)


def eval_batches(ds: Any, batch_size: int, rank: int, world: int, limit: int) -> list[dict]:
    """Worker `rank`'s share of the first `limit * world` validation batches (the same every eval).

    Read once and kept in memory by the caller: a fixed, small evaluation set, so that each
    evaluation costs model time only, not a new Ray Data execution.
    """
    out = []
    for i, batch in enumerate(ds.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=1)):
        if i >= limit * world:
            break
        if i % world == rank:
            out.append(batch)
    return out
