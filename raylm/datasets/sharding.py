"""How the training split is shared among workers, and a data position that survives a change of
worker count.

Two ways (`data.stream.sharding`):
- `split`: Ray Data's `streaming_split(world, equal=True)` hands each worker its own part of the
  split (each row is read once, by one worker). Worker r's k-th batch is the same on every run with
  the same worker count, so a resume skips the k consumed batches; it cannot change the count.
- `stride`: every worker reads the split in the same global order and takes every `world`-th
  micro-batch. The position is the number of *global* micro-batches consumed, so a run resumed with
  M workers after N (elastic training, a lost node, FSDP resharding) skips exactly what the N
  trained and shares the rest M ways: every sample of the epoch exactly once. The price: each worker
  reads the whole split (cheap for a materialized split in the object store, N x the reads when
  streaming from storage).
`auto` is `stride` for elastic runs (`trainer.scaling.num_workers: [min, max]`) and `split` otherwise.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Literal, TypeVar

from raylm.errors import UserError

T = TypeVar("T")


def resolve_sharding(sharding: Literal["auto", "split", "stride"], elastic: bool) -> str:
    if sharding != "auto":
        return sharding
    return "stride" if elastic else "split"


def sharding_for(sharding: Literal["auto", "split", "stride"], num_workers: int | tuple[int, int]) -> str:
    """`data.stream.sharding` resolved for `trainer.scaling.num_workers`: auto is stride for an elastic [min, max]."""
    return resolve_sharding(sharding, elastic=not isinstance(num_workers, int))


def stride_share(batches: Iterable[T], world: int, rank: int, skip: int = 0) -> Iterator[T]:
    """Rank `rank`'s batches of a global sequence: after `skip` global batches, rounds of `world`
    consecutive batches, of which this rank takes the `rank`-th. An incomplete last round is
    dropped on every rank, so all ranks yield the same number of batches (the loop steps together)."""
    it = itertools.islice(batches, skip, None)
    while True:
        round_ = list(itertools.islice(it, world))
        if len(round_) < world:
            return
        yield round_[rank]


def check_resume(saved_sharding: str, saved_world: int | None, sharding: str, world: int) -> None:
    """A checkpoint's data position only means something under the sharding that wrote it, and a
    `split` position only with the worker count that wrote it."""

    if saved_sharding != sharding:
        raise UserError(f"this run's checkpoint counts its data position with data.stream.sharding={saved_sharding}, "
                        f"the config now says {sharding}", hint=f"resume with data.stream.sharding={saved_sharding}")
    if sharding == "split" and saved_world and saved_world != world:
        raise UserError(f"this run's checkpoint was written by {saved_world} workers and its data position "
                        f"is per worker (data.stream.sharding=split); it cannot resume with {world}",
                        hint=f"resume with trainer.scaling.num_workers={saved_world}, or start the run with "
                        "data.stream.sharding=stride (a position that holds at any worker count)")
