"""A zarr LocalStore whose writes survive a power cut."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

from zarr.storage import LocalStore

from ..faults import write_or_fill
from ..fsutil import fsync_dir

PARTIAL = ".partial"  # suffix of a file being written; open removes strays


class DurableLocalStore(LocalStore):
    """Every file is written to a temporary name, fsynced and renamed, so a file holding
    committed rows is never torn. The directories touched are fsynced by `sync_dirs()`, which
    the writer calls before it commits. (zarr's own LocalStore renames too, but without fsync.)"""

    def __init__(self, root: Path | str, *, read_only: bool = False) -> None:
        super().__init__(root, read_only=read_only)
        self._dirty_dirs: set[str] = set()

    def write_parts(self, key: str, parts) -> None:
        """Write the concatenation of `parts` (bytes-like) as one file, durably and atomically."""
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}{PARTIAL}")
        try:
            with open(tmp, "wb") as f:
                for part in parts:
                    write_or_fill(f, part, path)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._dirty_dirs.add(str(path.parent))

    async def set(self, key: str, value) -> None:
        if not self._is_open:
            await self._open()
        self._check_writable()
        await asyncio.to_thread(self.write_parts, key, [value.as_buffer_like()])

    async def set_if_not_exists(self, key: str, value) -> None:
        if not await self.exists(key):
            await self.set(key, value)

    def set_sync(self, key: str, value) -> None:
        self._check_writable()
        self.write_parts(key, [value.as_buffer_like()])

    def sync_dirs(self) -> None:
        dirs, self._dirty_dirs = self._dirty_dirs, set()
        for d in sorted(dirs):
            fsync_dir(d)
