"""The CPU stage: per record, text ids, decode, resample and (on CPU) fbank, in worker processes.

    WorkItem --clean, normalise, tokenise--> text ids (limits checked)
             --decode, mono--> wave --resample--> 16 kHz --fbank, stack--> [T, 160] features

With a prepared-text file (--prepared-text, preprocess/text_cache.py) a worker takes a record's
ids from it instead of normalising, when the file's line was made from the same cleaned text and
language; the text pass (preprocess/text_pass.py) runs the text half alone, in the same pool.

A record that fails becomes a Reject. Workers run one torch thread each and ignore SIGINT (the
parent decides how to stop); a worker that dies is restarted and costs only the record it held.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .heap import keep_freed_memory
from .manifest import Reject
from .options import Limits
from .plan import WorkItem

CHUNK = 32  # records per CPU task


@dataclass
class Prepared:
    index: int
    text: str               # cleaned, not normalised (what the manifest stores)
    text_ids: np.ndarray    # [text_len] int32
    frames: int             # T: stacked frames = code_len
    valid: int              # L: valid frames
    audio_seconds: float
    features: np.ndarray | None = None  # [T, 160] (CPU front end)
    wave: np.ndarray | None = None      # 16 kHz samples (device front end)


class TextResult(NamedTuple):
    """A record's text half: what the manifest stores and what the model reads."""

    text: str               # cleaned, not normalised
    language: str | None    # the code it was tokenised with: --language, else the record's own
    ids: list[int] | None   # None: rejected
    reject: str | None      # why there are no ids (stage "text")


TEXT_EMPTY = "text is empty after cleaning"
TEXT_NO_IDS = "text tokenises to nothing"

_worker: dict = {}


def init_worker(tokenizer: str, resample: str, limits: Limits, device_fbank: bool,
                niceness: int = 0, prepared_text: str | None = None) -> None:
    import torch

    torch.set_num_threads(1)
    keep_freed_memory()  # the resample chain and fbank allocate and free large arrays per item
    if niceness:
        # Sharing cores with the model's threads: yield to them, so a busy worker never stalls
        # a model thread at its barrier; the worker then runs while the model waits.
        os.nice(niceness)
    init_text_worker(tokenizer)
    if prepared_text is not None:
        from .text_cache import PreparedTextReader
        _worker["prepared_text"] = PreparedTextReader(prepared_text)
    _worker.update(resample=resample, limits=limits, device_fbank=device_fbank)


def init_text_worker(tokenizer: str) -> None:
    """A worker of the text pass (and the text half of `init_worker`): no torch, no audio."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides how to stop
    exit_with_parent()
    from .text import TextTokenizer
    _worker.update(tokenizer=TextTokenizer(tokenizer), counts=Counter())


def exit_with_parent() -> None:
    """A killed parent (SIGKILL, OOM killer) cannot stop its workers: they watch it instead,
    so no orphan keeps decoding, or holds the parent's stdout open."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch():
        parent.join()
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _counted(results: list) -> tuple[list, dict]:
    """A chunk's results and what its records' text came from (CpuStage.counts adds them up)."""
    counts = dict(_worker["counts"])
    _worker["counts"].clear()
    return results, counts


def prepare_chunk(items: list[WorkItem], language: str | None) -> tuple[list[Prepared | Reject], dict]:
    return _counted([prepare_one(item, language) for item in items])


def prepare_text_chunk(items: list[WorkItem], language: str | None) -> tuple[list[TextResult | Reject], dict]:
    """The text pass's task: the text half of `prepare_one` (it reads no prepared-text file). A
    record whose text raises becomes a Reject of stage "prepare"."""
    from .text import clean_text

    out = []
    for item in items:
        rec = item.record
        _planted_crash(rec.id)
        try:
            out.append(make_text(clean_text(rec.text), language or rec.language))
        except Exception as e:
            out.append(rec.reject("prepare", f"{type(e).__name__}: {e}"))
    return _counted(out)


def _planted_crash(record_id: str) -> None:
    if os.environ.get("PREPROCESS_FAULT") == f"prepare:{record_id}":
        os._exit(1)  # lets tests kill a worker the way a crashing decoder would


def make_text(text: str, language: str | None) -> TextResult:
    """Cleaned text -> its ids (normalise, tokenise), or the text stage's reason for none."""
    if not text:
        return TextResult(text, language, None, TEXT_EMPTY)
    ids = _worker["tokenizer"].encode(text, language)
    _worker["counts"]["text_made"] += 1
    if not ids:
        return TextResult(text, language, None, TEXT_NO_IDS)
    return TextResult(text, language, ids, None)


def text_of(item: WorkItem, language: str | None) -> TextResult:
    """The record's text half: from the prepared-text file when it holds a line made from the
    same cleaned text and language, else made here. Counted: text_prepared (from the file),
    text_missing (no line), text_changed (a line for other text or language), text_made."""
    from .text import clean_text

    rec = item.record
    text, code = clean_text(rec.text), language or rec.language
    reader, counts = _worker.get("prepared_text"), _worker["counts"]
    if reader is not None:
        entry = None if item.text_at is None else reader.lookup(item.text_at, rec.id, text, code)
        if entry is not None:
            counts["text_prepared"] += 1
            return TextResult(text, code, entry.get("ids"), entry.get("reject"))
        counts["text_missing" if item.text_at is None else "text_changed"] += 1
    return make_text(text, code)


