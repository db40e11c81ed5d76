"""`tools/bench.py --mode end-to-end|model-only|both|plan`: the job's throughput.

  end-to-end  `run_job` on the manifest: decode, resample, fbank, text ids, models, store; every
              batch is timed through the job's `on_batch` hook (BatchTiming).
  model-only  the same batches through `ModelBundle.run` on inputs prepared beforehand (decode,
              resample, fbank and collate happen outside the timing; one untimed warm-up batch).
  both        the two, then pipeline efficiency = end-to-end rate / model-only rate.
  plan        padding efficiency of the planned batches only (no audio decoded, no models).

Time line of an end-to-end run (batches in the order the device runs them, longest first):
  warm-up     from the start (hashing model files for provenance) to the end of the first
              batch: plan (manifest, audio headers), model load, budget ceiling, worker
              start-up, the CPU stage of the first batch and the first batch itself;
  window      from the end of the first batch to the end of the last one;
  tail        the rest: the last batch's write, manifests, stats.json.
  device_busy_fraction = model seconds of batches 2..n / window.
  pipeline_efficiency = model-only seconds of batches 2..n / window (= end-to-end rate over
  model-only rate on the same batches); pipeline_efficiency_overall = model-only seconds of all
  batches / end-to-end wall seconds (warm-up included).

`--precision-compare P` runs the model-only batches in fp32 and in P and reports how many codes
differ and the absolute differences of condition and emo_vec.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchlib import (MIB, HostLoad, TreeRss, checkpoint_parameters, commit_gaps, draw_durations,
                      ensure_models, generate_corpus, model_paths, model_sizes, peak_rss_mib)

from preprocess.batching import BatchPlanner, Budget, automatic_budget, cpu_ceiling
from preprocess.device import PRECISIONS, resolve_device
from preprocess.executors.inprocess import choose_threads
from preprocess.executors.inprocess import run_job
from preprocess.models.bundle import ModelBundle, ModelPaths
from preprocess.options import JobOptions
from preprocess.plan import Plan, make_plan


def job_options(args, manifest: Path, store: Path, paths: ModelPaths, models_dir: Path) -> JobOptions:
    return JobOptions(manifest=manifest, output_dir=store, models=paths,
                      tokenizer=models_dir / "bpe.model", batch_size=args.batch_size,
                      workers=args.workers, device=args.device, precision=args.precision,
                      format=args.format, latent_dtype=args.latent_dtype, progress=False)


def run_end_to_end(opts: JobOptions) -> tuple[dict, ModelBundle | None, list]:
    """-> (report, the bundle the job loaded, the BatchTiming of every batch)"""
    from preprocess.provenance import describe_inputs

    loaded: dict = {}

    def load() -> ModelBundle:
        loaded["bundle"] = ModelBundle.load(opts.models, layer=opts.layer)
        return loaded["bundle"]

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    timings: list = []
    commits: list[float] = []   # when each batch was committed (durable)
    sampler = TreeRss()
    sampler.start()
    try:
        t_start = time.perf_counter()
        provenance = describe_inputs(opts.models, opts.tokenizer)
        t_hashed = time.perf_counter()
        summary = run_job(opts, bundle=load, provenance=provenance, on_batch=timings.append,
                          on_progress=lambda n, s: commits.append(time.perf_counter()))
        t_end = time.perf_counter()
    finally:
        tree_peak = sampler.stop()

    wall = t_end - t_start
    first_end, last_end = (timings[0].end, timings[-1].end) if timings else (t_end, t_end)
    window = last_end - first_end
    steady_seconds = sum(t.model_seconds for t in timings[1:])
    steady_audio = sum(t.audio_seconds for t in timings[1:])
    valid = summary.audio_seconds
    threads = choose_threads(resolve_device(opts.device).type, opts.workers)
    result = {
        "utterances": summary.processed, "rejected": summary.rejected,
        "workers": threads.workers, "model_threads": threads.model or torch.get_num_threads(),
        "audio_seconds": round(valid, 3), "wall_seconds": round(wall, 3),
        "audio_seconds_per_second": valid / wall if wall else 0.0,
        "utterances_per_second": summary.processed / wall if wall else 0.0,
        "padding_efficiency": summary.padding_efficiency, "batch_budget": summary.batch_budget,
        "batches": len(timings), "batch_shapes": [f"{t.items}x{t.padded_frames // t.items}" for t in timings],
        "batch_seconds": [round(t.model_seconds, 3) for t in timings],
        "batch_wait_seconds": [round(t.wait_seconds, 3) for t in timings],
        "warmup_seconds": round(first_end - t_start, 3), "window_seconds": round(window, 3),
        "tail_seconds": round(t_end - last_end, 3),
        "commit_interval": commit_gaps(commits, t_start),
        "model_seconds": round(sum(t.model_seconds for t in timings), 3),
        "device_seconds": round(summary.device_seconds, 3),
        "device_busy_fraction": steady_seconds / window if window > 0 else None,
        "steady_audio_seconds_per_second": steady_audio / window if window > 0 else None,
        "stage_seconds": {"hash_inputs": round(t_hashed - t_start, 3),
                          **{k: round(v, 3) for k, v in summary.stage_seconds.items()}},
        "peak_rss_mib": {**peak_rss_mib(), "tree_sampled": round(tree_peak / MIB)},
        "peak_device_memory_mib": (round(torch.cuda.max_memory_allocated() / MIB)
                                   if torch.cuda.is_available() and opts.device != "cpu" else None),
    }
    return result, loaded.get("bundle"), timings


def read_back(store: Path, limit: int = 200) -> dict:
    """Milliseconds to read one utterance's four features back from the store."""
    from preprocess.store.reader import FeatureReader

    with FeatureReader.open(store) as reader:
        n = min(limit, len(reader))
        t0 = time.perf_counter()
        for i in range(n):
            reader[i]
        seconds = time.perf_counter() - t0
        files = sum(1 for p in store.rglob("*") if p.is_file())
    return {"utterances_read": n, "ms_per_utterance": 1000 * seconds / n if n else None,
            "files_in_store": files}


