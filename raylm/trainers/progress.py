"""A periodic progress line on rank 0: step, loss, tokens/s, ETA. Never prints from every rank."""

from __future__ import annotations

import time
from typing import Any


def _fmt_s(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    def __init__(self, total: int, start: int, every_s: float, enabled: bool = True) -> None:
        self.total, self.start, self.every_s, self.enabled = total, start, every_s, enabled
        self.t0 = self.last = time.time()

    def update(self, step: int, m: dict[str, Any]) -> None:
        now = time.time()
        if not self.enabled or (now - self.last < self.every_s and step != self.total and step != self.start + 1):
            return
        self.last = now
        rate = (step - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else 0
        mfu = f" | mfu {m['mfu'] * 100:.1f}%" if m.get("mfu") else ""
        print(f"[raylm] step {step}/{self.total} | loss {m['train_loss']:.4f} | lr {m['lr']:.2e} | "
              f"{m['tokens_per_s']:,.0f} tok/s{mfu} | {rate:.2f} steps/s | ETA {_fmt_s(eta)}", flush=True)

    def eval(self, step: int, m: dict[str, Any]) -> None:
        if self.enabled:
            vals = " | ".join(f"{k} {v:.4f}" for k, v in m.items() if k.startswith("val_"))
            print(f"[raylm] eval step {step} | {vals}", flush=True)
