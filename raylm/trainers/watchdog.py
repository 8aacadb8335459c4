"""No silent hang (issue 27): the per-worker progress watchdog, and collective timeouts that say where.

Every Ray Train worker runs one `Watchdog`. The loop marks its progress points (`beat`: a step, a log
step's all-reduce, each evaluation batch, a checkpoint). Once the first step is done (`arm`: compile and
start-up never trip it), a worker with no progress for max(min_stall_s, stall_factor x the longest recent
interval between two beats) writes every thread's Python stack into `<run>/stacks/` with `faulthandler`
(no ptrace, no dashboard: works in a default Kubernetes pod) and says so in one line. What ends the
attempt is the process group's timeout (`trainer.watchdog.collective_timeout_s`, passed to Ray Train's
TorchConfig): a collective that waits that long raises, and `guard` turns that error into a
`CollectiveTimeout` naming the rank, the collective and the step. A worker that is still stuck a
collective timeout after its dump, with no collective to time out (a hang outside the process group),
ends its own process; Ray Train then restarts the run from its last checkpoint as for any failure.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, TypeVar

from raylm.cluster.storage import resolve
from raylm.trainers.config import WatchdogSection

T = TypeVar("T")

# What the backends say when a collective waited past the process group's timeout (gloo: "Timed out waiting
# 8000ms for recv operation to complete"; NCCL: "Watchdog caught collective operation timeout"). A bare
# "timeout" would also claim unrelated errors (a storage read) and mislabel them as collective timeouts.
_TIMEOUT_WORDS = ("timed out waiting", "collective operation timeout")
# Seconds between two looks at the last beat (at most; shorter for the small thresholds of tests).
_POLL_S = 5.0


class CollectiveTimeout(RuntimeError):
    """A collective waited past trainer.watchdog.collective_timeout_s: another rank never joined it."""


@dataclass(frozen=True)
class Beat:
    """A progress point: what the worker was about to do (and the collectives it involves), at which step."""

    what: str
    step: int
    at: float  # the watchdog's clock (monotonic seconds)


def is_collective_timeout(err: BaseException) -> bool:
    """The error a collective raises when the process group's timeout fired."""
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(w in text for w in _TIMEOUT_WORDS)


def _end_worker() -> None:
    os._exit(70)  # EX_SOFTWARE: the actor dies, Ray Train restarts the worker group from the last checkpoint


def publish_to_storage(storage_path: str, run_name: str) -> Callable[[str], str]:
    """Copies a stacks file to `<storage>/<run>/stacks/` (s3://, gs://); returns where, or why it could not."""

    def publish(path: str) -> str:
        import pyarrow.fs as pafs


        try:
            fs, root = resolve(storage_path)
            dest = f"{root}/{run_name}/stacks/{os.path.basename(path)}"
            fs.create_dir(os.path.dirname(dest), recursive=True)
            pafs.copy_files(path, dest, destination_filesystem=fs)
            return f"{storage_path.rstrip('/')}/{run_name}/stacks/{os.path.basename(path)}"
        except Exception as err:  # noqa: BLE001 -- the watchdog thread must not die of a storage error
            return f"(not copied to {storage_path}: {err})"

    return publish


