"""Streaming prepared shards into training workers, with a resumable data position.

The training split goes through Ray Train's DataConfig split (`get_dataset_shard("train")`).
Why a resumed worker sees the same rows: with `preserve_order=True` the read emits blocks in
file order, and Ray Data's OutputSplitter then ignores locality hints and gives each block to
the split that has received the fewest rows so far (`_select_next_output_index`), a pure
function of the block sequence, not of timing; `equal=True` trims every split to the same
row count. We checked it empirically too (consumers at different speeds, started at different
times: the same rows per split every run). With a seeded local shuffle on top, worker r's
micro-batch k of epoch e is the same on every run, so skipping the k consumed ones is exact.

With `data.stream.sharding: stride` every worker reads the split in that same global order instead and
takes every world-th micro-batch; the position counts global batches, so a run can resume with
another worker count (see raylm.datasets.sharding).

Classification rows vary in length: the stream groups them by length (windows of
`data.stream.length_group_batches` micro-batches, sorted, cut, yielded in a seeded random order; issue 15)
so that padding each batch to its longest row wastes little. Each window is grouped with its own
seeded rng, so the grouped stream is as repeatable as the plain one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import numpy as np

from raylm.cluster.storage import is_remote
from raylm.datasets.bucketing import length_grouped
from raylm.datasets.sharding import stride_share


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


# Splits at most this big on local disk are read by the driver with pyarrow and handed to Ray as
# in-memory blocks: a Ray Data execution costs seconds of fixed start-up (read tasks, worker processes)
# on a small machine, ~8 s each on 2 cores, which dominated a small run's time to its first step.
DRIVER_READ_MB = 32


def read_small_split(prepared_dir: str, split: str, manifest: dict, limit: int | None = None,
                     max_mb: float = DRIVER_READ_MB):
    """The split (or its first `limit` rows) as a materialized Ray Dataset read without a Ray Data
    execution, or None when the shards are remote or more than `max_mb` on disk (`open_split` then).

    The same rows in the same order as `open_split(...).limit(limit).materialize()`: the manifest's file
    order, one block per shard file.
    """
    import os

    import pyarrow.parquet as pq
    import ray


    if is_remote(prepared_dir):
        return None
    files = [os.path.join(prepared_dir, f["path"]) for f in manifest["splits"][split]["files"]]
    if not files or sum(os.path.getsize(f) for f in files) > max_mb * 2**20:
        return None
    tables, rows = [], 0
    for f in files:
        if limit is not None and rows >= limit:
            break
        t = pq.read_table(f)
        if limit is not None:
            t = t.slice(0, limit - rows)
        tables.append(t)
        rows += t.num_rows
    # from_blocks computes each block's metadata here; from_arrow ran a Ray task per table for it (a worker
    # process started on the driver's critical path: 1.9 s of `raylm train`'s start-up on 2 cores).
    return ray.data.from_blocks(tables)


def grouping_mode(group_by_length: bool | Literal["auto"], varied_lengths: bool | None) -> bool | None:
    """True: length-group every window; False: plain batches; None (auto, the task unknown): group the
    windows whose rows vary in length, cut the others in stream order. `varied_lengths`: the task's rows
    vary in length (`Task.group_by_length`: classification, seq2seq; not packed LM blocks)."""
    if group_by_length != "auto":
        return bool(group_by_length)
    return varied_lengths


def _shuffle_kw(buffer_rows: int, seed: int, epoch: int) -> dict[str, Any]:
    if not buffer_rows:
        return {}
    return {"local_shuffle_buffer_size": buffer_rows, "local_shuffle_seed": seed * 10_007 + epoch}


def epoch_batches(shard: Any, batch_size: int, epoch: int, seed: int, skip: int, buffer_rows: int) -> Iterator[dict]:
    """Micro-batches of one epoch for this worker, after skipping `skip` already consumed ones."""
    it = shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True, prefetch_batches=2,
                            **_shuffle_kw(buffer_rows, seed, epoch))
    return itertools.islice(it, skip, None)


def grouped_epoch_batches(shard: Any, batch_size: int, epoch: int, seed: int, skip: int, buffer_rows: int,
                          window_batches: int, varied_only: bool = False) -> Iterator[dict]:
    """Length-grouped micro-batches of one epoch (see `bucketing.length_grouped`), after skipping `skip`.

    The shard's rows (locally shuffled as `epoch_batches` does), read `window_batches` batches at a
    time; as many batches as `epoch_batches` (rows // batch_size, drop_last), so ranks stay equal.
    """
    windows = shard.iter_batches(batch_size=batch_size * window_batches, batch_format="numpy",
                                 drop_last=False, prefetch_batches=1, **_shuffle_kw(buffer_rows, seed, epoch))
    batches = length_grouped(windows, batch_size, (seed % 2**63, epoch), varied_only=varied_only)
    return itertools.islice(batches, skip, None)


class TrainStream:
    """Micro-batches for one worker across epochs, with its position (epoch, position).

    `sharding` (see raylm.datasets.sharding): "split" reads this worker's part of the split and
    `position` counts this worker's batches; "stride" reads the whole split in the global order,
    takes every `world`-th batch from `rank`, and `position` counts *global* batches, so it holds
    at any worker count. `group_by_length`, `length_group_batches`: see DataConfig; `varied_lengths`:
    the task's (see grouping_mode); without it, "auto" groups the windows whose rows vary in length
    and leaves packed blocks as they are.
    """

    def __init__(self, shard: Any, batch_size: int, seed: int, buffer_rows: int,
                 collate: Callable[[dict, int], Any], epoch: int = 0, position: int = 0, *,
                 varied_lengths: bool | None = None, group_by_length: bool | Literal["auto"] = "auto",
                 length_group_batches: int = 50, sharding: str = "split", world: int = 1, rank: int = 0) -> None:
        self.shard, self.batch_size, self.seed, self.buffer_rows = shard, batch_size, seed, buffer_rows
        self.collate, self.epoch, self.position = collate, epoch, position
        self.group, self.window_batches = grouping_mode(group_by_length, varied_lengths), length_group_batches
        self.stride, self.world, self.rank = sharding == "stride", world, rank
        self._it = self._open(position)

    def _open(self, skip: int) -> Iterator[Any]:
        local_skip = 0 if self.stride else skip  # stride: every batch of the global order, skipped below
        if self.group is False:
            it = epoch_batches(self.shard, self.batch_size, self.epoch, self.seed, local_skip, self.buffer_rows)
        else:
            it = grouped_epoch_batches(self.shard, self.batch_size, self.epoch, self.seed, local_skip,
                                       self.buffer_rows, self.window_batches, varied_only=self.group is None)
        return stride_share(it, self.world, self.rank, skip) if self.stride else it

    def _seed(self) -> int:
        """A seed per sample position (masking etc. is the same after a resume): per worker batch in a
        split, per global batch in a stride (the same at any worker count)."""
        if self.stride:
            return hash((self.seed, self.epoch, self.position + self.rank)) & 0x7FFFFFFF
        return (hash((self.seed, self.epoch, self.position)) & 0x7FFFFFFF) * 31 + self.rank

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
        batch = self.collate(raw, self._seed())
        self.position += self.world if self.stride else 1
        return batch


def eval_batches(ds: Any, batch_size: int, rank: int, world: int, limit: int,
                 sort_by_length: bool = False) -> list[tuple[dict, bool]]:
    """Worker `rank`'s share of the first `limit * world` validation batches (the same every eval), as
    (batch, counts) pairs: every rank gets as many batches as the rank with the most (see `deal_eval_batches`).

    Read once and kept in memory by the caller: a fixed, small evaluation set, so that each
    evaluation costs model time only, not a new Ray Data execution. `sort_by_length` (tasks whose
    metrics do not depend on the order: sums over examples) regroups this rank's rows by length, so
    that a batch is padded to its own length, not to the longest of 32 random rows.
    """
    it = ds.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=1)
    return deal_eval_batches(it, batch_size, rank, world, limit, sort_by_length)


def deal_eval_batches(batches: Iterable[dict], batch_size: int, rank: int, world: int, limit: int,
                      sort_by_length: bool = False) -> list[tuple[dict, bool]]:
    """Batch i of the first `limit * world` goes to rank i % world; then every rank pads its share with
    fillers up to the largest share, so that all ranks run the same number of forward passes.

    Under FSDP every forward is a collective (the all-gathers of the shards): a rank with one batch fewer
    would wait forever in its all-reduce of the sums while another is still in a forward (issue 27).
    A filler is a copy of the split's first batch, paired with counts=False: it is run and its results
    count for nothing, so metrics are exactly those of the real rows. Every rank reads every batch (it
    skips the others' after counting their rows), so the shares' sizes are known without a collective.
    """
    mine: list[dict] = []
    rows = [0] * world  # each rank's rows, and batches before regrouping
    shares = [0] * world
    first = None
    for i, batch in enumerate(batches):
        if i >= limit * world:
            break
        first = batch if first is None else first
        rows[i % world] += len(batch["input_ids"])
        shares[i % world] += 1
        if i % world == rank:
            mine.append(batch)
    if sort_by_length:
        mine = regroup_by_length(mine, batch_size)
        shares = [-(-n // batch_size) for n in rows]  # regrouped: ceil(rows / batch_size) batches each
    dealt = [(b, True) for b in mine]
    return dealt + [(first, False)] * (max(shares, default=0) - len(mine))


def regroup_by_length(batches: list[dict], batch_size: int) -> list[dict]:
    """The same rows in batches of `batch_size`, ordered by the length of `input_ids` (stable)."""
    if not batches:
        return batches
    cols: dict[str, list] = {k: [x for b in batches for x in b[k]] for k in batches[0]}
    order = np.argsort([len(x) for x in cols["input_ids"]], kind="stable")

    def column(items: list) -> np.ndarray:
        if all(np.ndim(x) == 0 for x in items):
            return np.asarray(items)
        arr = np.empty(len(items), dtype=object)  # variable-length rows
        arr[:] = [np.asarray(x) for x in items]
        return arr

    return [{k: column([v[j] for j in order[i: i + batch_size]]) for k, v in cols.items()}
            for i in range(0, len(order), batch_size)]
