"""preprocess.heap: large blocks come from the heap, not from fresh mappings, once it is set."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import subprocess
import sys
import textwrap

import pytest

from preprocess.heap import keep_freed_memory

GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2")
needs_glibc = pytest.mark.skipif(not GLIBC, reason="mallopt/mallinfo2 are glibc's (2.33 and later)")

# In a fresh process (the setting is process-wide): bytes held in mmapped blocks, before and
# after allocating and touching 64 MiB through numpy, and again after freeing and reallocating.
PROBE = textwrap.dedent("""
    import ctypes, ctypes.util, json, sys
    import numpy as np
    from preprocess.heap import keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = MallInfo2
    took = keep_freed_memory() if sys.argv[1] == "set" else None
    mapped = lambda: libc.mallinfo2().hblkhd
    before = mapped()
    a = np.ones(64 << 20, dtype=np.uint8)
    during = mapped()
    del a
    after_free = libc.mallinfo2()
    print(json.dumps({"took": took, "mapped_growth": during - before,
                      "kept_free": after_free.fordblks, "mapped_after_free": after_free.hblkhd - before}))
""")


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@needs_glibc
def test_large_blocks_come_from_the_heap_and_stay_there():
    default, kept = probe("default"), probe("set")
    # glibc's default: 64 MiB is above the mmap threshold, a mapping of its own, unmapped on free
    assert default["mapped_growth"] >= 64 << 20
    assert default["mapped_after_free"] == 0
    # set: the block comes from the heap, and freeing it keeps it there for the next allocation
    assert kept["took"] is True
    assert kept["mapped_growth"] == 0
    assert kept["kept_free"] >= 64 << 20


@needs_glibc
def test_keep_freed_memory_is_idempotent():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True


def test_the_device_stage_sets_it(monkeypatch):
    """The model stage allocates and frees the largest blocks (attention scores, conv activations)."""
    import torch

    import preprocess.device as device

    calls = []
    monkeypatch.setattr(device, "keep_freed_memory", lambda: calls.append("set") or True)
    device.DeviceStage(bundle=None, device=torch.device("cpu"), budget=None)
    assert calls == ["set"]
