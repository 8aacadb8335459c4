"""Host memory of a training worker: freed buffers go back to the operating system.

glibc's malloc serves a large allocation from its own mapping only above a threshold that it raises
each time such a mapping is freed (up to 32 MiB); after that, buffers of a few MiB come from the
heap, and the heap keeps what is freed there. FSDP's per-block all-gathers and gradient
reduce-scatters allocate and free such buffers block after block, so a CPU worker kept ~0.84 GiB
resident that nothing used (0.74B Llama-style, 2 workers: peak 8.08 GiB, 7.24 GiB with the fixed
threshold and two arenas). On a GPU it bounds the host side of CPU offload and
checkpoint staging the same way. FSDP only (`trainer.fsdp.release_host_memory`): a small model's
per-step activations of a few MiB would each cost a fresh mapping and its page faults (the demo
under DDP: 0.46-0.51 -> 0.69-0.74 s a step); a big model's FSDP step is compute (0.74B: within 7%).
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20


def release_freed_memory() -> bool:
    """Fix glibc's mmap threshold at 1 MiB (no dynamic raise) and cap the arenas at two.
    False (and nothing changed) where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    mallopt(M_ARENA_MAX, 2)
    return ok
