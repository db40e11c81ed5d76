"""New text ids for the npy layout (`preprocess text-ids`): files at new paths, old ones deleted
last.

New ids never overwrite the ones in use: generation N goes to text_ids/g<N>/<xx>/<id>.npy, N
above every generation the manifests point to. Each manifest (and pair file) is then replaced by
one rename, so at every instant every line points to ids of its own text_len.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np

from ...contract import MANIFESTS, PAIR_FILES
from ...manifest import read_output_manifest
from ..fsutil import npy_bytes, syncfs, write_atomic
from .layout import fanout

_GENERATION = re.compile(r"^text_ids/g(\d+)/")


def generation_path(generation: int, id_: str) -> str:
    return f"text_ids/g{generation}/{fanout(id_)}/{id_}.npy"


class NpyTextIds:
    """The text-ids steps of text_ids.py for the npy layout (see TextIdsStaging in formats.py)."""

    def __init__(self, out: Path, writer, staging: Path):
        self.out = out

    def check_supported(self) -> None:
        pass  # renames and links: any POSIX file system

    def next_generation(self, lines) -> int:
        used = [int(m.group(1)) for _, line in lines
                if isinstance(line.get("text_ids_path"), str)
                and (m := _GENERATION.match(line["text_ids_path"]))]
        return max(used, default=0) + 1

    def begin(self, generation: int) -> None:
        """Files of an abandoned attempt at this generation go."""
        shutil.rmtree(self.out / "text_ids" / f"g{generation}", ignore_errors=True)

    def _write(self, generation: int, pairs) -> None:
        written = False
        for id_, ids in pairs:
            target = self.out / generation_path(generation, id_)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, npy_bytes(np.asarray(ids, np.int32)), fsync=False)
            written = True
        if written:
            syncfs(self.out)

    def stage(self, generation: int, lines: list[dict], arrays: list[np.ndarray],
              usable: list[bool]) -> None:
        """Durable when this returns, before the progress file lists the chunk."""
        self._write(generation, [(line["id"], ids) for line, ids, ok in zip(lines, arrays, usable) if ok])

    def relocate(self, generation: int, line: dict, ids: np.ndarray) -> dict:
        new = dict(line)  # same keys, same order
        new["text_ids_path"] = generation_path(generation, line["id"])
        return new

    def prepare(self, generation: int, kept: list[dict], new_ids: dict) -> None:
        """Every kept record's file in place (rewritten from the progress if it went missing)."""
        self._write(generation, [(line["id"], new_ids[line["id"]]) for line in kept
                                 if not (self.out / line["text_ids_path"]).is_file()])

    def switch(self, generation: int) -> bool:
        return False  # the manifests' renames are the switch

    def cleanup(self) -> None:
        """Delete every file under text_ids/ that no manifest or pair file points to: the ids
        the regeneration replaced (and orphans of interrupted runs, recomputed if needed)."""
        out = self.out
        referenced = set()
        for name, key in [(n, "text_ids_path") for n in MANIFESTS.values()] + \
                         [(n, "target_text_ids_path") for n in PAIR_FILES.values()]:
            for line in read_output_manifest(out / name)[0]:
                p = line.get(key)
                if isinstance(p, str) and p:
                    referenced.add(os.path.normpath(os.path.relpath(p, out) if os.path.isabs(p) else p))
        root = out / "text_ids"
        if not root.is_dir():
            return
        for dirpath, _, files in os.walk(root, topdown=False):
            for f in files:
                full = os.path.join(dirpath, f)
                if os.path.normpath(os.path.relpath(full, out)) not in referenced:
                    os.unlink(full)
            if dirpath != str(root) and not os.listdir(dirpath):
                os.rmdir(dirpath)
        syncfs(out)
