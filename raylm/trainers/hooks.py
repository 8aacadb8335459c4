"""Side concerns of the loop, kept out of it: its observers (`trainer.observers`), the non-finite loss policy."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from raylm.trainers.config import ObserverSpec


@runtime_checkable
class LoopObserver(Protocol):
    """Told what the loop trains on and when a checkpoint is written; it has no say in either.

    Built once per worker attempt by the factory a `trainer.observers` entry names (`ObserverFactory`),
    after the restore, and called on that worker only. Tests keep their sample ledgers and hold checkpoint
    writes open with observers (tests/support/observers.py); the loop knows nothing of what they do.
    """

    def on_batch(self, epoch: int, step: int, sample_ids: Any) -> None:
        """A batch is about to be trained on: it goes into update `step` (0-based: the number of updates
        before it), from data epoch `epoch`; `sample_ids` (a 1-D tensor) names its rows. Once per
        micro-batch under gradient accumulation."""

    def on_checkpoint_write(self, path: str) -> None:
        """A sharded checkpoint write is open: every rank's shard is in `path` (its DCP directory), the
        metadata that completes it is not; a worker that dies now leaves a checkpoint Ray never registers.
        The write waits for this call. Called on the rank that coordinates the write (rank 0), in the
        background write's thread when the write is asynchronous; hf checkpoints (one file set written
        by rank 0) do not call it."""

    def close(self) -> None:
        """The loop ended: the run finished, or stops for a restart (preemption). Not called when the
        worker dies or the loop raises."""


class ObserverFactory(Protocol):
    """What a `trainer.observers` entry's `factory` ("module:function") names."""

    def __call__(self, rank: int, world: int, start_step: int, run_dir: str, **options: Any) -> LoopObserver:
        """This worker's observer: its rank of `world`, the step the loop starts from (0, or the restored
        checkpoint's step), the run's directory; `options` are the entry's, as written in the config."""
        ...


class Observers:
    """A worker's observers, called in the order of `trainer.observers` (itself a `LoopObserver`)."""

    def __init__(self, observers: Iterable[LoopObserver] = ()) -> None:
        self.observers = list(observers)

    @classmethod
    def load(cls, specs: Iterable[ObserverSpec], rank: int, world: int, start_step: int, run_dir: str) -> Observers:
        """From `trainer.observers` entries (`factory`, `options`): each factory imported on this worker."""
        built = []
        for spec in specs:
            obs = resolve_factory(spec.factory)(rank, world, start_step, run_dir, **spec.options)
            if not isinstance(obs, LoopObserver):
                raise TypeError(f"trainer.observers: {spec.factory} returned {type(obs).__name__}, which lacks "
                                "on_batch, on_checkpoint_write or close (raylm.trainers.hooks.LoopObserver)")
            built.append(obs)
        return cls(built)

    def __bool__(self) -> bool:
        return bool(self.observers)

    def on_batch(self, epoch: int, step: int, sample_ids: Any) -> None:
        for obs in self.observers:
            obs.on_batch(epoch, step, sample_ids)

    def on_checkpoint_write(self, path: str) -> None:
        for obs in self.observers:
            obs.on_checkpoint_write(path)

    def close(self) -> None:
        for obs in self.observers:
            obs.close()


def resolve_factory(path: str) -> ObserverFactory:
    """The factory a "module:function" path names ("module:Class.build" too), imported on this worker."""
    module, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"trainer.observers: cannot import {module!r} on this worker ({e}); its directory must "
                          "be on the workers' Python path (Ray adds the driver's working directory)") from e
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def check_nonfinite(first_bad_step: int, loss: float, grad_norm: float, policy: str,
                    last_checkpoint: str | None) -> None:
    """Called at a sync step whose window saw a non-finite loss or grad norm (at `first_bad_step`).

    "stop" raises, naming that step and the last good checkpoint (a sync precedes every checkpoint,
    so none is written after a bad step); "skip" already dropped those updates in the step itself.
    Under fp16 the grad scaler owns overflowing gradients (it skips the step and lowers the scale),
    so only a non-finite loss is flagged there.
    """
    if not first_bad_step or policy == "skip":
        return
    where = last_checkpoint or "none yet (the run would start from scratch)"
    raise FloatingPointError(f"non-finite loss or grad norm at step {first_bad_step} (window mean loss {loss}, "
                             f"grad norm {grad_norm}); last good checkpoint: {where}. "
                             "Lower trainer.optimizer.lr, or set trainer.nan_policy=skip to skip such steps.")
