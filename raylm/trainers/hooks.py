"""Side concerns of the loop, kept out of it: the sample-id log, the non-finite loss policy."""

from __future__ import annotations

import math
import os
from typing import Any


class SampleLog:
    """Per-rank log of the sample ids each step trained on (`RAYLM_SAMPLE_LOG` or loop config).

    Lines are `epoch step id id ...` (step is 0-based, the update the batch went into). On a
    resume from step S the lines of steps >= S are cut: those updates were rolled back with the
    model, and their samples are trained again. So after any number of restarts the file lists
    exactly what the final model was trained on. `# pid=... resumed_from=...` lines let a test
    find (and kill) a worker process.
    """

    def __init__(self, base: str | None, rank: int, resume_step: int) -> None:
        self._f = None
        if not base:
            return
        path = f"{base}.rank{rank}"
        if os.path.exists(path):
            keep = [l for l in open(path) if l.startswith("#") or int(l.split()[1]) < resume_step]
            with open(path, "w") as f:
                f.writelines(keep)
        self._f = open(path, "a", buffering=1)
        self._f.write(f"# pid={os.getpid()} resumed_from={resume_step}\n")

    def write(self, epoch: int, step: int, sample_ids: Any) -> None:
        if self._f:
            self._f.write(f"{epoch} {step} " + " ".join(map(str, sample_ids.tolist())) + "\n")

    def close(self) -> None:
        if self._f:
            self._f.close()


def read_sample_log(base: str, world: int) -> dict[int, list[tuple[int, int, list[int]]]]:
    """{rank: [(epoch, step, ids)]} from the per-rank files written by SampleLog."""
    out: dict[int, list[tuple[int, int, list[int]]]] = {}
    for r in range(world):
        rows = []
        for line in open(f"{base}.rank{r}"):
            if not line.startswith("#"):
                e, s, *ids = line.split()
                rows.append((int(e), int(s), [int(i) for i in ids]))
        out[r] = rows
    return out


def nonfinite_action(loss: float, gnorm: float, step: int, policy: str, scaler_on: bool,
                     last_checkpoint: str | None) -> str | None:
    """None when the step is fine; "skip" when it is not and the policy skips; raises on "stop".

    Under fp16 the grad scaler owns overflowing gradients (it skips the step and lowers the
    scale), so only a non-finite loss counts there.
    """
    bad = not math.isfinite(loss) or (not scaler_on and not math.isfinite(gnorm))
    if not bad:
        return None
    if policy == "skip":
        return "skip"
    where = last_checkpoint or "none yet (the run would start from scratch)"
    raise FloatingPointError(f"loss {loss}, grad norm {gnorm} at step {step}; last good checkpoint: {where}. "
                             "Lower trainer.lr, or set trainer.nan_policy=skip to skip such steps.")
