"""Streaming prepared shards into training workers, with a resumable data position.

The training split goes through Ray Train's DataConfig split (`get_dataset_shard("train")`).
Why a resumed worker sees the same rows: with `preserve_order=True` the read emits blocks in
file order, and Ray Data's OutputSplitter then ignores locality hints and gives each block to
the split that has received the fewest rows so far (`_select_next_output_index`), a pure
function of the block sequence, not of timing; `equal=True` trims every split to the same
row count. We checked it empirically too (consumers at different speeds, started at different
times: the same rows per split every run). With a seeded local shuffle on top, worker r's
micro-batch k of epoch e is the same on every run, so skipping the k consumed ones is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def open_split(prepared_dir: str, split: str, manifest: dict):
    """A Ray Dataset over one split's shards (files listed in the manifest, in a fixed order)."""
    import os

    import ray

    files = [os.path.join(prepared_dir, f["path"]) for f in manifest["splits"][split]["files"]]
    ds = ray.data.read_parquet(files, shuffle=None)
    # Blocks in file order even when read tasks finish out of order (a loaded machine, a slow node):
    # materialize() and streaming_split() then hand every worker the same rows on every run, which
    # "skip the batches already consumed" needs for an exact resume. The context is this dataset's copy.
    ds.context.execution_options.preserve_order = True
    return ds


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


class TrainStream:
    """Micro-batches for one worker across epochs, with its position (epoch, batches_in_epoch)."""

    def __init__(self, shard: Any, batch_size: int, seed: int, buffer_rows: int,
                 collate: Callable[[dict, int], Any], epoch: int = 0, position: int = 0) -> None:
        self.shard, self.batch_size, self.seed, self.buffer_rows = shard, batch_size, seed, buffer_rows
        self.collate, self.epoch, self.position = collate, epoch, position
        self._it = self._open(position)

    def _open(self, skip: int) -> Iterator[Any]:
        return epoch_batches(self.shard, self.batch_size, self.epoch, self.seed, skip, self.buffer_rows,
                             lambda b: b)

    def next(self) -> Any:
        """The next micro-batch; rolls over to the next epoch (same seed, new order) at the end."""
        raw = next(self._it, None)
        if raw is None:
            self.epoch, self.position = self.epoch + 1, 0
            self._it = self._open(0)
            raw = next(self._it, None)
            if raw is None:
                raise ValueError(f"no training batch: the train split is smaller than one micro-batch "
                                 f"({self.batch_size} rows) per worker")
        # A seed per sample position: masking etc. is the same after a resume.
        batch = self.collate(raw, hash((self.seed, self.epoch, self.position)) & 0x7FFFFFFF)
        self.position += 1
        return batch


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
