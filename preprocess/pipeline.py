"""The staged engine of one process.

    plan (read, skip done, probe durations, sort) -> CPU workers (text ids, decode, resample,
    fbank) -> device loop (batches under a frame budget, OOM split-and-retry) -> writer thread
    (store, manifests, rejects, journal)

Each arrow is bounded: a window of CPU tasks runs ahead of the device, at most a few batches
wait for the writer. A record that fails anywhere becomes a reject and the flow goes on.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import __version__
from .contract import MAX_CODE_LEN, MAX_TEXT_LEN
from .batching import Budget, batch_cost, frames_for_seconds, take_batch
from .manifest import Record, Reject, is_val, read_manifest, resolve_audio
from .store.dataset import OutputDir
from .provenance import fingerprint_of
from .store.npy import UtteranceFeatures
from .store.stats import write_stats

if TYPE_CHECKING:  # the CPU workers import this module; they need no model code
    from .models.bundle import ModelPaths

CHUNK = 32  # records per CPU task


@dataclass
class Limits:
    min_duration: float = 0.1     # seconds; below ~75 ms the Conformer has no valid frame
    max_duration: float = 36.0    # seconds; 36.3 s is the trainer's 1816-code limit
    max_text_len: int = MAX_TEXT_LEN
    max_code_len: int = MAX_CODE_LEN


@dataclass
class JobOptions:
    manifest: Path
    output_dir: Path
    models: ModelPaths
    tokenizer: Path
    language: str | None = None
    val_ratio: float = 0.01
    batch_size: int = 0           # 0: automatic frame budget
    workers: int = 0              # 0: automatic
    device: str = "auto"
    precision: str = "fp32"
    max_samples: int | None = None
    limits: Limits = field(default_factory=Limits)
    resample: str = "reference"
    format: str = "npy"
    latent_dtype: str = "float32"
    layer: int = 17
    force: bool = False
    memory_fraction: float = 0.9
    progress: bool = True
    only_ids: frozenset[str] | None = None  # this process's share of the ids (one GPU of several)


@dataclass
class RunSummary:
    output_dir: Path
    processed: int = 0
    skipped_done: int = 0
    rejected: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    device_seconds: float = 0.0
    padding_efficiency: float = 1.0
    stage_seconds: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    def text(self) -> str:
        rate = self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0
        s = self.stats
        return (f"Processed {self.processed} utterances ({self.audio_seconds / 3600:.2f} h of audio) "
                f"in {self.wall_seconds:.1f} s, {rate:.1f} s of audio per second; "
                f"{self.skipped_done} already done were skipped and {self.rejected} were rejected "
                f"this run (see rejects.jsonl). The output {self.output_dir} now holds "
                f"{s.get('train', 0)} train and {s.get('val', 0)} val utterances "
                f"({sum(s.get('hours', {}).values()):.2f} h), {s.get('rejected', 0)} rejects in all; "
                f"padding efficiency {self.padding_efficiency:.2f}.")


# -- CPU stage (runs in worker processes) ---------------------------------------------------

@dataclass
class WorkItem:
    index: int
    record: Record
    audio_path: str


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


_worker: dict = {}


def init_worker(tokenizer: str, resample: str, limits: Limits, device_fbank: bool) -> None:
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides how to stop
    _exit_with_parent()
    from .text import TextTokenizer
    _worker.update(tokenizer=TextTokenizer(tokenizer), resample=resample, limits=limits,
                   device_fbank=device_fbank)


def _exit_with_parent() -> None:
    """A killed parent (SIGKILL, OOM killer) cannot stop its workers: they watch it instead,
    so no orphan keeps decoding, or holds the parent's stdout open."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch():
        parent.join()
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def prepare_chunk(items: list[WorkItem], language: str | None) -> list[Prepared | Reject]:
    return [prepare_one(item, language) for item in items]