def prepare_inputs(plan: Plan, batches: list[list[int]], tokenizer: Path, resample: str):
    """Features of every batch, made once, and the time each CPU step took (one torch thread,
    as in a worker). -> ([(features, frames, lengths, audio_seconds)], cpu_stage report)"""
    from preprocess.audio import load_audio, to_16k
    from preprocess.frontend import collate, fbank, frame_counts, stack_frames
    from preprocess.text import TextTokenizer, clean_text

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    spent = {"text": 0.0, "decode": 0.0, "resample": 0.0, "fbank": 0.0}
    text_tokenizer = TextTokenizer(tokenizer)
    text_tokenizer.normalizer.load()  # grammar cache: a one-time cost, outside the per-item figure
    inputs, audio_total = [], 0.0
    try:
        for batch in batches:
            items = []
            for i in batch:
                item = plan.items[i]
                t0 = time.perf_counter()
                text_tokenizer.encode(clean_text(item.record.text), item.record.language)
                t1 = time.perf_counter()
                wave, sr = load_audio(item.audio)
                t2 = time.perf_counter()
                wave16 = to_16k(wave, sr, resample)
                t3 = time.perf_counter()
                stacked = stack_frames(fbank(wave16))
                t4 = time.perf_counter()
                for key, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    spent[key] += dt
                items.append((stacked, frame_counts(len(wave16))[2], len(wave) / sr))
            items.sort(key=lambda x: -x[0].shape[0])   # as DeviceStage.run_all orders a batch
            feats, frames, lengths = collate([x[0] for x in items], [x[1] for x in items])
            seconds = sum(x[2] for x in items)
            audio_total += seconds
            inputs.append((feats, frames, lengths, seconds))
    finally:
        torch.set_num_threads(threads)
    total = sum(spent.values())
    report = {k: round(v, 3) for k, v in spent.items()}
    report.update(total_seconds=round(total, 3),
                  audio_seconds_per_core_second=audio_total / total if total else None)
    return inputs, report


def run_batches(bundle: ModelBundle, inputs, device: torch.device) -> tuple[list, list[float]]:
    """Model-only: every batch through bundle.run, timed, after one untimed warm-up on the
    shortest batch. Inputs are moved to the device before the clock starts.
    -> (outputs, seconds per batch)"""
    on_device = [(f.to(device), t.to(device), l.to(device)) for f, t, l, _ in inputs]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    bundle.run(*on_device[-1])
    outputs, seconds = [], []
    for feats, frames, lengths in on_device:
        t0 = time.perf_counter()
        outputs.append(bundle.run(feats, frames, lengths))   # host arrays: synchronised
        seconds.append(time.perf_counter() - t0)
    return outputs, seconds


