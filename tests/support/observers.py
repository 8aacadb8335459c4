"""Loop observers for tests and benchmarks (raylm.trainers.hooks.LoopObserver), named in `trainer.observers`:
a per-rank sample-id ledger (`SampleLog`, read back by testkit.read_sample_log and ledger_headers) and a hold on
each sharded checkpoint write (a window in which a crash leaves a partial checkpoint).

    cfg = observed(cfg, sample_log_spec(ids), write_hold_spec(3.0))      # build_trainer(cfg, ...)
    overrides = [observers_override(sample_log_spec(ids))]               # `raylm train CONFIG OVERRIDE`, jobs.submit

Ray workers import this module as `tests.support.observers`: the repository root must be on their Python path.
Ray puts the driver's working directory there (pytest and the benchmarks run from the root); a driver started
elsewhere, or a Ray job with a working_dir, needs PYTHONPATH=<repo root> in its runtime environment.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

MODULE = "tests.support.observers"  # as the workers import it (tests import it as support.observers)


# ---------------------------------------------------------------- the sample ledger


class SampleLog:
    """Per-rank log of the sample ids each step trained on, in `{base}.rank{r}`.

    Lines are `epoch step id id ...` (step is 0-based, the update the batch went into). On a
    resume from step S the lines of steps >= S are cut: those updates were rolled back with the
    model, and their samples are trained again. So after any number of restarts the file lists
    exactly what the final model was trained on. `# pid=... resumed_from=... node=...` lines let
    a test find (and kill) a worker process, and see on which Ray node it ran.
    """

    def __init__(self, base: str, rank: int, resume_step: int, world: int = 1) -> None:
        path = f"{base}.rank{rank}"
        _cut(path, resume_step)
        if rank == 0:  # ranks a run resumed with fewer workers (elastic) no longer has: rank 0 cuts theirs
            gone = world
            while os.path.exists(f"{base}.rank{gone}"):
                _cut(f"{base}.rank{gone}", resume_step)
                gone += 1
        self._f = open(path, "a", buffering=1)
        self._f.write(f"# pid={os.getpid()} resumed_from={resume_step} node={_node_id()}\n")

    def on_batch(self, epoch: int, step: int, sample_ids: Any) -> None:
        self._f.write(f"{epoch} {step} " + " ".join(map(str, sample_ids.tolist())) + "\n")

    def on_checkpoint_write(self, path: str) -> None:
        pass

    def close(self) -> None:
        self._f.close()


def _cut(path: str, resume_step: int) -> None:
    if os.path.exists(path):
        keep = [l for l in open(path) if l.startswith("#") or int(l.split()[1]) < resume_step]
        with open(path, "w") as f:
            f.writelines(keep)


def _node_id() -> str:
    try:
        import ray

        # Outside Ray (unit tests) the runtime context would start a local Ray.
        return (ray.get_runtime_context().get_node_id() if ray.is_initialized() else None) or "-"
    except Exception:  # noqa: BLE001
        return "-"


def make_sample_log(rank: int, world: int, start_step: int, run_dir: str, *, base: str) -> SampleLog:
    """The factory `sample_log_spec` names."""
    return SampleLog(base, rank, start_step, world)


# ---------------------------------------------------------------- a crash window in each checkpoint write


class WriteHold:
    """Holds each sharded checkpoint write open `seconds` before its metadata (on the coordinating rank)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_batch(self, epoch: int, step: int, sample_ids: Any) -> None:
        pass

    def on_checkpoint_write(self, path: str) -> None:
        time.sleep(self.seconds)

    def close(self) -> None:
        pass


def make_write_hold(rank: int, world: int, start_step: int, run_dir: str, *, seconds: float) -> WriteHold:
    """The factory `write_hold_spec` names."""
    return WriteHold(seconds)


# ---------------------------------------------------------------- naming them in a config


def sample_log_spec(base: str) -> dict[str, Any]:
    """A `trainer.observers` entry: each rank's sample ledger in `{base}.rank{r}`."""
    return {"factory": f"{MODULE}:make_sample_log", "options": {"base": str(base)}}


def write_hold_spec(seconds: float) -> dict[str, Any]:
    """A `trainer.observers` entry: each sharded checkpoint write held open `seconds` before its metadata."""
    return {"factory": f"{MODULE}:make_write_hold", "options": {"seconds": float(seconds)}}


def observed(cfg: Any, *specs: dict[str, Any]) -> Any:
    """`cfg` (a RootConfig) with `specs` after the `trainer.observers` it has."""
    from raylm.config import validate

    raw = cfg.model_dump(mode="json")
    raw["trainer"]["observers"] = [*raw["trainer"]["observers"], *specs]
    return validate(raw, origin="observed")


def observers_override(*specs: dict[str, Any]) -> str:
    """The `trainer.observers=[...]` override that sets `specs` (JSON is YAML: a CLI override or jobs.submit's)."""
    return "trainer.observers=" + json.dumps(list(specs))
