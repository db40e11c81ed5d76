"""`tools/bench.py --mode ray`: what the Ray engine costs per batch, and how its CPU stage scales.

  handoff     the same prepared batches handed to an actor that does nothing with them: per
              batch, Ray's scheduling and the transfer of the prepared inputs (object store,
              then the actor) and of its small result back; sequential, one batch in flight.
  engines     the same fixed batches end to end through the in-process engine and through the
              Ray engine with one actor: per batch after the first, the time between the ends of
              consecutive batches minus the batch's model seconds is what the engine adds
              around the models (waiting for inputs, commit, scheduling). The difference of
              the two engines' medians, divided by 0.05, is the model time per batch above which
              the Ray engine's extra cost is below 5 %.
  cpu_scaling the CPU stage alone as Ray tasks (chunks of `prepare_task`) on local clusters of
              1, 2, ... CPU workers (up to --ray-cpus, default: the cores), after a warm-up
              pass: audio seconds per second, and the speed-up over one worker.

Local clusters only: a multi-node figure needs a cluster (`docs/SCALING.md`).
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchlib import HostLoad, ensure_models, generate_corpus, model_paths

from preprocess.batching import BatchPlanner, Budget
from preprocess.executors.inprocess import InProcess
from preprocess.executors.ray_engine import CHUNK, WORKER_ENV, RayEngine, prepare_task
from preprocess.job import Job
from preprocess.options import JobOptions
from preprocess.plan import make_plan


def _ms(values: list[float]) -> dict:
    if not values:
        return {"batches": 0}
    return {"batches": len(values), "mean_ms": round(1000 * statistics.fmean(values), 2),
            "median_ms": round(1000 * statistics.median(values), 2),
            "max_ms": round(1000 * max(values), 2)}


def handoff(ray, plan, batches, initargs) -> dict:
    prepare = ray.remote(num_cpus=1)(prepare_task)

    @ray.remote(num_cpus=0)
    class Sink:
        def take(self, records, *chunks):
            return sum(len(c) for c in chunks)

    sink = Sink.remote()
    ray.get(sink.take.remote([]))
    prepared = []
    for indices in batches:
        items = [plan.items[i] for i in indices]
        refs = [prepare.remote(items[s:s + CHUNK], initargs, None) for s in range(0, len(items), CHUNK)]
        ray.wait(refs, num_returns=len(refs))
        prepared.append((indices, refs))
    nbytes = []
    for _, refs in prepared:
        chunks = ray.get(refs)
        nbytes.append(sum(p.features.nbytes for c in chunks for p in c if getattr(p, "features", None) is not None))
    seconds = []
    for indices, refs in prepared:
        records = [(i, plan.items[i].record) for i in indices]
        t0 = time.perf_counter()
        ray.get(sink.take.remote(records, *refs))
        seconds.append(time.perf_counter() - t0)
    ray.kill(sink)
    return {**_ms(seconds), "mean_input_mib": round(statistics.fmean(nbytes) / (1 << 20), 3)}


def _periods(ends: list[float], model: list[float]) -> list[float]:
    """Per batch after the first: time since the previous batch ended, minus its model time."""
    return [max(0.0, ends[k] - ends[k - 1] - model[k]) for k in range(1, len(ends))]


def engines(opts: JobOptions, work: Path) -> dict:
    inproc, ray_batches = [], []
    Job(options_at(opts, work / "inprocess")).run(InProcess(on_batch=inproc.append))
    Job(options_at(opts, work / "ray")).run(RayEngine(actors=1, on_batch=ray_batches.append))
    ray_batches.sort(key=lambda b: b.finished)
    a = _periods([b.end for b in inproc], [b.model_seconds for b in inproc])
    b = _periods([r.finished for r in ray_batches], [r.model_seconds for r in ray_batches])
    report = {"in_process": {**_ms(a), "model_mean_ms": round(1000 * statistics.fmean(
                  [t.model_seconds for t in inproc]), 2)},
              "ray_one_actor": {**_ms(b), "model_mean_ms": round(1000 * statistics.fmean(
                  [r.model_seconds for r in ray_batches]), 2)}}
    if a and b:
        # Medians: on a shared machine a few batches wait seconds for the CPU stage (or for
        # other users); the median is the engine's cost per batch, the mean adds those waits.
        extra = statistics.median(b) - statistics.median(a)
        report["extra_per_batch_ms"] = round(1000 * extra, 2)
        report["extra_per_batch_mean_ms"] = round(1000 * (statistics.fmean(b) - statistics.fmean(a)), 2)
        report["batch_seconds_for_5_percent"] = round(max(extra, 0.0) / 0.05, 3)
    return report


def options_at(opts: JobOptions, out: Path) -> JobOptions:
    from dataclasses import replace

    shutil.rmtree(out, ignore_errors=True)
    return replace(opts, output_dir=out)


def cpu_scaling(ray, plan, initargs, max_cpus: int) -> dict:
    items = [plan.items[i] for i in plan.todo_indices()]
    audio = sum(plan.seconds[i] for i in plan.todo_indices())
    chunk = max(1, min(CHUNK, math.ceil(len(items) / (4 * max_cpus))))
    out = {"audio_seconds": round(audio, 2), "chunk": chunk, "workers": {}}

    def warm(items, initargs) -> None:   # nested: Ray ships it by value (tools/ is no package)
        prepare_task(items, initargs, None)
        time.sleep(2.0)
    for cpus in range(1, max_cpus + 1):
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": WORKER_ENV})
        try:
            prepare = ray.remote(num_cpus=1)(prepare_task)
            # Warm-up: one task per worker, each held long enough that no worker takes two, so
            # every worker has imported the CPU stage and loaded the tokenizer before timing.
            ray.get([ray.remote(num_cpus=1)(warm).remote(items[:1], initargs) for _ in range(cpus)])
            t0 = time.perf_counter()
            ray.get([prepare.remote(items[s:s + chunk], initargs, None) for s in range(0, len(items), chunk)])
            seconds = time.perf_counter() - t0
        finally:
            ray.shutdown()
        out["workers"][cpus] = {"seconds": round(seconds, 3), "audio_s_per_s": round(audio / seconds, 1)}
    one = out["workers"][1]["audio_s_per_s"]
    for v in out["workers"].values():
        v["speedup"] = round(v["audio_s_per_s"] / one, 2)
    return out


def ray_benchmark(args) -> dict:
    import ray

    load = HostLoad()
    report: dict = {"load_average_start": list(os.getloadavg())}
    work = args.out or Path(tempfile.mkdtemp(prefix="preprocess-bench-ray-"))
    models_dir = args.models or Path(tempfile.gettempdir()) / f"preprocess-bench-models-{args.size}"
    try:
        models_dir, _ = ensure_models(models_dir, args.size, args.seed)
        if args.manifest is not None:
            manifest = args.manifest
        else:
            shutil.rmtree(work / "corpus", ignore_errors=True)
            manifest, _ = generate_corpus(work / "corpus", args.generate, args.min_seconds,
                                          args.max_seconds, args.seed, args.spread)
        batch_size = args.batch_size or 2
        opts = JobOptions(manifest=manifest, output_dir=work / "store", models=model_paths(models_dir),
                          tokenizer=models_dir / "bpe.model", batch_size=batch_size, workers=args.workers,
                          device="cpu", progress=False)
        plan = make_plan(opts, set(), set())
        batches = [b.indices for b in BatchPlanner(plan.frames, plan.todo, Budget(math.inf, max_items=batch_size))]
        initargs = (str(opts.tokenizer), opts.resample, opts.limits, False, 0)
        report["corpus"] = {"utterances": len(plan.items), "audio_seconds": round(sum(plan.seconds), 2),
                            "batches": len(batches), "batch_size": batch_size}
        ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": WORKER_ENV})
        try:
            report["handoff"] = handoff(ray, plan, batches, initargs)
            report["engines"] = engines(opts, work)
        finally:
            ray.shutdown()
        report["cpu_scaling"] = cpu_scaling(ray, plan, initargs, args.ray_cpus or os.cpu_count() or 1)
        report["load"] = load.report()
        report["load_average_end"] = list(os.getloadavg())
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    return report
