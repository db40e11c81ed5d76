"""The progress file: which ids are done, under which configuration.

`.preprocessing_progress.txt` holds a fingerprint line, then one id per line. An id is appended
only after its arrays and its manifest line are durable, so the journal never claims more than
the store holds. A torn last line (a crash mid-append) is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..contract import PROGRESS_FILE
from .fsutil import append_durable, write_atomic

_HEADER = "# fingerprint "
PENDING = "text-ids-pending:"  # set by `preprocess text-ids` while it swaps the text ids


def fingerprint_of(provenance: dict) -> str:
    """What must match for a rerun to resume: the bytes of every input file and the options
    that change outputs (not paths, devices, batch sizes or worker counts)."""
    keyed = {"files": {k: v["sha256"] for k, v in provenance["files"].items()},
             "options": provenance["options"]}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()


class ConfigMismatch(Exception):
    """The output directory was made with settings that would give different outputs."""


class TextIdsPending(ConfigMismatch):
    """`preprocess text-ids` is between swapping text ids and rewriting the manifests."""


class Journal:
    def __init__(self, path: Path, fingerprint: str, done: set[str]):
        self.path = path
        self.fingerprint = fingerprint
        self.done = done

    @classmethod
    def open(cls, out_dir: str | os.PathLike, fingerprint: str) -> "Journal":
        path = Path(out_dir) / PROGRESS_FILE
        if not path.exists():
            write_atomic(path, f"{_HEADER}{fingerprint}\n".encode())
            return cls(path, fingerprint, set())
        data = path.read_bytes().decode("utf-8", errors="replace")
        lines = data.split("\n")
        if not lines[0].startswith(_HEADER):
            raise ConfigMismatch(f"{path} was not written by this tool (no fingerprint line)")
        found = lines[0][len(_HEADER):].strip()
        if found != fingerprint and found.startswith(PENDING):
            raise TextIdsPending(f"{path.parent}: an interrupted `preprocess text-ids` run is "
                                 "being committed; rerun that command to finish it first")
        if found != fingerprint:
            raise ConfigMismatch(
                f"{path.parent} holds outputs made with other settings "
                f"(fingerprint {found[:12]}, now {fingerprint[:12]})")
        # The last element is '' after a final newline, or a torn id: both are dropped.
        ids = [line for line in lines[1:-1] if line]
        journal = cls(path, fingerprint, set(ids))
        if lines[-1]:
            # A torn id stays out of the file too: the next append would run on from it.
            journal.rewrite(ids)
        return journal

    @staticmethod
    def read_fingerprint(out_dir: str | os.PathLike) -> str | None:
        path = Path(out_dir) / PROGRESS_FILE
        if not path.exists():
            return None
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline()
        return first[len(_HEADER):].strip() if first.startswith(_HEADER) else None

    def ids_in_order(self) -> list[str]:
        """The ids marked done, in the order they were marked."""
        lines = self.path.read_bytes().decode("utf-8", errors="replace").split("\n")
        return [line for line in lines[1:-1] if line]

    @staticmethod
    def read_done(out_dir: str | os.PathLike) -> set[str]:
        """The ids marked done in `out_dir`, read without opening it (no lock, no recovery):
        what another process may be appending to; a torn last line is dropped."""
        path = Path(out_dir) / PROGRESS_FILE
        try:
            lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
        except FileNotFoundError:
            return set()
        return {line for line in lines[1:-1] if line} if lines[0].startswith(_HEADER) else set()

    def mark_done(self, ids: list[str]) -> None:
        append_durable(self.path, "".join(f"{i}\n" for i in ids).encode("utf-8"))
        self.done.update(ids)

    def rewrite(self, ids: list[str]) -> None:
        """Replace the id list (after recovery dropped ids whose data went missing)."""
        text = f"{_HEADER}{self.fingerprint}\n" + "".join(f"{i}\n" for i in ids)
        write_atomic(self.path, text.encode("utf-8"))
        self.done = set(ids)