def model_only(bundle: ModelBundle, inputs, device: torch.device) -> tuple[dict, list]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    outputs, batch_seconds = run_batches(bundle, inputs, device)
    seconds = sum(batch_seconds)
    audio = sum(x[3] for x in inputs)
    valid = sum(int(t.sum()) for _, t, _, _ in inputs)
    padded = sum(f.shape[0] * f.shape[1] for f, _, _, _ in inputs)
    return {"batches": len(inputs), "batch_shapes": [f"{f.shape[0]}x{f.shape[1]}" for f, *_ in inputs],
            "batch_seconds": [round(x, 3) for x in batch_seconds],
            "audio_seconds": round(audio, 3), "model_seconds": round(seconds, 3),
            "audio_seconds_per_second": audio / seconds if seconds else None,
            "padding_efficiency": valid / padded if padded else 1.0,
            "peak_device_memory_mib": (round(torch.cuda.max_memory_allocated(device) / MIB)
                                       if device.type == "cuda" else None)}, outputs


def efficiencies(e2e: dict, mo: dict) -> dict:
    """End-to-end against model-only on the same batches (see the module docstring)."""
    same = e2e["batch_shapes"] == mo["batch_shapes"]
    out = {"same_batches": same, "pipeline_efficiency": None,
           "pipeline_efficiency_overall": mo["model_seconds"] / e2e["wall_seconds"]}
    if same and e2e["window_seconds"] > 0:
        out["pipeline_efficiency"] = sum(mo["batch_seconds"][1:]) / e2e["window_seconds"]
    elif e2e["steady_audio_seconds_per_second"] and mo["audio_seconds_per_second"]:
        # batches differ (an OOM split them): compare rates instead
        out["pipeline_efficiency"] = e2e["steady_audio_seconds_per_second"] / mo["audio_seconds_per_second"]
    return out


def compare_outputs(reference: list, other: list) -> dict:
    codes_a = np.concatenate([c for out in reference for c in out.codes])
    codes_b = np.concatenate([c for out in other for c in out.codes])
    differ = [bool((a != b).any()) for ra, rb in zip(reference, other) for a, b in zip(ra.codes, rb.codes)]
    out = {"codes": int(codes_a.size), "codes_differing": int((codes_a != codes_b).sum()),
           "codes_differing_fraction": float((codes_a != codes_b).mean()),
           "utterances_with_any_code_differing": int(sum(differ)), "utterances": len(differ)}
    for name in ("condition", "emo_vec"):
        a = np.concatenate([getattr(r, name) for r in reference])
        b = np.concatenate([getattr(r, name) for r in other])
        diff = np.abs(a.astype(np.float64) - b)
        out[name] = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                     "fp32_mean_abs": float(np.abs(a).mean())}
    return out


def precision_compare(bundle: ModelBundle | None, paths: ModelPaths, layer: int, inputs,
                      device: torch.device, low: str) -> dict:
    """The same batches in fp32 and in `low`. A bundle already cast down cannot be cast back
    exactly, so such a bundle is replaced by a fresh load."""
    if bundle is None or bundle.dtype != torch.float32:
        bundle = ModelBundle.load(paths, layer=layer)
    bundle.to(device, torch.float32)
    reference, seconds32 = run_batches(bundle, inputs, device)
    bundle.to(device, PRECISIONS[low])
    other, seconds_low = run_batches(bundle, inputs, device)
    seconds32, seconds_low = sum(seconds32), sum(seconds_low)
    audio = sum(x[3] for x in inputs)
    return {"precision": low, "fp32_model_seconds": round(seconds32, 3),
            f"{low}_model_seconds": round(seconds_low, 3),
            "fp32_audio_seconds_per_second": audio / seconds32 if seconds32 else None,
            f"{low}_audio_seconds_per_second": audio / seconds_low if seconds_low else None,
            **compare_outputs(reference, other)}


