"""The staged engine of one process.

    plan.todo --PreparedStream (CPU workers: text ids, decode, resample, fbank)--> Prepared
              --BatchPlanner (consecutive runs of the plan under the budget)--> batches
              --DeviceStage (models; OOM split-and-retry)--> features
              --Writer thread (store, manifests, rejects, journal)--> output

Each arrow is bounded: a window of CPU tasks runs ahead of the device, at most a few batches
wait for the writer. A record that fails anywhere becomes a reject and the flow goes on.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass

from ..batching import (MAX_BATCH_SECONDS, BatchPlanner, Budget, automatic_budget, cpu_ceiling,
                        probe_cuda_ceiling)
from ..contract import BATCH_BUDGET
from ..manifest import Reject
from ..device_kind import device_kind
from ..phase import Phase
from ..prepare import CpuStage, Prepared, PreparedStream
from ..store.fsutil import write_atomic
from ..writer import Writer, entry


@dataclass
class BatchTiming:
    """One batch as the device ran it (for benchmarks and progress)."""

    indices: list[int]          # plan indices
    items: int                  # items that reached the device
    padded_frames: int          # items x longest
    valid_frames: int
    audio_seconds: float
    wait_seconds: float         # waiting for the CPU stage
    model_seconds: float        # in DeviceStage.run: inputs to the device, models, results back
    candidate: int | None       # budget being measured, if any
    start: float                # time.perf_counter() when the device stage took it
    end: float                  # ... and when it had finished it


@dataclass
class Threads:
    workers: int        # CPU worker processes
    model: int          # torch threads of this process (0: leave torch's default)
    niceness: int       # added to the workers' niceness


def choose_threads(device_type: str, workers: int = 0, cores: int | None = None) -> Threads:
    """On a GPU the CPU stage is the bottleneck: every core but one prepares. On a CPU the model
    is (text and decoding are a few percent of the work): it gets every core, and the workers,
    as few as keep it fed, yield to it (niceness) so they run while the model waits instead of
    stalling its threads."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device_type != "cpu":
        return Threads(workers or max(1, min(32, cores - 1)), 0, 0)
    return Threads(workers or max(1, cores // 8), cores, 19)


class InProcess:
    def __init__(self, bundle=None, on_progress=None, on_batch=None, threads: Threads | None = None):
        """`bundle`: a ModelBundle, a callable returning one (called only if there is work), or
        None (load from the job's options). `on_progress(utterances, audio_seconds)` after each
        commit; `on_batch(BatchTiming)` after each batch the device ran. `threads`: instead of
        `choose_threads` (benchmarks compare settings with it)."""
        self.bundle, self.on_progress, self.on_batch = bundle, on_progress, on_batch
        self.threads = threads

    def before_plan(self, job, output) -> None:
        pass

    def _models(self, opts):
        from ..models.bundle import ModelBundle

        if self.bundle is None:
            return ModelBundle.load(opts.models, layer=opts.layer, trust_checkpoint=opts.trust_checkpoint)
        return self.bundle() if callable(self.bundle) else self.bundle

    def execute(self, job, plan, output, summary) -> None:
        opts = job.opts
        kind = device_kind(opts.device)
        threads = self.threads or choose_threads(kind, opts.workers)
        previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
        previous_threads = None
        interrupted = None
        cpu = stage = writer = bar = None
        try:
            todo = [plan.items[i] for i in plan.todo_indices()]
            prepared_text = None
            if opts.prepared_text is not None:
                with Phase(summary, "prepared_text", f"indexed {opts.prepared_text}", opts.progress):
                    attach_prepared_text(todo, opts.prepared_text)
                prepared_text = str(opts.prepared_text)
            # The workers start first: their start-up (an interpreter importing torch, the text
            # grammar, the first items) runs beside this process's own imports and model load.
            cpu = CpuStage(threads.workers, (str(opts.tokenizer), opts.resample, opts.limits,
                                             kind != "cpu", threads.niceness, prepared_text),
                           opts.language)
            stream = PreparedStream(cpu, todo, window=2 * threads.workers + 2)
            import torch

            from ..device import PRECISIONS, DeviceStage, resolve_device

            device = resolve_device(opts.device)
            previous_threads = torch.get_num_threads()
            with Phase(summary, "load_models", f"loaded the models on {device}", opts.progress):
                bundle = self._models(opts).to(device, PRECISIONS[opts.precision])
            if threads.model:
                torch.set_num_threads(threads.model)
            words = ("fixed batches" if opts.batch_size > 0 else
                     "measured device memory" if device.type == "cuda" else "set the batch ceiling")
            with Phase(summary, "budget", words, opts.progress):
                budget, planner = self._planner(opts, plan, output, bundle, device)
            stage = DeviceStage(bundle, device, budget)
            writer, bar = self._writer(opts, plan, output, summary)
            for batch in planner:
                t0 = time.perf_counter()
                results = stream.take(batch.indices)
                wait = time.perf_counter() - t0
                prepared = [r for r in results if isinstance(r, Prepared)]
                rejects = [r for r in results if isinstance(r, Reject)]
                busy, started = stage.busy_seconds, time.perf_counter()
                outputs = stage.run_all(prepared)
                seconds = stage.busy_seconds - busy
                if prepared:
                    planner.measured(batch, seconds, [p.frames for p in prepared])
                entries = []
                for p, result in outputs:
                    rec = plan.items[p.index].record
                    if isinstance(result, str):
                        rejects.append(rec.reject("device", result))
                    else:
                        entries.append(entry(rec, p, result, opts.val_ratio))
                summary.processed += len(entries)
                summary.rejected += len(rejects)
                summary.audio_seconds += sum(p.audio_seconds for p in prepared)
                writer.put(entries, rejects, batch.indices)  # the whole batch commits at once
                if self.on_batch is not None and prepared:
                    longest = max(p.frames for p in prepared)
                    self.on_batch(BatchTiming(batch.indices, len(prepared), len(prepared) * longest,
                                              sum(p.frames for p in prepared),
                                              sum(p.audio_seconds for p in prepared), wait, seconds,
                                              batch.candidate, started, time.perf_counter()))
        except KeyboardInterrupt as e:
            interrupted = e
        finally:
            if previous_threads is not None:
                torch.set_num_threads(previous_threads)
            try:
                if cpu is not None:
                    cpu.close()
                    if opts.prepared_text is not None:
                        summary.text_sources = dict(cpu.counts)
                if writer is not None:
                    writer.finish()  # everything computed is committed; nothing half-done is marked
                    bar.close()
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)
        if stage is not None:
            chosen = planner.chosen_budget()
            summary.batch_budget = None if chosen is None else {
                "cost": chosen.cost, "max_items": chosen.max_items, "searched": planner.record is not None}
            summary.device_seconds = stage.busy_seconds
            summary.stage_seconds.update(device=stage.busy_seconds, write=writer.seconds)
            if stage.padded_frames:
                summary.padding_efficiency = stage.valid_frames / stage.padded_frames
        if interrupted is not None:
            raise interrupted

    def _planner(self, opts, plan, output, bundle, device) -> tuple[Budget, BatchPlanner]:
        """The device stage's budget (its memory ceiling, or a fixed count) and the planner that
        cuts batches under it; the automatic budget's search is recorded in the output."""
        if opts.batch_size > 0:
            budget = Budget(cost=math.inf, max_items=opts.batch_size)
            return budget, BatchPlanner(plan.frames, plan.todo, budget)
        if device.type == "cuda":
            ceiling = probe_cuda_ceiling(bundle.run, device, max(plan.frames), opts.memory_fraction)
        else:
            ceiling = cpu_ceiling()
        budget = automatic_budget(ceiling)
        path = output.path / BATCH_BUDGET
        key = plan_key(plan)
        record = old = _read_json(path)
        if record is None or record.get("plan") != key:
            record = {**BatchPlanner.new_record(plan.frames, ceiling), "plan": key}
            if old and old.get("chosen") is not None and old.get("ladder") == record["ladder"]:
                record["chosen"] = old["chosen"]  # more data, same ladder: keep the measured choice

        def save(rec: dict) -> None:
            write_atomic(path, json.dumps(rec, indent=1).encode())

        return budget, BatchPlanner(plan.frames, plan.todo, budget, record, save,
                                    max_batch_seconds=MAX_BATCH_SECONDS.get(device.type, 30.0))

    def _writer(self, opts, plan, output, summary):
        from tqdm import tqdm

        total = round(plan.audio_seconds, 1)
        bar = tqdm(total=total, unit="s audio", disable=not opts.progress, dynamic_ncols=True,
                   mininterval=1.0, file=sys.stderr, desc="preprocess",
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s audio "
                              "[{elapsed}<{remaining}{postfix}]")
        started = time.perf_counter()
        counts = {"done": 0, "seconds": 0.0}

        def on_commit(batch: list[int]):
            secs = sum(plan.seconds[i] for i in batch)
            counts["done"] += len(batch)
            counts["seconds"] += secs
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.update(min(secs, bar.total - bar.n))
            bar.set_postfix_str(f"{counts['done'] / elapsed:.1f} utt/s, "
                                f"{counts['seconds'] / elapsed:.1f} s audio/s", refresh=False)
            if self.on_progress is not None:
                self.on_progress(len(batch), secs)

        writer = Writer(output, on_commit)
        writer.start()
        return writer, bar


def attach_prepared_text(items, path) -> None:
    """Each item's `text_at`: the offset of its record's line in the prepared-text file `path`
    (None when it has none); its CPU worker reads the line there."""
    from ..text_cache import line_offsets

    offsets = line_offsets(path, {item.record.id for item in items})
    for item in items:
        item.text_at = offsets.get(item.record.id)


def plan_key(plan) -> str:
    """Which plan a recorded budget search belongs to: ids and frames in plan order."""
    import hashlib

    h = hashlib.sha1()
    for item, frames in zip(plan.items, plan.frames):
        h.update(f"{item.record.id}\0{frames}\n".encode("utf-8"))
    return h.hexdigest()


def _read_json(path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during a run; the process exits with 128 + `signum`."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum, frame):
    # The first signal stops the loop; what was computed is committed on the way out. A second
    # one ends the process at once, which the commit order makes as harmless as a kill.
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _exit_now)
    raise Interrupted(signum)


def _exit_now(signum, frame):
    os._exit(128 + signum)


def run_job(opts, bundle=None, provenance: dict | None = None,
            on_progress=None, on_batch=None):
    """Process one manifest into one output directory, in this process -> RunSummary.

    `bundle`: a ModelBundle, or a callable returning one (called only if there is work), so
    several datasets share models loaded once. `on_progress(utterances, audio_seconds)` after
    each committed batch; `on_batch(BatchTiming)` after each batch the device ran."""
    from ..job import Job

    return Job(opts, provenance).run(InProcess(bundle, on_progress=on_progress, on_batch=on_batch))