class Watchdog:
    """One worker's progress watchdog (see the module docstring). `check` is the decision, `_watch` the
    thread that applies it; `clock`, `end_worker` and `log` are injection points for tests."""

    def __init__(self, cfg: WatchdogSection, rank: int, world: int, stacks_dir: str,
                 log: Callable[[str], None] = print, end_worker: Callable[[], None] = _end_worker,
                 clock: Callable[[], float] = time.monotonic, publish: Callable[[str], str] | None = None) -> None:
        self.cfg, self.rank, self.world, self.stacks_dir = cfg, rank, world, stacks_dir
        self.log, self.end_worker, self.clock, self.publish = log, end_worker, clock, publish
        self.last: Beat | None = None
        self.armed = False
        self.dumped_at: float | None = None
        self.stacks: list[str] = []  # files written by this worker
        self._intervals: deque[float] = deque(maxlen=64)  # recent seconds between beats, once armed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the loop's side

    def beat(self, what: str, step: int) -> None:
        """Progress: the worker is about to do `what` at `step`."""
        now = self.clock()
        with self._lock:
            if self.armed and self.last is not None:
                self._intervals.append(now - self.last.at)
            self.last, self.dumped_at = Beat(what, step, now), None

    def arm(self) -> None:
        """Start watching (after the first step: compile and start-up are not measured)."""
        with self._lock:
            self.armed = True
            if self.last is not None:
                self.last = Beat(self.last.what, self.last.step, self.clock())

    def paced(self, items: Iterable[T], what: str, step: int) -> Iterator[T]:
        """`items`, with a beat before each (an evaluation's batches)."""
        for k, item in enumerate(items):
            self.beat(f"{what} (batch {k + 1})", step)
            yield item

    @contextlib.contextmanager
    def guard(self) -> Iterator[Watchdog]:
        """Watch while the block runs; a collective timeout inside it becomes a `CollectiveTimeout`."""
        self.start()
        try:
            yield self
        except RuntimeError as err:
            if not is_collective_timeout(err) or isinstance(err, CollectiveTimeout):
                raise
            raise self.timeout_error(err) from err
        finally:
            self.stop()

    def timeout_error(self, err: BaseException) -> CollectiveTimeout:
        """One line, rank and step first: Ray Train keeps only the last 500 characters of a worker's
        traceback, and a sweep's results table the first 300 of that line."""
        where = f"{self.last.what} at step {self.last.step}" if self.last else "start-up"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        first = re.sub(r"^\[[^\]]*\]\s*", "", first)  # gloo's "[.../unbound_buffer.cc:78] " source prefix
        stacks = f"; stacks: {self.stacks[-1]}" if self.stacks else ""
        return CollectiveTimeout(
            f"rank {self.rank} of {self.world} waited more than {self.cfg.collective_timeout_s}s "
            f"(trainer.watchdog.collective_timeout_s) for the other ranks in {where} ({first}){stacks}")

    # ---- the watching side

    def threshold(self) -> float:
        """Seconds without progress before the stacks are dumped."""
        with self._lock:
            recent = max(self._intervals, default=0.0)
        return max(self.cfg.min_stall_s, self.cfg.stall_factor * recent)

    def check(self, now: float) -> Literal["ok", "dump", "end"]:
        """What to do at `now`: nothing, dump the stacks, or end the worker (still stuck long after a dump)."""
        with self._lock:
            last, armed, dumped = self.last, self.armed, self.dumped_at
        if not armed or last is None:
            return "ok"
        if dumped is None:
            return "dump" if now - last.at >= self.threshold() else "ok"
        return "end" if now - dumped >= self.cfg.collective_timeout_s else "ok"

    def dump(self) -> str:
        """Every thread's Python stack into `<stacks_dir>/rank<r>-step<s>-<time>.txt`; one line says where."""
        with self._lock:
            last, self.dumped_at = self.last, self.clock()
        idle = self.dumped_at - last.at if last else 0.0
        os.makedirs(self.stacks_dir, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = os.path.join(self.stacks_dir, f"rank{self.rank}-step{last.step if last else 0}-{stamp}.txt")
        with open(path, "w") as f:
            f.write(f"# rank {self.rank} of {self.world}, pid {os.getpid()}, host {os.uname().nodename}\n"
                    f"# no progress for {idle:.0f}s since: {last.what if last else 'start'} "
                    f"(step {last.step if last else 0})\n\n")
            f.flush()
            faulthandler.dump_traceback(f, all_threads=True)
        self.stacks.append(path)
        # Remote storage: a copy there too (the node's disk may be gone with the pod).
        where = f"{path} and {self.publish(path)}" if self.publish is not None else path
        self.log(f"[raylm] rank {self.rank}: no progress for {idle:.0f}s since {last.what if last else 'start'} "
                 f"at step {last.step if last else 0}; Python stacks of every thread: {where}")
        return path

    def start(self) -> None:
        if self.cfg.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="raylm-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(min(_POLL_S, self.cfg.min_stall_s / 4)):
            action = self.check(self.clock())
            if action == "dump":
                self.dump()
            elif action == "end":
                self.log(f"[raylm] rank {self.rank}: still no progress {self.cfg.collective_timeout_s}s after its "
                         "stack dump and no collective timed out: ending this worker so that the run restarts "
                         "from its last checkpoint")
                self.end_worker()
                return
