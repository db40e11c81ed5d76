"""Keep freed memory in the process heap instead of handing it back to the kernel.

glibc serves an allocation above its mmap threshold (128 KiB, adapting up to 32 MiB) with a
fresh mapping and unmaps it on free, and it trims the top of the heap once enough is free. The
model stage allocates and frees tensors of tens to hundreds of MiB per layer (a conv activation
of 1 MiB per Conformer frame, [B, 16, T, T] attention scores), so each allocation came back as
fresh pages that the kernel faults in and zeroes again. With a high threshold and no trimming,
freed blocks are reused as they are. Measured at full size on a 2-core CPU, batch 1, 2 threads
(`tools/bench.py --mode allocator`, docs/PERFORMANCE.md): 12.4 M minor faults for twelve runs of
5-15 s became 0.63 M, and a 5 s, 10 s and 15 s utterance ran 1.31x, 1.23x and 1.76x faster.
Results do not change (every operation is the same); the resident size stays near its
high-water mark instead (+0.8 GiB there).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Allocations up to this size come from the heap (mallopt takes an int).
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = (1 << 31) - 1

_done = False


def keep_freed_memory() -> bool:
    """Set the process's allocator to reuse freed memory; True where that took (glibc only).

    Process-wide and kept for the process's life; calling it again does nothing.
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
