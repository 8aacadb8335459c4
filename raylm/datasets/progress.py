"""The progress line of `prepare`: units, bytes, rows/s, tokens/s and an ETA from bytes left."""

from __future__ import annotations

import logging
import time

from raylm._fmt import duration

log = logging.getLogger("raylm.datasets.prepare")


class Progress:
    """Fed one stats row per finished unit; logs a line at most every `every` seconds."""

    def __init__(self, total_bytes: int, done_bytes: int, units: int, every: float) -> None:
        self.total, self.base, self.units, self.every = total_bytes, done_bytes, units, every
        self.t0 = self.last = time.time()
        self.bytes = self.rows = self.tokens = self.finished = 0

    def update(self, row: dict) -> None:
        self.finished += 1
        self.bytes += row["bytes"]
        self.rows += row["rows_in"]
        self.tokens += row["tokens_out"]
        now = time.time()
        if self.every and now - self.last >= self.every:
            self.last = now
            log.info("prepare: %s", self.line(now))

    def line(self, now: float | None = None) -> str:
        dt = max(1e-6, (now or time.time()) - self.t0)
        left = self.total - self.base - self.bytes
        eta = f", ETA {duration(left / (self.bytes / dt))}" if self.bytes and left > 0 else ""
        return (f"{self.finished}/{self.units} units, {(self.base + self.bytes) / 2**20:,.0f}/{self.total / 2**20:,.0f} MiB, "
                f"{self.rows / dt:,.0f} rows/s, {self.tokens / dt:,.0f} tokens/s{eta}")

    def finish(self) -> None:
        if self.every:
            log.info("prepare: done, %s", self.line())