def prepare_one(item: WorkItem, language: str | None) -> Prepared | Reject:
    from .audio import AudioError, load_audio, to_16k
    from .frontend import fbank, frame_counts, stack_frames
    from .text import clean_text

    rec, lim = item.record, _worker["limits"]
    if os.environ.get("PREPROCESS_FAULT") == f"prepare:{rec.id}":
        os._exit(1)  # lets tests kill a worker the way a crashing decoder would

    def reject(stage, reason):
        return Reject(rec.line, rec.id, stage, reason)

    try:
        text = clean_text(rec.text)
        if not text:
            return reject("text", "text is empty after cleaning")
        ids = _worker["tokenizer"].encode(text, language or rec.language)
        if not ids:
            return reject("text", "text tokenises to nothing")
        if len(ids) > lim.max_text_len:
            return reject("limits", f"{len(ids)} text ids exceed the limit {lim.max_text_len}")
        try:
            wave, sr = load_audio(item.audio_path)
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
    """A pool of worker processes for `prepare_chunk`. A worker that dies (a decoder crash, the
    kernel's OOM killer) breaks the pool: it is restarted, the chunks in flight are resubmitted,
    and the chunk that was running is redone one record at a time, so only the record that
    kills a worker again becomes a reject. Nothing hangs on a lost task."""

    def __init__(self, workers: int, initargs: tuple, language: str | None):
        self.workers, self.initargs, self.language = workers, initargs, language
        self.tasks: list[list] = []  # [items, future] still pending
        self._start()
        try:
            self.pool.submit(_ping).result()
        except BrokenProcessPool:
            raise RuntimeError("the CPU worker processes failed to start (see the error above)") from None

    def _start(self) -> None:
        self.pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                        initializer=init_worker, initargs=self.initargs)

    def _restart(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._start()
        for task in self.tasks:
            task[1] = self.pool.submit(prepare_chunk, task[0], self.language)

    def submit(self, items: list[WorkItem]) -> list:
        task = [items, self.pool.submit(prepare_chunk, items, self.language)]
        self.tasks.append(task)
        return task

    def result(self, task: list) -> list[Prepared | Reject]:
        try:
            out = task[1].result()
        except BrokenProcessPool:
            self.tasks.remove(task)
            self._restart()
            return [r for item in task[0] for r in self._alone(item)]
        self.tasks.remove(task)
        return out

    def _alone(self, item: WorkItem) -> list[Prepared | Reject]:
        try:
            return self.pool.submit(prepare_chunk, [item], self.language).result()
        except BrokenProcessPool:
            self._restart()
            return [Reject(item.record.line, item.record.id, "prepare",
                           "the worker process died while preparing this record")]

    def close(self) -> None:
        procs = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:  # do not wait for chunks nobody will use
            proc.terminate()


# -- planning -------------------------------------------------------------------------------

@dataclass
class Plan:
    """Every plannable item, longest first, done ones included: batches are formed over all of
    them, so a resumed run computes each remaining batch with the same members (and, on CPU,
    the same bytes) as an uninterrupted run."""

    items: list[WorkItem]
    frames: list[int]               # expected stacked frames per item (from the audio header)
    seconds: list[float]
    todo: list[bool]                # to be processed in this run
    rejects: list[Reject]           # found while planning, not reported before
    skipped_done: int
    line_of: dict[str, int]         # id -> source line, for the final manifest order

    @property
    def audio_seconds(self) -> float:
        return float(sum(s for s, t in zip(self.seconds, self.todo) if t))

    def batches(self, budget: Budget) -> list[list[int]]:
        """Indices to process, grouped into the batches of a full run under `budget`."""
        out, start = [], 0
        while start < len(self.frames):
            n = take_batch(self.frames, start, budget)
            todo = [i for i in range(start, start + n) if self.todo[i]]
            if todo:
                out.append(todo)
            start += n
        return out


def make_plan(opts: JobOptions, done: set[str], rejected_lines: set[int]) -> Plan:
    """Read the manifest, probe durations from audio headers, sort longest first."""
    from .audio import AudioError, probe_duration

    manifest_dir = opts.manifest.resolve().parent
    records, rejects, line_of = [], [], {}
    for item in read_manifest(opts.manifest):
        if isinstance(item, Reject):
            # With a share of the ids, the launching process reports manifest-level rejects.
            if opts.only_ids is None and item.line not in rejected_lines:
                rejects.append(item)
            continue
        if opts.only_ids is not None and item.id not in opts.only_ids:
            continue
        line_of[item.id] = item.line
        records.append(item)

    def probe(rec: Record):
        path = resolve_audio(rec.audio, manifest_dir)
        if path is None:
            return f"audio file not found: {rec.audio} (looked in {manifest_dir} and {Path.cwd()})"
        try:
            return str(path), probe_duration(path)
        except AudioError as e:
            return str(e)

    with ThreadPoolExecutor(16) as pool:
        probed = list(pool.map(probe, records))
    kept, lim = [], opts.limits
    for rec, result in zip(records, probed):
        reason = stage = None
        if isinstance(result, str):
            stage, reason = "audio", result
        elif not lim.min_duration <= result[1] <= lim.max_duration:
            stage, reason = "limits", (f"duration {result[1]:.3f} s outside "
                                       f"[{lim.min_duration}, {lim.max_duration}] s")
        if reason is None:
            kept.append((rec, *result))
        elif rec.id not in done and rec.line not in rejected_lines:
            rejects.append(Reject(rec.line, rec.id, stage, reason))
    # Longest first: the largest batches (and any OOM) come at the start, not hours in.
    kept.sort(key=lambda k: (-k[2], k[0].line))
    items = [WorkItem(i, rec, path) for i, (rec, path, _) in enumerate(kept)]
    seconds = [dur for _, _, dur in kept]
    todo = [rec.id not in done and rec.line not in rejected_lines for rec, _, _ in kept]
    if opts.max_samples is not None:
        left = opts.max_samples
        for i, t in enumerate(todo):
            todo[i] = t and left > 0
            left -= todo[i]
    skipped = sum(1 for rec in records if rec.id in done)
    frames = [max(1, frames_for_seconds(d)) for d in seconds]
    return Plan(items, frames, seconds, todo, rejects, skipped, line_of)


# -- device stage ---------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: no CUDA device is available")
    return dev


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


class DeviceStage:
    """Turns prepared items into features; splits a batch that runs out of memory."""

    def __init__(self, bundle, device: torch.device, budget: Budget):
        self.bundle, self.device, self.budget = bundle, device, budget
        self.busy_seconds = 0.0
        self.valid_frames = 0
        self.padded_frames = 0
        self._fbank = None
        if device.type != "cpu":
            from .frontend import DeviceFbank
            self._fbank = DeviceFbank(device)

    def _inputs(self, batch: list[Prepared]):
        if self._fbank is not None:
            waves = [torch.from_numpy(p.wave).to(self.device, non_blocking=True) for p in batch]
            return self._fbank(waves)
        from .frontend import collate
        return collate([p.features for p in batch], [p.valid for p in batch])

    def run_all(self, items: list[Prepared]) -> list[tuple[Prepared, object]]:
        """Run a planned batch, in pieces if the budget shrank (an OOM) since it was planned."""
        items = sorted(items, key=lambda p: -p.frames)
        if math.isinf(self.budget.ceiling):
            return self.run(items) if items else []
        out, start = [], 0
        while start < len(items):
            n = take_batch([p.frames for p in items], start, self.budget)
            out += self.run(items[start:start + n])
            start += n
        return out

    def run(self, batch: list[Prepared]) -> list[tuple[Prepared, object]]:
        """[(item, (codes, condition, emo_vec) or Reject reason str)] in batch order."""
        try:
            t0 = time.perf_counter()
            feats, frames, valid = self._inputs(batch)
            out = self.bundle.run(feats.to(self.device), frames.to(self.device), valid.to(self.device))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.busy_seconds += time.perf_counter() - t0
        except Exception as e:
            if not is_oom(e):
                raise
            self._free()
            padded = max(p.frames for p in batch)
            self.budget.shrink(batch_cost(len(batch), padded))
            if len(batch) == 1:
                return [(batch[0], f"out of device memory even alone ({padded} frames)")]
            half = len(batch) // 2
            return self.run(batch[:half]) + self.run(batch[half:])
        self.budget.succeeded()
        self.valid_frames += sum(p.frames for p in batch)
        self.padded_frames += len(batch) * max(p.frames for p in batch)
        return [(p, (out.codes[i], out.condition[i], out.emo_vec[i])) for i, p in enumerate(batch)]

    def _free(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def auto_budget(opts: JobOptions, bundle, device: torch.device, max_frames: int) -> Budget:
    if opts.batch_size > 0:
        return Budget(cost=math.inf, max_items=opts.batch_size)
    if device.type == "cuda":
        from .models.bundle import probe_batch_budget
        cost = probe_batch_budget(bundle, device, max_frames, opts.memory_fraction)
        return Budget(cost=cost)
    return Budget(cost=cpu_budget())


CPU_BYTES_PER_COST = 256 * 1024  # estimated activation bytes per frame of the full-size set


def cpu_budget() -> float:
    """On CPU, memory is rarely the limit: a batch only needs enough rows to keep every core's
    matrix products busy (about 2,048 frames per core), capped by a quarter of the RAM.
    Fixed for a machine, so the batches of a resumed run are those of an uninterrupted one."""
    cores = os.cpu_count() or 1
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        ram = 8 << 30
    return float(max(batch_cost(1, 1024), min(batch_cost(1, 2048 * cores), ram / 4 / CPU_BYTES_PER_COST)))


# -- writer ---------------------------------------------------------------------------------

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


# -- the job --------------------------------------------------------------------------------

def output_options(opts: JobOptions) -> dict:
    """The options that change outputs; changing any of them needs --force."""
    return {"language": opts.language, "val_ratio": opts.val_ratio, "resample": opts.resample,
            "layer": opts.layer, "precision": opts.precision, "format": opts.format,
            "latent_dtype": opts.latent_dtype, **asdict(opts.limits)}


def open_store(path: Path, fmt: str = "npy", latent_dtype: str = "float32"):
    from .store.formats import open_writer

    return open_writer(path, fmt, latent_dtype)


def run_job(opts: JobOptions, bundle=None, provenance: dict | None = None,
            on_progress=None) -> RunSummary:
    """Process one manifest into one output directory.

    `bundle`: a ModelBundle, or a callable returning one (called only if there is work), so
    several datasets share models loaded once. `provenance`: precomputed `describe_inputs`.
    `on_progress(utterances, audio_seconds)` is called after each committed batch."""
    from .provenance import describe_inputs
    from .models.bundle import ModelBundle

    t_start = time.perf_counter()
    if provenance is None:
        provenance = describe_inputs(opts.models, opts.tokenizer, opts.output_dir)
    provenance = {**provenance, "options": output_options(opts)}
    output = OutputDir(opts.output_dir, fingerprint_of(provenance),
                       lambda: open_store(opts.output_dir, opts.format, opts.latent_dtype),
                       force=opts.force)
    summary = RunSummary(opts.output_dir)
    try:
        t0 = time.perf_counter()
        plan = make_plan(opts, output.done, output.rejected_lines)
        summary.stage_seconds["plan"] = time.perf_counter() - t0
        summary.skipped_done = plan.skipped_done
        output.add_rejects(plan.rejects)
        summary.rejected += len(plan.rejects)
        if any(plan.todo):
            device = resolve_device(opts.device)
            t0 = time.perf_counter()
            if bundle is None:
                bundle = ModelBundle.load(opts.models, layer=opts.layer)
            elif callable(bundle):
                bundle = bundle()
            bundle.to(device, PRECISIONS[opts.precision])
            summary.stage_seconds["load_models"] = time.perf_counter() - t0
            budget = auto_budget(opts, bundle, device, max(plan.frames))
            from .text import TextNormalizer
            TextNormalizer().load("zh")  # compiles the grammar cache once, before workers need it
            _process(opts, plan, bundle, device, budget, output, summary, on_progress)
        output.finalize(plan.line_of)
        summary.stats = write_stats(opts.output_dir, provenance,
                                    run={"processed": summary.processed,
                                         "skipped_done": summary.skipped_done,
                                         "rejected": summary.rejected,
                                         "version": __version__})
    finally:
        output.close()
    summary.wall_seconds = time.perf_counter() - t_start
    return summary


def resolve_workers(n: int) -> int:
    if n > 0:
        return n
    return max(1, min(32, (os.cpu_count() or 2) - 1))


def _process(opts, plan: Plan, bundle, device, budget: Budget, output: OutputDir,
             summary: RunSummary, on_progress=None) -> None:
    from tqdm import tqdm

    stage = DeviceStage(bundle, device, budget)
    batches = deque(plan.batches(budget))
    bar = tqdm(total=round(plan.audio_seconds, 1), unit="s audio", disable=not opts.progress,
               dynamic_ncols=True, mininterval=1.0, file=sys.stderr, desc="preprocess")
    started = time.perf_counter()
    counts = {"done": 0, "seconds": 0.0}

    def on_commit(batch: list[int]):
        secs = sum(plan.seconds[i] for i in batch)
        counts["done"] += len(batch)
        counts["seconds"] += secs
        elapsed = max(time.perf_counter() - started, 1e-9)
        bar.update(min(secs, bar.total - bar.n))
        bar.set_postfix_str(f"{counts['done'] / elapsed:.1f} utt/s, "
                            f"{counts['seconds'] / elapsed:.0f} h audio/h", refresh=False)
        if on_progress is not None:
            on_progress(len(batch), secs)

    writer = Writer(output, on_commit)
    writer.start()
    workers = resolve_workers(opts.workers)
    if device.type == "cpu":
        # The workers hold a core each; more model threads than free cores thrash (measured:
        # one 8x460-frame batch took 1.6 s on 1 thread, 10.8 s on 2 with a core taken).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    pending: deque = deque()  # (batch indices, [CPU task per chunk])
    window = 2 * workers + 2  # chunks queued ahead for the CPU workers
    interrupted = False
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    cpu = None
    try:
        cpu = CpuStage(workers, (str(opts.tokenizer), opts.resample, opts.limits,
                                 device.type != "cpu"), opts.language)

        def submit() -> None:
            while batches and (not pending or len(cpu.tasks) < window):
                batch = batches.popleft()
                pending.append((batch, [cpu.submit([plan.items[i] for i in batch[j:j + CHUNK]])
                                        for j in range(0, len(batch), CHUNK)]))

        submit()
        while pending:
            batch, tasks = pending.popleft()
            prepared: list[Prepared] = []
            rejects: list[Reject] = []
            for task in tasks:
                for r in cpu.result(task):
                    (rejects if isinstance(r, Reject) else prepared).append(r)
            submit()
            entries = []
            for p, result in stage.run_all(prepared):
                rec = plan.items[p.index].record
                if isinstance(result, str):
                    rejects.append(Reject(rec.line, rec.id, "device", result))
                else:
                    entries.append(_entry(opts, rec, p, result))
            summary.processed += len(entries)
            summary.rejected += len(rejects)
            summary.audio_seconds += sum(p.audio_seconds for p in prepared)
            writer.put(entries, rejects, batch)  # the whole batch commits at once
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        if cpu is not None:
            cpu.close()
        writer.finish()  # everything computed is committed; nothing half-done is marked
        bar.close()
    summary.device_seconds = stage.busy_seconds
    summary.stage_seconds.update(device=stage.busy_seconds, write=writer.seconds)
    if stage.padded_frames:
        summary.padding_efficiency = stage.valid_frames / stage.padded_frames
    if interrupted:
        raise KeyboardInterrupt


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _entry(opts: JobOptions, rec: Record, p: Prepared, result):
    codes, condition, emo_vec = result
    split = "val" if is_val(rec.id, opts.val_ratio) else "train"
    base = {"id": rec.id, "audio_path": rec.audio, "text": p.text, "speaker": rec.speaker,
            "language": rec.language, "duration": rec.duration}
    extras = {"audio_duration": round(p.audio_seconds, 6), "valid_frames": p.valid}
    feats = UtteranceFeatures(rec.id, p.text_ids, np.asarray(codes, dtype=np.int32),
                              np.asarray(condition, dtype=np.float32),
                              np.asarray(emo_vec, dtype=np.float32))
    return (split, base, int(p.text_ids.size), int(feats.codes.size), extras, feats)
