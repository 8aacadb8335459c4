"""Side concerns of the loop, kept out of it: the sample-id log, the non-finite loss policy."""

from __future__ import annotations

import os
from typing import Any


class SampleLog:
    """Per-rank log of the sample ids each step trained on (`RAYLM_SAMPLE_LOG` or loop config).

    Lines are `epoch step id id ...` (step is 0-based, the update the batch went into). On a
    resume from step S the lines of steps >= S are cut: those updates were rolled back with the
    model, and their samples are trained again. So after any number of restarts the file lists
    exactly what the final model was trained on. `# pid=... resumed_from=... node=...` lines let
    a test find (and kill) a worker process, and see on which Ray node it ran.
    """

    def __init__(self, base: str | None, rank: int, resume_step: int, world: int = 1) -> None:
        self._f = None
        if not base:
            return
        path = f"{base}.rank{rank}"
        _cut(path, resume_step)
        if rank == 0:  # ranks a run resumed with fewer workers (elastic) no longer has: rank 0 cuts theirs
            gone = world
            while os.path.exists(f"{base}.rank{gone}"):
                _cut(f"{base}.rank{gone}", resume_step)
                gone += 1
        self._f = open(path, "a", buffering=1)
        self._f.write(f"# pid={os.getpid()} resumed_from={resume_step} node={_node_id()}\n")

    def write(self, epoch: int, step: int, sample_ids: Any) -> None:
        if self._f:
            self._f.write(f"{epoch} {step} " + " ".join(map(str, sample_ids.tolist())) + "\n")

    def close(self) -> None:
        if self._f:
            self._f.close()


def _cut(path: str, resume_step: int) -> None:
    if os.path.exists(path):
        keep = [l for l in open(path) if l.startswith("#") or int(l.split()[1]) < resume_step]
        with open(path, "w") as f:
            f.writelines(keep)


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() or "-"
    except Exception:  # noqa: BLE001 -- outside Ray (unit tests)
        return "-"


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
