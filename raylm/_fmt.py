"""Formatting shared by the progress lines of `prepare` and of training."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """`4m07s`, or `2h05m` from an hour on (an ETA needs no more precision)."""
    s = int(max(seconds, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
