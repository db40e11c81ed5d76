"""Adopting a finished shard's npy files into the target directory: hard links, no copies."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ...contract import PATH_KEYS


def link_into(src: Path, dst: Path) -> None:
    """`dst` becomes the same file as `src` (copied where the file system cannot link), via a
    temporary name: a crash leaves `dst` absent or whole."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def adopt_files(target, shard: Path, lines: list[dict]) -> list[dict]:
    """Link the files of `lines` (manifest lines of the shard) to the same relative paths in
    the target's directory; the lines need no change. The caller syncs before adopting them."""
    for line in lines:
        for key in PATH_KEYS:
            link_into(shard / line[key], target.out_dir / line[key])
    return lines
