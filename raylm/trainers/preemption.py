"""Preemption: a worker told to stop writes a checkpoint at the next sync step, then every rank exits
for a restart that Ray charges to `trainer.scaling.max_preemptions`, not to `max_failures`.

Two signals tell a run to stop:
- a node drain for preemption (Ray Core's DrainNode: KubeRay's autoscaler, spot-reclaim handlers,
  `ray drain-node --reason PREEMPTION`): Ray Train's PreemptionWatcher marks every worker, and
  `ray.train.get_preemption_info()` reads it (a barrier: rank 0's view, broadcast, so it is called
  only at the loop's sync steps, which every rank reaches together);
- a SIGTERM to a worker process (what Kubernetes sends a pod it terminates).

SIGTERM: Ray's worker main loop turns it into SystemExit on the actor's main thread, and Ray Train
runs the loop on another thread, where `signal.signal` cannot be called. This module installs a
chained handler when it is imported in a Ray worker process on its main thread -- which is where
`RayTrainWorker.run_train_fn` deserializes the train function, importing `raylm.trainers.loop` and
this module. While a loop is armed the handler only sets a flag; the loop folds it into the
Window's one all-reduce, so every rank sees it at the same step. Otherwise (no loop running, or a
second SIGTERM) the previous handler runs: Ray's exit.

Why the restart counts as a preemption: Ray's failure policy charges a worker error to
`max_preemption_failures` when it is a `RayActorError` whose `preempted` flag is set (what a worker
killed with its drained node raises); `Preempted` is one.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from ray.exceptions import RayActorError

log = logging.getLogger(__name__)

_requested = threading.Event()
_armed_by: threading.Thread | None = None  # the training thread whose loop checkpoints on a SIGTERM
_previous: Any = None
_installed = False


class Preempted(RayActorError):
    """Raised by every rank once the preemption checkpoint is written (see the module docstring)."""

    def __init__(self, message: str) -> None:
        super().__init__(error_msg=message, preempted=True)


def _on_sigterm(signum: int, frame: Any) -> None:
    armed = _armed_by is not None and _armed_by.is_alive()
    if armed and not _requested.is_set():
        _requested.set()
        return
    if callable(_previous):
        _previous(signum, frame)
    elif _previous != signal.SIG_IGN:  # SIG_DFL (or unknown): terminate as if we were not here
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def install() -> bool:
    """Chain the SIGTERM handler in front of the current one (main thread only; idempotent)."""
    global _previous, _installed
    if _installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    _previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _on_sigterm)
    _installed = True
    return True


def _in_ray_worker() -> bool:
    try:
        import ray

        return ray._private.worker.global_worker.mode == ray.WORKER_MODE
    except Exception:  # noqa: BLE001 -- no Ray, or its internals moved: no handler (the loop warns)
        return False


def arm() -> bool:
    """Called by the training loop's thread: from now on a SIGTERM asks this loop to stop.
    False when no handler could be installed (then SIGTERM ends the worker as Ray does)."""
    global _armed_by
    _requested.clear()
    _armed_by = threading.current_thread()
    return _installed


def requested() -> bool:
    """This process got a SIGTERM while its loop was armed."""
    return _requested.is_set()


def drain_notice() -> bool:
    """A node of this run is being drained for preemption. A barrier: every rank, same steps."""
    import ray.train

    return ray.train.get_preemption_info() is not None


if _in_ray_worker():  # see the module docstring: this runs on the actor's main thread
    install()
