"""A periodic progress line on rank 0: step, loss, tokens/s, ETA. Never prints from every rank."""

from __future__ import annotations

import sys
import time
from typing import Any

from raylm._fmt import duration


def say(line: str) -> None:
    """One line on the worker's stdout, which Ray forwards to the driver once. Not print():
    Ray Train patches print in its workers to log the message *and* echo it when sys.stdout is
    wrapped (as it is in Ray workers), so every progress line reached the terminal twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Progress:
    def __init__(self, total: int, start: int, every_s: float, enabled: bool = True) -> None:
        self.total, self.start, self.every_s, self.enabled = total, start, every_s, enabled
        self.t0 = self.last = time.time()

    def update(self, step: int, m: dict[str, Any]) -> None:
        now = time.time()
        first = step == self.start + 1
        if first:  # the rate is measured from the end of the first step: start-up and compile are not in the ETA
            self.t0 = now
        if not self.enabled or (now - self.last < self.every_s and step != self.total and not first):
            return
        self.last = now
        done = step - self.start - 1
        rate = done / max(now - self.t0, 1e-9)
        pace = f"{rate:.2f} steps/s | ETA {duration((self.total - step) / rate)}" if done > 0 and rate > 0 else "ETA --"
        mfu = f" | mfu {m['mfu'] * 100:.1f}%" if m.get("mfu") else ""
        say(f"[raylm] step {step}/{self.total} | loss {m['train_loss']:.4f} | lr {m['lr']:.2e} | "
            f"{m['tokens_per_s']:,.0f} tok/s{mfu} | {pace}")

    def eval(self, step: int, m: dict[str, Any]) -> None:
        if self.enabled:
            vals = " | ".join(f"{k} {v:.4f}" for k, v in m.items() if k.startswith("val_"))
            say(f"[raylm] eval step {step} | {vals}")
