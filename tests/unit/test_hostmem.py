"""raylm.trainers.hostmem: freed host buffers go back to the OS (glibc), measured in fresh processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from raylm.trainers.hostmem import release_freed_memory

# Freed buffers that glibc keeps by default: one 30 MiB buffer freed raises its mmap threshold to
# 30 MiB, so the 8 MiB buffers after it come from the heap, each followed by a small live allocation
# (the shape of FSDP's per-block all-gathers between longer-lived tensors) that pins the heap's top.
PROBE = """
import sys, torch
if sys.argv[1] == "release":
    from raylm.trainers.hostmem import release_freed_memory
    assert release_freed_memory()
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024
x = torch.empty(30 << 18).fill_(1); del x
before = rss()
big, small = [], []
for _ in range(24):
    big.append(torch.empty(8 << 18).fill_(1))
    small.append(torch.empty(16 << 10).fill_(1))
del big
print(rss() - before)
"""


def _retained_mib(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or not release_freed_memory(), reason="glibc only")
def test_freed_buffers_go_back_to_the_os():
    assert _retained_mib("default") > 100  # 192 MiB allocated: glibc's defaults keep most of it
    assert _retained_mib("release") < 24  # only the small live tensors (1.5 MiB) and noise stay
