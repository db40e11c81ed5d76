"""Small durability helpers shared by the stores: atomic writes and file-system syncs."""

from __future__ import annotations

import ctypes
import errno
import io
import os
import shutil

import numpy as np

from .faults import write_or_fill

_libc = None


def syncfs(path: str | os.PathLike) -> None:
    """Flush every dirty page of the file system holding `path` (one call per batch instead of
    one fsync per file). Falls back to os.sync where syncfs is unavailable."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            if _libc.syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        os.sync()


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def write_atomic(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """Write to `<path>.tmp`, then rename into place: readers never see a partial file."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            write_or_fill(f, data, path)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        # A half-written temporary file would only hold space a full disk needs back.
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    os.replace(tmp, path)
    if fsync:
        fsync_dir(os.path.dirname(path) or ".")


def append_durable(path: str | os.PathLike, data: bytes) -> None:
    """Append and fsync; a crash leaves at most a torn last line, which readers drop."""
    if not data:
        return
    with open(path, "ab") as f:
        write_or_fill(f, data, path)
        f.flush()
        os.fsync(f.fileno())


class DiskFull(Exception):
    """The file system holding an output ran out of space (or of quota)."""


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: str | os.PathLike) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