def prepare_one(item: WorkItem, language: str | None) -> Prepared | Reject:
    from .audio import AudioError, load_audio, to_16k
    from .frontend import fbank, frame_counts, stack_frames

    rec, lim = item.record, _worker["limits"]
    _planted_crash(rec.id)

    reject = rec.reject

    try:
        text, _, ids, why = text_of(item, language)
        if why is not None:
            return reject("text", why)
        if len(ids) > lim.max_text_len:
            return reject("limits", f"{len(ids)} text ids exceed the limit {lim.max_text_len}")
        try:
            wave, sr = load_audio(item.audio)
        except AudioError as e:
            return reject("audio", str(e))
        seconds = len(wave) / sr
        if seconds < lim.min_duration or seconds > lim.max_duration:
            return reject("limits", f"duration {seconds:.3f} s outside "
                                    f"[{lim.min_duration}, {lim.max_duration}] s")
        wave16 = to_16k(wave, sr, _worker["resample"])
        _, frames, valid = frame_counts(len(wave16))
        if (valid - 1) // 2 < 1:
            return reject("limits", f"audio too short for the conditioning encoders "
                                    f"({len(wave16)} samples at 16 kHz)")
        if frames > lim.max_code_len:
            return reject("limits", f"{frames} codes exceed the limit {lim.max_code_len}")
        prepared = Prepared(item.index, text, np.asarray(ids, dtype=np.int32), frames, valid, seconds)
        if _worker["device_fbank"]:
            prepared.wave = wave16
        else:
            prepared.features = stack_frames(fbank(wave16))
        return prepared
    except Exception as e:  # a bug or an unforeseen input must not stop the corpus
        return reject("prepare", f"{type(e).__name__}: {e}")


def _ping() -> bool:
    return True


class CpuStage:
    """A pool of worker processes for `prepare_chunk` (or the text pass's `prepare_text_chunk`,
    with `init_text_worker`). A worker that dies (a decoder crash, the kernel's OOM killer) breaks
    the pool: it is restarted, the chunks in flight are resubmitted, and the chunk that was
    running is redone one record at a time, so only the record that kills a worker again
    becomes a reject. Nothing hangs on a lost task. `counts` adds up what the chunks returned
    report about their text (see `text_of`)."""

    def __init__(self, workers: int, initargs: tuple, language: str | None,
                 task=prepare_chunk, initializer=init_worker):
        self.workers, self.initargs, self.language = workers, initargs, language
        self.task, self.initializer = task, initializer
        self.counts: Counter = Counter()
        self.tasks: list[list] = []  # [items, future] still pending
        # OpenBLAS starts a thread per core whatever torch is told, and numpy's fbank then spends
        # ~3x the CPU for the same bits (measured): workers get one, from their first import.
        self._blas = os.environ.get("OPENBLAS_NUM_THREADS")
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
        self._start()
        self._ping = self.pool.submit(_ping)  # checked at the first result, not waited for here

    def _check_started(self) -> None:
        if self._ping is None:
            return
        try:
            self._ping.result()
        except BrokenProcessPool:
            raise RuntimeError("the CPU worker processes failed to start (see the error above)") from None
        self._ping = None

    def _start(self) -> None:
        self.pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                        initializer=self.initializer, initargs=self.initargs)

    def _restart(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._start()
        for task in self.tasks:
            task[1] = self.pool.submit(self.task, task[0], self.language)

    def submit(self, items: list[WorkItem]) -> list:
        task = [items, self.pool.submit(self.task, items, self.language)]
        self.tasks.append(task)
        return task

    def result(self, task: list) -> list[Prepared | Reject]:
        self._check_started()
        try:
            out, counts = task[1].result()
        except BrokenProcessPool:
            self.tasks.remove(task)
            self._restart()
            return [r for item in task[0] for r in self._alone(item)]
        self.tasks.remove(task)
        self.counts.update(counts)
        return out

    def _alone(self, item: WorkItem) -> list[Prepared | Reject]:
        try:
            out, counts = self.pool.submit(self.task, [item], self.language).result()
            self.counts.update(counts)
            return out
        except BrokenProcessPool:
            self._restart()
            return [item.record.reject("prepare", "the worker process died while preparing this record")]

    def close(self) -> None:
        if self._blas is None:
            os.environ.pop("OPENBLAS_NUM_THREADS", None)
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = self._blas
        procs = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:  # do not wait for chunks nobody will use
            proc.terminate()


class PreparedStream:
    """The CPU stage's results in plan order. Chunks of the items to do are submitted ahead (at
    most `window` in flight, the first ones small so the device starts early) and read back as
    the device asks for them; batches are consecutive runs of the plan, so this order is theirs."""

    def __init__(self, cpu: CpuStage, items: list[WorkItem], window: int):
        self.cpu, self.window = cpu, window
        self.chunks: deque[list[WorkItem]] = deque()
        start, size = 0, 1
        while start < len(items):
            self.chunks.append(items[start:start + size])
            start += size
            size = min(CHUNK, size * 2)
        self.tasks: deque[list] = deque()
        self.ready: dict[int, Prepared | Reject] = {}
        self._fill()

    def _fill(self) -> None:
        while self.chunks and len(self.tasks) < self.window:
            self.tasks.append(self.cpu.submit(self.chunks.popleft()))

    def take(self, indices: list[int]) -> list[Prepared | Reject]:
        """Results for these plan indices (which must come in plan order), waiting as needed."""
        out = []
        for i in indices:
            while i not in self.ready:
                task = self.tasks.popleft()
                for item, result in zip(task[0], self.cpu.result(task)):
                    self.ready[item.index] = result
                self._fill()
            out.append(self.ready.pop(i))
        self._fill()
        return out
