"""One output directory: feature store + train/val manifests + rejects + journal, kept consistent.

The commit order of a batch is what makes a kill at any instant harmless:
arrays durable -> manifest lines durable -> rejects durable -> ids marked done in the journal.
On open, anything not marked done is dropped from the manifests and recomputed, and torn last
lines are cut off. A write that fails (a full disk) is treated like a kill at that point: the
directory writes nothing more, not even on close, and the next open repairs what it left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

from ..contract import (BASE_KEYS, BATCH_BUDGET, CONDITION_LEN, MANIFESTS, PAIR_FILES, PATH_KEYS,
                        PROGRESS_FILE, REJECTS, SHARDS, STATS)
from ..manifest import Reject, read_output_manifest
from .faults import fault_point
from .features import UtteranceFeatures
from .formats import OWNED as STORE_ENTRIES
from .fsutil import append_durable, write_atomic
from .journal import ConfigMismatch, Journal, TextIdsPending

LOCK = ".lock"
# Everything this tool may have written; --force removes exactly these and nothing else.
OWNED = (*MANIFESTS.values(), REJECTS, STATS, PROGRESS_FILE, *STORE_ENTRIES,
         *PAIR_FILES.values(), "report.json", SHARDS, BATCH_BUDGET,
         ".text_ids_progress.txt", ".text_ids_commit.json", ".text_ids_staging")


def manifest_line(base: dict, text_len: int, code_len: int, location: dict, extras: dict) -> dict:
    """The trainer's 13 keys in the contract's order, then store-specific and extra keys."""
    line = {k: base[k] for k in BASE_KEYS}
    line["text_ids_path"] = location.get("text_ids_path")
    line["text_len"] = text_len
    line["codes_path"] = location.get("codes_path")
    line["code_len"] = code_len
    line["condition_path"] = location.get("condition_path")
    line["condition_len"] = CONDITION_LEN
    line["emo_vec_path"] = location.get("emo_vec_path")
    if all(line[k] is None for k in PATH_KEYS):  # a packed store: records point to rows instead
        for k in PATH_KEYS:
            del line[k]
    line.update({k: v for k, v in location.items() if k not in PATH_KEYS})
    line.update(extras)
    return line


def dumps_line(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


class OutputExists(Exception):
    """The directory holds outputs this tool cannot resume."""


class OutputDir:
    def __init__(self, path: str | os.PathLike, fingerprint: str, store, *, force: bool = False):
        """`store` (a writer of formats.py, or a callable making one after a --force wipe)
        writes features and tells, on resume, whether a manifest line's data is still there."""
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = lock_output(self.path)
        if force:
            wipe(self.path)
        elif Journal.read_fingerprint(self.path) is None and any(
                (self.path / name).exists() for name in OWNED if name != SHARDS):
            # OUT/shards alone is what an array of --shard jobs leaves before its first merge:
            # sub-stores with their own progress files, nothing of OUT's own.
            raise OutputExists(f"{self.path} holds outputs without a progress file; "
                               "choose an empty directory or pass --force to replace them")
        try:
            self.journal = Journal.open(self.path, fingerprint)
        except TextIdsPending:
            raise
        except ConfigMismatch as e:
            raise ConfigMismatch(f"{e}; rerun with the original settings to resume, "
                                 "or pass --force to start over") from None
        self.store = store() if callable(store) else store
        self._held: list[tuple[str, dict]] = []
        self._failed = False  # a write failed (a full disk): write nothing more, not even on close
        self.rejected_lines: set[int] = set()
        self._recover(self.store.record_present)

    # -- resume ---------------------------------------------------------------------------

    def _recover(self, record_present) -> None:
        kept: list[str] = []
        seen: set[str] = set()
        for split, name in MANIFESTS.items():
            lines, torn = read_output_manifest(self.path / name)
            good = []
            for line in lines:
                id_ = line["id"]
                if id_ in seen or id_ not in self.journal.done:
                    continue
                if not record_present(line):
                    continue
                seen.add(id_)
                good.append(line)
            if torn or len(good) != len(lines):
                write_atomic(self.path / name, "".join(map(dumps_line, good)).encode("utf-8"))
            kept.extend(line["id"] for line in good)
        if set(kept) != self.journal.done:
            self.journal.rewrite(kept)
        rejects, torn = read_output_manifest(self.path / REJECTS, require_id=False)
        if torn:
            write_atomic(self.path / REJECTS, "".join(map(dumps_line, rejects)).encode("utf-8"))
        self.rejected_lines = {r["line"] for r in rejects if isinstance(r.get("line"), int)}

    @property
    def done(self) -> set[str]:
        return self.journal.done

    # -- writing --------------------------------------------------------------------------

    def commit(self, entries: list[tuple[str, dict, int, int, dict, UtteranceFeatures]],
               rejects: Iterable[Reject] = ()) -> None:
        """entries: (split, base fields, text_len, code_len, extras, features) per utterance.
        A store may buffer rows (the packed one does, to write each shard once): lines wait
        here until the store says their data is durable."""
        with self._writing():
            self._commit(entries, rejects)

    def _commit(self, entries, rejects) -> None:
        locations = self.store.write([e[5] for e in entries])
        fault_point("after_store")
        for (split, base, text_len, code_len, extras, _), loc in zip(entries, locations):
            self._held.append((split, manifest_line(base, text_len, code_len, loc, extras)))
        ready = 0
        while ready < len(self._held) and self.store.is_durable(self._held[ready][1]):
            ready += 1
        self.adopt(self._held[:ready])
        del self._held[:ready]
        self.add_rejects(rejects)

    def flush(self) -> None:
        """Make buffered rows durable and mark their records done."""
        with self._writing():
            self.store.flush()
            self.adopt(self._held)
            self._held = []

    def adopt(self, lines: list[tuple[str, dict]]) -> None:
        """Take (split, manifest line) pairs whose data is durable in this directory's store
        and mark them done: manifest lines first, then the journal."""
        lines = [(s, line) for s, line in lines if line["id"] not in self.journal.done]
        if not lines:
            return
        with self._writing():
            for split in MANIFESTS:
                text = "".join(dumps_line(line) for s, line in lines if s == split)
                append_durable(self.path / MANIFESTS[split], text.encode("utf-8"))
                fault_point("after_manifest")
            self.journal.mark_done([line["id"] for _, line in lines])
            fault_point("after_journal")

    def add_rejects(self, rejects: Iterable[Reject]) -> None:
        new = [r for r in rejects if r.line not in self.rejected_lines]
        with self._writing():
            append_durable(self.path / REJECTS, "".join(dumps_line(r.to_json()) for r in new).encode())
        self.rejected_lines.update(r.line for r in new)

    @contextlib.contextmanager
    def _writing(self):
        """After a failed write, a retry would append after a torn line or mark a record done
        twice; the directory stays as the failure left it, which the next open repairs."""
        if self._failed:
            raise OutputExists(f"{self.path}: an earlier write failed; rerun to resume")
        try:
            yield
        except BaseException:
            self._failed = True
            raise

    def finalize(self, order: dict[str, int] | None = None) -> None:
        """Rewrite manifests and rejects in source-line order: the bytes no longer depend on
        batching, interruptions or which worker finished first."""
        self.flush()
        def key(line):
            return (order.get(line["id"], 1 << 62) if order else 0, line["id"])
        for name in MANIFESTS.values():
            lines, _ = read_output_manifest(self.path / name)
            lines.sort(key=key)
            write_atomic(self.path / name, "".join(map(dumps_line, lines)).encode("utf-8"))
        rejects, _ = read_output_manifest(self.path / REJECTS, require_id=False)
        rejects.sort(key=lambda r: (r.get("line") or 0))
        write_atomic(self.path / REJECTS, "".join(map(dumps_line, rejects)).encode("utf-8"))

    def close(self) -> None:
        """Flushes what the store buffered (an interrupted run keeps its finished work), unless
        a write failed."""
        try:
            if not self._failed:
                self.flush()
        finally:
            try:
                if not self._failed:  # a writer's close flushes its buffer
                    self.store.close()
            finally:
                self._lock.close()


def lock_output(path: Path):
    """Take `path`'s writer lock (held while the returned file is open), or raise OutputExists."""
    lock = open(path / LOCK, "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise OutputExists(f"{path}: a run is writing to this directory now "
                           f"(it holds {path / LOCK}); wait for it to finish") from None
    return lock


def run_in_progress(path: str | os.PathLike) -> bool:
    """Whether a run holds `path`'s writer lock now (asked without taking it for long)."""
    try:
        lock = open(Path(path) / LOCK, "rb")
    except OSError:
        return False
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def wipe(path: Path) -> None:
    for name in OWNED:
        p = path / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
