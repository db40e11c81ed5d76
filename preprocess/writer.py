"""The writer: commits finished batches in order on its own thread, so file I/O overlaps the device.

A commit is all or nothing per batch (OutputDir.commit's order: arrays, manifest lines, rejects,
journal); an error on the writer thread stops the job at the next batch it is handed.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np

from .manifest import Record, is_val
from .prepare import Prepared
from .store.dataset import OutputDir
from .store.features import UtteranceFeatures


class Writer(threading.Thread):
    """Commits batches in order on its own thread, so file I/O overlaps the device."""

    def __init__(self, output: OutputDir, on_commit):
        super().__init__(daemon=True, name="writer")
        self.output, self.on_commit = output, on_commit
        self.jobs: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if self.error is not None:
                continue
            entries, rejects, batch = job
            try:
                t0 = time.perf_counter()
                self.output.commit(entries, rejects)
                self.seconds += time.perf_counter() - t0
                self.on_commit(batch)
            except BaseException as e:
                self.error = e

    def put(self, entries, rejects, batch) -> None:
        if self.error is not None:
            raise self.error
        self.jobs.put((entries, rejects, batch))

    def finish(self) -> None:
        self.jobs.put(None)
        self.join()
        if self.error is not None:
            raise self.error


def entry(rec: Record, p: Prepared, result, val_ratio: float):
    """What OutputDir.commit takes for one utterance: (split, base fields, text_len, code_len,
    extras, features)."""
    codes, condition, emo_vec = result
    split = "val" if is_val(rec.id, val_ratio) else "train"
    base = {"id": rec.id, "audio_path": rec.audio, "text": p.text, "speaker": rec.speaker,
            "language": rec.language, "duration": rec.duration}
    extras = {"audio_duration": round(p.audio_seconds, 6), "valid_frames": p.valid}
    feats = UtteranceFeatures(rec.id, p.text_ids, np.asarray(codes, dtype=np.int32),
                              np.asarray(condition, dtype=np.float32),
                              np.asarray(emo_vec, dtype=np.float32))
    return (split, base, int(p.text_ids.size), int(feats.codes.size), extras, feats)
