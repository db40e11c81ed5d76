"""Planted faults for tests: a kill between two durable steps, or a disk that fills mid-write.

    PREPROCESS_FAULT=<point>:<n>     die (as a SIGKILL would) the n-th time `point` is passed
    PREPROCESS_FAULT=disk_full:<n>   the n-th durable write of this process writes half of its
                                     bytes, then fails with ENOSPC, as a full file system does
"""

from __future__ import annotations

import errno
import os

_counts: dict[str, int] = {}
DISK_FULL = "disk_full"


def _nth(name: str) -> bool:
    spec = os.environ.get("PREPROCESS_FAULT")
    if not spec or spec.partition(":")[0] != name:
        return False
    _counts[name] = _counts.get(name, 0) + 1
    return _counts[name] == int(spec.partition(":")[2] or 1)


def fault_point(name: str) -> None:
    """Die here when PREPROCESS_FAULT=<name>:<n> and this is the n-th time."""
    if _nth(name):
        os._exit(137)


def write_or_fill(f, data, path) -> None:
    """`f.write(data)`, except on the planted disk_full write: half the bytes, then ENOSPC."""
    if _nth(DISK_FULL):
        view = memoryview(data).cast("B")
        f.write(view[: len(view) // 2])
        f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
    f.write(data)
