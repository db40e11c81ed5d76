"""New text ids for a packed store (`preprocess text-ids`): a staged copy, then an exchange.

A line carries a row, and the store and the manifests cannot change in one rename: a complete
copy of the store with the new text arrays is staged (every other array hard-linked), then
exchanged with features.zarr in one atomic rename (Linux renameat2 RENAME_EXCHANGE), so a reader
opening the store finds the old one or the new one, each consistent with its own commit.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import zarr  # the zarr package

from ..formats import CannotStage
from ..fsutil import fsync_dir
from .durable import PARTIAL, DurableLocalStore
from .layout import zarr_dir
from .reader import read_attributes
from .writer import ZarrWriter

GENERATION = "text_ids_generation"  # group attribute: how many times the text ids were replaced


def exchange_paths(a: str | os.PathLike, b: str | os.PathLike) -> None:
    """Swap two paths of one file system atomically (Linux renameat2 with RENAME_EXCHANGE:
    ext4, xfs, btrfs, tmpfs, ...). Raises OSError where the system or file system cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available on this system")
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot exchange {a} and {b} atomically: {os.strerror(err)}")


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file under `src` into `dst` (copying where linking fails), durably."""
    for root, _, files in os.walk(src):
        target = dst / Path(root).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in sorted(files):
            if name.endswith(PARTIAL):
                continue
            try:
                os.link(Path(root) / name, target / name)
            except OSError:
                shutil.copyfile(Path(root) / name, target / name)
                with open(target / name, "rb+") as f:
                    os.fsync(f.fileno())
        fsync_dir(target)


def stage_text_ids(store: ZarrWriter, replace: Mapping[int, np.ndarray],
                   staging_dir: str | os.PathLike, attributes: dict | None = None) -> Path:
    """Write `staging_dir`/features.zarr: a complete copy of `store` in which row r holds the
    text ids replace[r] (rows not in `replace` keep theirs), for `swap_with`.

    Only text_ids and text_offsets are written anew; every file of the other arrays is
    hard-linked (the same inode: ids, codes and latents stay byte for byte; copied where the
    file system cannot link). The copy's `commit` counts the new text ids, and `attributes` are
    added to its group. Durable when this returns; a rerun removes a partial copy first.
    `store` is not modified."""
    store._open()
    store.flush()
    rows = store._commit["rows"]
    bad = [r for r in replace if not 0 <= r < rows]
    if bad:
        raise IndexError(f"rows {bad[:5]} are not among the {rows} committed rows of {store.path}")
    dest = zarr_dir(staging_dir)
    if dest.resolve() == store.path.resolve():
        raise ValueError("stage_text_ids needs a staging directory other than the store's")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)

    offsets = np.asarray(store._arrays["text_offsets"][: rows + 1], np.int64)
    old = np.asarray(store._arrays["text_ids"][: int(offsets[-1])], np.int32)
    pieces, lens = [], np.zeros(rows, np.int64)
    for r in range(rows):
        ids = replace.get(r)
        piece = old[offsets[r]:offsets[r + 1]] if ids is None else \
            np.asarray(ids).reshape(-1).astype(np.int32)
        pieces.append(piece)
        lens[r] = piece.size
    flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)

    cond = store.specs["condition"].row_shape
    copy = ZarrWriter(dest.parent, store.latent_dtype, condition_len=cond[0], dim=cond[1])
    copy._store = DurableLocalStore(dest)
    commit = {**store._commit, "text_ids": int(flat.size)}
    # `commit` keeps its place among the attributes; its value is the copy's
    attrs = {**store._group.attrs.asdict(), **(attributes or {}), "commit": commit}
    copy._group = zarr.create_group(copy._store, attributes=attrs)
    for name in ("text_ids", "text_offsets"):
        copy._arrays[name] = copy._open_array(copy.specs[name])
    copy._put("text_ids", 0, flat)
    copy._put("text_offsets", 1, np.cumsum(lens))
    copy._store.sync_dirs()
    for name in store.specs:
        if name not in ("text_ids", "text_offsets"):
            link_tree(store.path / name, dest / name)
    fsync_dir(dest)
    fsync_dir(dest.parent)
    return dest


def swap_with(store: ZarrWriter, staging_dir: str | os.PathLike) -> None:
    """Exchange features.zarr and `staging_dir`/features.zarr in one atomic rename. Afterwards
    the old store lies in `staging_dir`, and `store` reopens (lazily) on the new one."""
    if store._pending:
        raise RuntimeError(f"{store.path}: buffered rows must be flushed before a swap")
    other = zarr_dir(staging_dir)
    exchange_paths(store.path, other)
    fsync_dir(store.out_dir)
    fsync_dir(other.parent)
    store.reset()


def generation(path: Path) -> int | None:
    """How many times the text ids of the store in `path` were replaced; None: no store."""
    attrs = read_attributes(path)
    return None if attrs is None else int(attrs.get(GENERATION, 0))


class ZarrTextIds:
    """The text-ids steps of text_ids.py for a packed store (see TextIdsStaging in formats.py)."""

    def __init__(self, out: Path, writer: ZarrWriter, staging: Path):
        self.out, self.writer, self.staging = out, writer, staging
        self.rows: dict[int, np.ndarray] = {}

    def check_supported(self) -> None:
        """Fail before any work where the file system cannot exchange two directories."""
        made = not self.staging.exists()
        a, b = self.staging / "probe.a", self.staging / "probe.b"
        a.mkdir(parents=True, exist_ok=True)
        b.mkdir(exist_ok=True)
        try:
            exchange_paths(a, b)
        except OSError as e:
            raise CannotStage(
                f"{self.out}: text-ids on a zarr output needs an atomic directory exchange "
                f"(Linux renameat2 RENAME_EXCHANGE) and this file system has none ({e}); "
                "export it to npy first (preprocess export)") from None
        finally:
            a.rmdir()
            b.rmdir()
            if made:
                self.staging.rmdir()

    def next_generation(self, lines) -> int:
        """Store copies are numbered: the next one is above the store in use."""
        return (generation(self.out) or 0) + 1

    def begin(self, generation: int) -> None:
        pass  # nothing is written until `prepare`

    def stage(self, generation: int, lines: list[dict], arrays: list[np.ndarray],
              usable: list[bool]) -> None:
        pass  # the ids are kept in the progress file until `prepare`

    def relocate(self, generation: int, line: dict, ids: np.ndarray) -> dict:
        self.rows[line["row"]] = ids
        return dict(line)  # the line keeps its row

    def prepare(self, generation: int, kept: list[dict], new_ids: dict) -> None:
        stage_text_ids(self.writer, self.rows, self.staging, {GENERATION: generation})

    def switch(self, generation_: int) -> bool:
        if generation(self.out) == generation_:
            return False  # switched before a crash
        if generation(self.staging) != generation_:
            raise CannotStage(f"{self.out}: the staged store of an interrupted text-ids commit is "
                              f"missing from {self.staging.name}; the store is as it was, the "
                              "manifests may not be")
        swap_with(self.writer, self.staging)
        return True

    def cleanup(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)  # the old store, after the switch