def plan_only(args) -> dict:
    """Padding of the batches the job would form, without models: for the `--manifest` (durations
    from audio headers) or for `--generate N` drawn durations (no audio written), under the CPU
    ceiling cut with the padding rule, --batch-size, or --budget-cost (e.g. a cost a GPU run
    measured). The automatic search is not run (it needs the models)."""
    from preprocess.batching import frames_for_seconds, padding_efficiency

    if args.manifest is not None:
        opts = JobOptions(manifest=args.manifest, output_dir=Path("-"), models=None, tokenizer=Path("-"))
        plan = make_plan(opts, set(), set())
        frames, seconds = plan.frames, plan.seconds
    else:
        seconds = sorted(draw_durations(args.generate, args.min_seconds, args.max_seconds, args.seed,
                                        args.spread).tolist(), reverse=True)
        frames = [max(1, frames_for_seconds(x)) for x in seconds]
    if args.batch_size > 0:
        budget = Budget(cost=math.inf, max_items=args.batch_size)
    else:
        budget = automatic_budget(args.budget_cost or cpu_ceiling())
    batches = [b.indices for b in BatchPlanner(frames, [True] * len(frames), budget)]
    sizes = [len(b) for b in batches]
    n = len(frames)
    return {"utterances": n, "audio_seconds": round(sum(seconds), 3), "budget_cost": budget.cost,
            "max_items": budget.max_items, "batches": len(batches),
            "items_per_batch": {"min": min(sizes), "mean": round(n / len(batches), 2), "max": max(sizes)},
            "padding_efficiency": padding_efficiency([[frames[i] for i in b] for b in batches])}


def benchmark(args) -> dict:
    load = HostLoad()
    report: dict = {}
    work = args.out or Path(tempfile.mkdtemp(prefix="preprocess-bench-"))
    models_dir = args.models or Path(tempfile.gettempdir()) / f"preprocess-bench-models-{args.size}"
    try:
        models_dir, made = ensure_models(models_dir, args.size, args.seed)
        paths = model_paths(models_dir)
        if args.manifest is not None:
            manifest, corpus_seconds = args.manifest, None
        else:
            shutil.rmtree(work / "corpus", ignore_errors=True)
            manifest, corpus_seconds = generate_corpus(work / "corpus", args.generate, args.min_seconds,
                                                       args.max_seconds, args.seed, args.spread)
        store = work / "store"
        shutil.rmtree(store, ignore_errors=True)
        opts = job_options(args, manifest, store, paths, models_dir)
        device = resolve_device(args.device)
        plan = make_plan(opts, set(), set())
        report["corpus"] = {"manifest": str(manifest), "utterances": len(plan.items),
                            "audio_seconds": round(corpus_seconds if corpus_seconds is not None
                                                   else sum(plan.seconds), 3),
                            "min_seconds": round(min(plan.seconds), 3) if plan.seconds else None,
                            "max_seconds": round(max(plan.seconds), 3) if plan.seconds else None,
                            "rejected_at_plan": len(plan.rejects)}
        report["models"] = {"size": args.size, "dir": str(models_dir), "made_this_run": made}

        bundle, timings = None, None
        if args.mode in ("end-to-end", "both"):
            report["end_to_end"], bundle, timings = run_end_to_end(opts)
            report["end_to_end"]["read_back"] = read_back(store)
        if bundle is None:
            bundle = ModelBundle.load(paths, layer=opts.layer).to(device, PRECISIONS[args.precision])
        report["models"].update(model_sizes(bundle), dtype=str(bundle.dtype).replace("torch.", ""),
                                checkpoint_file_parameters=checkpoint_parameters(paths))

        if args.mode in ("model-only", "both") or args.precision_compare:
            if timings:   # the batches the job ran, as it cut them
                batches = [t.indices for t in timings]
            else:   # without a run to copy: --batch-size, or the CPU ceiling (no search)
                budget = (Budget(math.inf, max_items=args.batch_size) if args.batch_size > 0 else
                          automatic_budget(cpu_ceiling()))
                batches = [b.indices for b in BatchPlanner(plan.frames, plan.todo, budget)]
            inputs, report["cpu_stage"] = prepare_inputs(plan, batches, opts.tokenizer, opts.resample)
            if args.mode in ("model-only", "both"):
                report["model_only"], _ = model_only(bundle, inputs, device)
            if args.mode == "both":
                report.update(efficiencies(report["end_to_end"], report["model_only"]))
            if args.precision_compare:
                report["precision_compare"] = precision_compare(bundle, paths, opts.layer, inputs, device,
                                                                args.precision_compare)
        report["load"] = load.report()
        report["peak_rss_mib"] = peak_rss_mib()
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    return report
