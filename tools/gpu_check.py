"""The GPU questions of docs/PERFORMANCE.md in one command: one JSON file and a printed table.

    python tools/gpu_check.py [--device cuda|cpu] [--json PATH] [--work DIR] [--models DIR]
        [--utterances N] [--min-seconds S] [--max-seconds S] [--time-limit SECONDS] [--workers N]
        [--sections fbank,invariance,throughput_bf16,oom,throughput_fp32,two_workers]

From a bare start: random-weight checkpoints made on the spot (tools/make_checkpoints.py; full
size on CUDA, tiny on CPU) and a synthetic corpus (durations uniform in [min, max] seconds,
synthetic voice at 16/22.05/24/44.1/48 kHz in turn). Every record's text takes the
basic-cleanup branch (language "und"), so WeTextProcessing is not needed.

Sections, in this order (each inside its own time box, the JSON rewritten after each, so a run
stopped by a timeout still leaves the figures of the sections it finished):
  fbank        DeviceFbank on the device against the CPU fbank on a sample: max difference.
  invariance   fp32: a sample as one batch against each utterance alone (codes identical,
               latents within 1e-4); bf16 against fp32 on the same batch (codes equal, latents).
  throughput_bf16, throughput_fp32
               end to end: run_job with the automatic budget (--batch-size 0); model-only: the
               same batches, the inputs the models got in that run, through ModelBundle.run
               again. Audio seconds per second of both, device busy (seconds inside
               ModelBundle.run for batches 2..n over the time from the end of batch 1 to the
               end of the last), the budget the probe chose, padded frames per batch, peak
               device memory (after the probe). fp32 runs on the first --fp32-utterances.
               Audio seconds: run_job's own count end to end; code frames / 50 for model-only
               and the steady rate (the same within one frame per utterance).
  oom          a sample as one fixed batch, once freely and once under a memory cap
               (torch.cuda.set_per_process_memory_fraction) that the batch does not fit: the
               batch is split, every utterance is written once, outputs equal the free run.
               On CPU the out-of-memory error is injected above a batch cost instead.
  two_workers  the same job with one device worker against two on the same GPU (each with
               half the memory and half the CPU workers). CUDA only.

With --device cpu every section that needs CUDA says why it does not apply.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from benchlib import commit_gaps  # noqa: E402

from preprocess.device import is_oom  # noqa: E402
from preprocess.executors.devices import OnePerDevice  # noqa: E402
from preprocess.executors.inprocess import run_job  # noqa: E402
from preprocess.job import Job, RunSummary  # noqa: E402
from preprocess.options import JobOptions  # noqa: E402

from preprocess.audio import load_audio, to_16k  # noqa: E402
from preprocess.batching import batch_cost  # noqa: E402
from preprocess.frontend import DeviceFbank, collate, fbank, frame_counts, stack_frames  # noqa: E402
from preprocess.models.bundle import ModelBundle, ModelPaths  # noqa: E402
from preprocess.provenance import describe_inputs  # noqa: E402
from preprocess.store.reader import FeatureReader  # noqa: E402

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
RATES = (16000, 22050, 24000, 44100, 48000)
CODES_PER_SECOND = 50
LANGUAGE = "und"  # not a code of any TN branch: basic cleanup for every record
MIB = 1 << 20
LATENT_TOLERANCE = 1e-4  # the design's fp32 batch-invariance bound

# Per device: corpus sizes and each section's time box in seconds, sized so that the whole run
# (checkpoints and corpus included) fits 8 minutes on one H100/H200-class GPU.
DEFAULTS = {
    "cuda": dict(size="full", utterances=1000, min_seconds=1.0, max_seconds=30.0, sample=32,
                 fp32_utterances=300, oom_utterances=48, two_worker_utterances=400, time_limit=480,
                 boxes=dict(fbank=20, invariance=45, throughput_bf16=100, oom=60,
                            throughput_fp32=80, two_workers=100)),
    "cpu": dict(size="tiny", utterances=12, min_seconds=1.0, max_seconds=8.0, sample=4,
                fp32_utterances=12, oom_utterances=6, two_worker_utterances=0, time_limit=600,
                boxes=dict(fbank=30, invariance=60, throughput_bf16=150, oom=90,
                           throughput_fp32=120, two_workers=0)),
}


# -- time boxes ------------------------------------------------------------------------------

class TimeBox:
    """A section's time limit. A timer signal interrupts the work the way Ctrl-C does (run_job
    then commits what it finished and stops); loops also ask `left()` and stop on their own."""

    def __init__(self, seconds: float):
        self.seconds, self.start, self.expired = seconds, time.perf_counter(), False

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def _ring(self, signum, frame):
        self.expired = True
        # the job's child processes (CPU workers, device workers) get no timer signal: stop
        # them as a SIGTERM does (a device worker commits what it finished first)
        for child in multiprocessing.active_children():
            child.terminate()
        raise KeyboardInterrupt

    def __enter__(self):
        self.previous = signal.signal(signal.SIGALRM, self._ring)
        signal.setitimer(signal.ITIMER_REAL, max(0.01, self.seconds))
        return self

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous)
        return False


# -- inputs ----------------------------------------------------------------------------------

def tn_installed() -> bool:
    try:
        import tn  # noqa: F401  (WeTextProcessing's package)
    except ImportError:
        return False
    return True


def adapt_to_missing_tn() -> str:
    """Without WeTextProcessing one step would fail although no record here needs it:
    make_checkpoints trains the tokenizer on en/zh lines normalised through the TN grammars
    (normalised by basic cleanup instead: the branch of this corpus). Only in the processes that
    run this file; the job itself loads a grammar only for a record whose branch needs it."""
    from preprocess.text import TextNormalizer

    basic = TextNormalizer.__dict__["basic"]
    TextNormalizer.chinese = TextNormalizer.english = basic
    return "WeTextProcessing not installed: basic-cleanup branch only (tokenizer adapted)"


# Adapted at import, so that the job processes spawned from this file (which run its top level
# again) are adapted too.
TEXT_NORMALISER = None if tn_installed() else adapt_to_missing_tn()


def ensure_models(models_dir: Path, size: str) -> tuple[ModelPaths, float]:
    """Checkpoints in `models_dir` (made there when absent) -> (paths, seconds spent making)."""
    t0 = time.perf_counter()
    if not (models_dir / "config.yaml").is_file():
        from make_checkpoints import make_checkpoints

        make_checkpoints(models_dir, size=size, seed=0)
    made = json.loads((models_dir / "MADE_BY.json").read_text()).get("size")
    if made != size:
        raise SystemExit(f"{models_dir} holds {made} checkpoints, this check needs {size}")
    paths = ModelPaths.resolve(models_dir / "config.yaml", w2v_bert=models_dir / "w2v-bert-2.0",
                               semantic_codec=models_dir / "semantic_codec" / "model.safetensors")
    return paths, time.perf_counter() - t0


def make_corpus(out: Path, count: int, min_seconds: float, max_seconds: float, seed: int = 0) -> list[dict]:
    """`count` utterances with durations uniform in the bounds; returns the manifest lines.
    The voice is a bank of a few 12 s synthetic takes per rate, tiled and shifted per utterance:
    making a thousand utterances then takes seconds, not minutes."""
    from make_sample import SENTENCES, synthetic_voice

    rng = np.random.default_rng(seed)
    bank = {rate: [synthetic_voice("x" * 150, seed * 1000 + k, rate) for k in range(3)] for rate in RATES}
    (out / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, seconds in enumerate(rng.uniform(min_seconds, max_seconds, count)):
        _, _, sentence = SENTENCES[i % len(SENTENCES)]
        rate = RATES[i % len(RATES)]
        n = int(round(seconds * rate))
        take = bank[rate][i % 3]
        wave = np.resize(np.roll(take, int(rng.integers(len(take)))), n)
        name = f"audio/u{i:05d}.wav"
        sf.write(out / name, wave, rate, subtype="PCM_16")
        text = " ".join([sentence] * max(1, math.ceil(seconds / 4)))  # ~ one sentence per 4 s
        lines.append({"id": f"u{i:05d}", "text": text, "audio": name, "speaker": f"spk{i % 7}",
                      "language": LANGUAGE, "duration": round(n / rate, 3)})
    return lines


def write_manifest(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return path


def spread_sample(lines: list[dict], count: int) -> list[dict]:
    """`count` lines spread over the range of durations (every k-th by duration)."""
    by_length = sorted(lines, key=lambda x: x["duration"])
    picks = np.linspace(0, len(by_length) - 1, min(count, len(by_length))).round().astype(int)
    return [by_length[i] for i in sorted(set(picks.tolist()))]


def waves_16k(corpus: Path, lines: list[dict]) -> list[np.ndarray]:
    return [to_16k(*load_audio(corpus / x["audio"]), "reference") for x in lines]


# -- running the models ------------------------------------------------------------------------

@dataclass
class Call:
    start: float
    end: float
    items: int
    padded_frames: int   # T of the batch
    valid_frames: int    # sum of T_i


class TimedBundle:
    """A ModelBundle as run_job uses it (`to`, `run`) that times every batch. Optionally keeps
    each batch's inputs (for the model-only rerun) or raises an injected out-of-memory error for
    batches above a cost (on CPU, which has no memory cap). Budget-probe batches are not kept."""

    def __init__(self, bundle: ModelBundle, keep_inputs: bool = False, oom_above: float | None = None):
        self.bundle, self.keep_inputs, self.oom_above = bundle, keep_inputs, oom_above
        self.calls: list[Call] = []
        self.inputs: list[tuple] = []
        self.ooms = 0

    def to(self, device, dtype):
        self.bundle.to(device, dtype)
        return self

    def run(self, features, frames, lengths):
        items, padded = int(features.shape[0]), int(features.shape[1])
        t0 = time.perf_counter()
        try:
            if self.oom_above is not None and batch_cost(items, padded) > self.oom_above:
                raise torch.OutOfMemoryError(f"injected: a {items}x{padded} batch is over the cap")
            out = self.bundle.run(features, frames, lengths)   # host arrays: the device is done
        except Exception as e:
            if is_oom(e):
                self.ooms += 1
            raise
        self.calls.append(Call(t0, time.perf_counter(), items, padded, int(frames.sum())))
        if self.keep_inputs:
            self.inputs.append((t0, (features.clone(), frames.clone(), lengths.clone())))
        return out

    def drop_before(self, t: float) -> None:
        """Forget the calls made before `t`: the job's memory probe runs worst-case batches
        through the same bundle before its first real batch."""
        self.calls = [c for c in self.calls if c.start >= t]
        self.inputs = [x for x in self.inputs if x[0] >= t]

    def batch_inputs(self) -> list[tuple]:
        return [x[1] for x in self.inputs]


def job_options(ctx, manifest: Path, out: Path, **overrides) -> JobOptions:
    options = dict(manifest=manifest, output_dir=out, models=ctx.paths, tokenizer=ctx.tokenizer,
                   language=LANGUAGE, val_ratio=0.0, workers=ctx.args.workers, device=str(ctx.device),
                   progress=False)
    options.update(overrides)
    return JobOptions(**options)


def timeline(calls: list[Call], t_start: float, t_end: float) -> dict:
    """Warm-up, window and device busy of one end-to-end run (see the module docstring)."""
    if not calls:
        return {"batches": 0}
    window = calls[-1].end - calls[0].end
    busy = sum(c.end - c.start for c in calls[1:])
    padded = [c.items * c.padded_frames for c in calls]
    return {"batches": len(calls), "warmup_seconds": round(calls[0].end - t_start, 3),
            "window_seconds": round(window, 3), "tail_seconds": round(t_end - calls[-1].end, 3),
            "model_seconds": round(sum(c.end - c.start for c in calls), 3),
            "device_busy": round(busy / window, 4) if window > 0 else None,
            "steady_audio_seconds_per_second": (sum(c.valid_frames for c in calls[1:]) / CODES_PER_SECOND
                                                / window if window > 0 else None),
            "items_per_batch": {"min": min(c.items for c in calls), "max": max(c.items for c in calls),
                                "mean": round(sum(c.items for c in calls) / len(calls), 2)},
            "padded_frames_per_batch": {"mean": round(sum(padded) / len(padded)), "max": max(padded)},
            "padding_efficiency": round(sum(c.valid_frames for c in calls) / sum(padded), 4)}


def end_to_end(opts: JobOptions, timed: TimedBundle, provenance: dict, device: torch.device) -> dict:
    """run_job with `timed` as its bundle -> figures (partial ones if the time box rang)."""
    shutil.rmtree(opts.output_dir, ignore_errors=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    summary: RunSummary | None = None
    t0 = time.perf_counter()
    first: list[float] = []   # when the device stage took the job's first real batch
    commits: list[float] = []  # when each batch was durable: what a kill costs
    try:
        summary = run_job(opts, bundle=timed, provenance=provenance,
                          on_batch=lambda timing: first or first.append(timing.start),
                          on_progress=lambda n, s: commits.append(time.perf_counter()))
    except KeyboardInterrupt:
        pass
    timed.drop_before(first[0] if first else math.inf)
    t1 = time.perf_counter()
    out = {"completed": summary is not None, "wall_seconds": round(t1 - t0, 3), **timeline(timed.calls, t0, t1),
           "commit_interval": commit_gaps(commits, t0)}
    if summary is not None:
        out.update(utterances=summary.processed, rejected=summary.rejected,
                   audio_seconds=round(summary.audio_seconds, 3),
                   audio_seconds_per_second=summary.audio_seconds / (t1 - t0),
                   stage_seconds={k: round(v, 3) for k, v in summary.stage_seconds.items()})
    else:   # stopped by the time box: what the models finished
        audio = sum(c.valid_frames for c in timed.calls) / CODES_PER_SECOND
        out.update(utterances=sum(c.items for c in timed.calls), audio_seconds=round(audio, 3),
                   audio_seconds_per_second=audio / (t1 - t0))
    if opts.batch_size:
        out["budget"] = f"fixed: {opts.batch_size} utterances per batch"
    elif summary is not None and summary.batch_budget:
        chosen = summary.batch_budget
        out.update(budget=("measured (--batch-size 0): " +
                           ("one utterance per batch" if chosen["max_items"] == 1 else "a cost budget")),
                   budget_cost=chosen["cost"], budget_max_items=chosen["max_items"],
                   budget_seconds=round(summary.stage_seconds.get("budget", 0.0), 3))
    if device.type == "cuda":
        out["peak_device_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / MIB)
        out["device_memory_mib"] = round(torch.cuda.get_device_properties(device).total_memory / MIB)
    return out


def model_only(bundle: ModelBundle, inputs: list[tuple], device: torch.device, box: TimeBox) -> dict:
    """The kept batches through ModelBundle.run again, after one untimed warm-up (the smallest)."""
    if not inputs:
        return {"batches": 0}
    bundle.run(*min(inputs, key=lambda x: x[0].numel()))
    seconds, code_frames = [], 0
    for features, frames, lengths in inputs:
        if box.left() < 1.5 * (seconds[-1] if seconds else 0.0) + 0.5:   # the next batch would not fit
            break
        t0 = time.perf_counter()
        bundle.run(features, frames, lengths)
        seconds.append(time.perf_counter() - t0)
        code_frames += int(frames.sum())
    audio = code_frames / CODES_PER_SECOND
    return {"batches": len(seconds), "of_batches": len(inputs), "model_seconds": round(sum(seconds), 3),
            "audio_seconds": round(audio, 3),
            "audio_seconds_per_second": audio / sum(seconds) if seconds else None}


def read_store(out: Path) -> dict[str, dict]:
    with FeatureReader.open(out) as reader:
        return {reader.ids[i]: reader[i] for i in range(len(reader))}


def compare(reference: dict, other: dict) -> dict:
    """Codes and latents of two runs over the same utterances."""
    same_ids = sorted(reference) == sorted(other)
    codes = equal = differing_utterances = 0
    worst = {"condition": 0.0, "emo_vec": 0.0}
    for key in set(reference) & set(other):
        a, b = reference[key], other[key]
        codes += a["codes"].size
        if a["codes"].shape == b["codes"].shape:
            equal += int((a["codes"] == b["codes"]).sum())
        differing_utterances += int(not np.array_equal(a["codes"], b["codes"]))
        for name in worst:
            worst[name] = max(worst[name], float(np.abs(a[name].astype(np.float64) - b[name]).max()))
    return {"same_ids": same_ids, "codes": codes, "codes_equal_fraction": equal / codes if codes else None,
            "utterances_with_codes_differing": differing_utterances,
            "condition_max_abs_diff": worst["condition"], "emo_vec_max_abs_diff": worst["emo_vec"]}


def by_index(outputs: list) -> dict[str, dict]:
    """BundleOutputs -> {position: features}, in the shape `compare` takes."""
    items: dict[str, dict] = {}
    for out in outputs:
        for j, codes in enumerate(out.codes):
            items[str(len(items))] = {"codes": codes, "condition": out.condition[j], "emo_vec": out.emo_vec[j]}
    return items


# -- sections ---------------------------------------------------------------------------------

def section_fbank(ctx, box: TimeBox, out: dict) -> None:
    waves = ctx.sample_waves
    t0 = time.perf_counter()
    cpu = [stack_frames(fbank(w)) for w in waves]
    cpu_seconds = time.perf_counter() - t0
    out.update(utterances=len(waves), cpu_seconds=round(cpu_seconds, 4))
    on_device = [torch.from_numpy(w).to(ctx.device) for w in waves]
    for name, compute in (("float64", torch.float64), ("float32", torch.float32)):
        front = DeviceFbank(ctx.device, compute_dtype=compute)
        front(on_device)   # warm-up: kernels, plans
        sync(ctx.device)
        t0 = time.perf_counter()
        feats, frames, lengths = front(on_device)
        sync(ctx.device)
        seconds = time.perf_counter() - t0
        worst = max(float(np.abs(feats[i, :c.shape[0]].cpu().numpy().astype(np.float64) - c).max())
                    for i, c in enumerate(cpu))
        counts = [frame_counts(len(w)) for w in waves]
        out[f"device_{name}"] = {"max_abs_diff": worst, "seconds": round(seconds, 4),
                                 "frames_equal": frames.tolist() == [t for _, t, _ in counts],
                                 "lengths_equal": lengths.tolist() == [n for _, _, n in counts]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def section_invariance(ctx, box: TimeBox, out: dict) -> None:
    items = [stack_frames(fbank(w)) for w in ctx.sample_waves]
    valid = [frame_counts(len(w))[2] for w in ctx.sample_waves]
    batch = [t.to(ctx.device) for t in collate(items, valid)]
    fp32, bf16 = ctx.bundle("fp32"), ctx.bundle("bf16")
    batched = fp32.run(*batch)
    alone = []
    for x, n in zip(items, valid):
        if box.left() < 2.0:
            break
        alone.append(fp32.run(*[t.to(ctx.device) for t in collate([x], [n])]))
    together = dict(list(by_index([batched]).items())[:len(alone)])
    singles = by_index(alone)
    fp32_check = compare(together, singles)
    fp32_check["codes_identical"] = fp32_check["utterances_with_codes_differing"] == 0 and bool(alone)
    fp32_check["latents_within_tolerance"] = max(fp32_check["condition_max_abs_diff"],
                                                 fp32_check["emo_vec_max_abs_diff"]) <= LATENT_TOLERANCE
    low = compare(by_index([batched]), by_index([bf16.run(*batch)]))
    low["condition_fp32_mean_abs"] = float(np.abs(batched.condition).mean())
    low["emo_vec_fp32_mean_abs"] = float(np.abs(batched.emo_vec).mean())
    out.update(utterances=len(items), compared_alone=len(alone),
               batch_shape=f"{batch[0].shape[0]}x{batch[0].shape[1]}",
               fp32_batched_vs_alone=fp32_check, bf16_vs_fp32=low, tolerance=LATENT_TOLERANCE)


def section_throughput(ctx, box: TimeBox, out: dict, precision: str) -> None:
    bundle = ctx.bundle(precision)
    timed = TimedBundle(bundle, keep_inputs=True)
    opts = job_options(ctx, ctx.manifests[precision], ctx.work / f"store_{precision}", precision=precision)
    out["precision"] = precision
    out["end_to_end"] = e2e = end_to_end(opts, timed, ctx.provenance, ctx.device)
    out["model_only"] = mo = model_only(bundle, timed.batch_inputs(), ctx.device, box)
    timed.inputs.clear()
    if mo.get("model_seconds") and mo["batches"] == mo["of_batches"] and e2e["completed"]:
        # the same batches: the share of the end-to-end wall time that the models alone need
        out["pipeline_efficiency_overall"] = round(mo["model_seconds"] / e2e["wall_seconds"], 4)


def section_oom(ctx, box: TimeBox, out: dict) -> None:
    manifest, count = ctx.manifests["oom"], ctx.counts["oom"]
    bundle = ctx.bundle("fp32")

    def opts(name):   # one fixed batch of every utterance
        return job_options(ctx, manifest, ctx.work / name, batch_size=count)

    base = torch.cuda.memory_allocated(ctx.device) if ctx.device.type == "cuda" else 0
    free = TimedBundle(bundle)
    out["utterances"] = count
    out["free_run"] = reference = end_to_end(opts("store_oom_free"), free, ctx.provenance, ctx.device)
    if not reference["completed"]:
        return
    if ctx.device.type == "cuda":
        # a cap a quarter of the way from the models' memory to the free batch's peak
        total = torch.cuda.get_device_properties(ctx.device).total_memory
        cap = base + (reference["peak_device_memory_mib"] * MIB - base) / 4
        out["cap"] = f"torch.cuda.set_per_process_memory_fraction({cap / total:.4f}): {cap / MIB:,.0f} MiB"
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(cap / total, ctx.device)
        capped = TimedBundle(bundle)
    else:
        widest = max(c.padded_frames for c in free.calls)
        out["cap"] = f"injected OutOfMemoryError above batch_cost(2, {widest})"
        capped = TimedBundle(bundle, oom_above=batch_cost(2, widest))
    try:
        out["capped_run"] = run = end_to_end(opts("store_oom_capped"), capped, ctx.provenance, ctx.device)
    finally:
        if ctx.device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, ctx.device)
            torch.cuda.empty_cache()
    out.update(out_of_memory_errors=capped.ooms, batches_run=len(capped.calls),
               largest_batch=max((c.items for c in capped.calls), default=0),
               split=capped.ooms > 0 and len(capped.calls) > 1)
    if not run["completed"]:
        return
    written = read_store(ctx.work / "store_oom_capped")
    lines = (ctx.work / "store_oom_capped" / "train_manifest.jsonl").read_text().splitlines()
    ids = [json.loads(x)["id"] for x in lines]
    out["every_utterance_once"] = len(ids) == len(set(ids)) == count and sorted(ids) == sorted(written)
    check = compare(read_store(ctx.work / "store_oom_free"), written)
    check["outputs_equal"] = (check["same_ids"] and check["utterances_with_codes_differing"] == 0
                              and max(check["condition_max_abs_diff"], check["emo_vec_max_abs_diff"])
                              <= LATENT_TOLERANCE)
    out["against_free_run"] = check


def section_two_workers(ctx, box: TimeBox, out: dict) -> None:
    ctx.release_models()   # the device workers load their own; leave them the memory
    cpu_workers = ctx.args.workers or max(2, (os.cpu_count() or 2) - 2)
    out["note"] = "wall time from the job's start: model load, budget probe and worker start included"
    for name, devices in (("one", [str(ctx.device)]), ("two", [str(ctx.device)] * 2)):
        share = len(devices)
        opts = job_options(ctx, ctx.manifests["two_workers"], ctx.work / f"store_workers_{name}",
                           precision="bf16", workers=max(1, cpu_workers // share), memory_fraction=0.9 / share)
        shutil.rmtree(opts.output_dir, ignore_errors=True)
        t0 = time.perf_counter()
        summary = Job(opts, ctx.provenance).run(OnePerDevice(devices))
        wall = time.perf_counter() - t0
        out[name] = {"device_workers": share, "cpu_workers_each": opts.workers,
                     "memory_fraction_each": round(opts.memory_fraction, 3), "utterances": summary.processed,
                     "audio_seconds": round(summary.audio_seconds, 3), "wall_seconds": round(wall, 3),
                     "audio_seconds_per_second": summary.audio_seconds / wall}
    out["speedup_two_over_one"] = round(out["two"]["audio_seconds_per_second"]
                                        / out["one"]["audio_seconds_per_second"], 3)


CUDA_ONLY = {"two_workers": "measures two processes sharing one GPU; on CPU they would share the "
                            "same cores, which says nothing about a GPU"}
SECTIONS = {
    "fbank": section_fbank,
    "invariance": section_invariance,
    "throughput_bf16": lambda ctx, box, out: section_throughput(ctx, box, out, "bf16"),
    "oom": section_oom,
    "throughput_fp32": lambda ctx, box, out: section_throughput(ctx, box, out, "fp32"),
    "two_workers": section_two_workers,
}


# -- the run ----------------------------------------------------------------------------------

class Context:
    """What the sections share: device, models (loaded once per precision), corpus, manifests."""

    def __init__(self, args, work: Path, device: torch.device, paths: ModelPaths, corpus: Path,
                 lines: list[dict]):
        self.args, self.work, self.device, self.paths, self.corpus = args, work, device, paths, corpus
        self.tokenizer = paths.config.parent / "bpe.model"
        self.provenance = describe_inputs(paths, self.tokenizer)   # hashed once for every job
        self._bundles: dict[str, ModelBundle] = {}
        subsets = {"bf16": lines, "fp32": lines[:args.fp32_utterances],
                   "oom": spread_sample(lines, args.oom_utterances),
                   "two_workers": lines[:args.two_worker_utterances]}
        self.manifests = {k: write_manifest(corpus / f"manifest_{k}.jsonl", v) for k, v in subsets.items() if v}
        self.counts = {k: len(v) for k, v in subsets.items()}
        self.sample_waves = waves_16k(corpus, spread_sample(lines, args.sample))

    def release_models(self) -> None:
        self._bundles.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def bundle(self, precision: str) -> ModelBundle:
        # one load per precision: a bundle cast down to bf16 cannot be cast back to fp32 exactly
        if precision not in self._bundles:
            self._bundles[precision] = ModelBundle.load(self.paths).to(self.device, PRECISIONS[precision])
        return self._bundles[precision]


def machine(device: torch.device) -> dict:
    info = {"host": platform.node(), "cpu_cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_mib=round(props.total_memory / MIB), cuda=torch.version.cuda)
    return info


def write_json(path: Path, report: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def run_check(args) -> dict:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (use --device cpu)")
    # with its index: set_per_process_memory_fraction refuses a bare "cuda"
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    started = time.perf_counter()
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "device": str(device),
                    "machine": machine(device), "options": {k: str(v) for k, v in vars(args).items()},
                    "sections": {}}
    if device.type == "cpu":
        # as run_job does on CPU: leave a core to the CPU workers; more compute threads than
        # free cores make every op wait at the thread barrier (docs/PERFORMANCE.md)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))
    if TEXT_NORMALISER:
        report["text_normaliser"] = TEXT_NORMALISER
    work = args.work or Path(tempfile.mkdtemp(prefix="preprocess-gpu-check-"))
    try:
        paths, made_seconds = ensure_models(args.models or work / "models", args.size)
        t0 = time.perf_counter()
        shutil.rmtree(work / "corpus", ignore_errors=True)
        lines = make_corpus(work / "corpus", args.utterances, args.min_seconds, args.max_seconds)
        corpus_seconds = time.perf_counter() - t0
        ctx = Context(args, work, device, paths, work / "corpus", lines)
        report["setup"] = {"models": args.size, "models_made_seconds": round(made_seconds, 1),
                           "corpus_utterances": len(lines),
                           "corpus_audio_seconds": round(sum(x["duration"] for x in lines), 1),
                           "corpus_made_seconds": round(corpus_seconds, 1),
                           "setup_seconds": round(time.perf_counter() - started, 1)}
        write_json(args.json, report)
        for name, section in SECTIONS.items():
            if device.type != "cuda" and name in CUDA_ONLY:
                report["sections"][name] = {"status": f"not applicable on {device.type}",
                                            "reason": CUDA_ONLY[name]}
                continue
            if name not in args.sections:
                report["sections"][name] = {"status": "not asked for (--sections)"}
                continue
            left = args.time_limit - (time.perf_counter() - started)
            seconds = min(args.boxes[name], left)
            if seconds < 5:
                report["sections"][name] = {"status": "skipped: the overall time limit was reached"}
                continue
            t0 = time.perf_counter()
            result: dict = {}   # filled as the section goes, so a timeout keeps what it measured
            box = TimeBox(seconds)
            try:
                with box:
                    section(ctx, box, result)
                result["status"] = "timed out: partial figures" if box.expired else "ok"
            except KeyboardInterrupt:
                result["status"] = "timed out: partial figures" if box.expired else "interrupted"
            except Exception as e:  # one failing section must not cost the others' figures
                result.update(status=f"error: {type(e).__name__}: {e}", traceback=traceback.format_exc(limit=6))
            result["seconds"] = round(time.perf_counter() - t0, 1)
            result["time_box_seconds"] = round(seconds, 1)
            report["sections"][name] = result
            write_json(args.json, report)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(args.json, report)
    return report


# -- the table --------------------------------------------------------------------------------

def _fmt(value, digits=1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 0.01 else f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(report: dict) -> str:
    """The report's headline figures, one row each; "-" where a section did not give them."""
    sections, setup = report["sections"], report.get("setup", {})

    def get(section: str, *keys):
        value = sections.get(section, {})
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def status(section: str) -> str:
        return f"[{get(section, 'status') or 'not run'}]"

    gpu = report["machine"].get("gpu")
    rows = [("device", report["device"] + (f" ({gpu})" if gpu else "")),
            ("corpus", f"{_fmt(setup.get('corpus_utterances'))} utterances, "
                       f"{_fmt(setup.get('corpus_audio_seconds'))} s audio")]
    for precision in ("bf16", "fp32"):
        name = f"throughput_{precision}"
        e2e = lambda *keys: get(name, "end_to_end", *keys)  # noqa: E731
        rows += [
            (f"{precision} end to end audio s/s (steady)",
             f"{_fmt(e2e('audio_seconds_per_second'))} ({_fmt(e2e('steady_audio_seconds_per_second'))}) over "
             f"{_fmt(e2e('utterances'))} utt; device busy {_fmt(e2e('device_busy'), 3)} {status(name)}"),
            (f"{precision} model-only audio s/s",
             f"{_fmt(get(name, 'model_only', 'audio_seconds_per_second'))} "
             f"({_fmt(get(name, 'model_only', 'batches'))}/{_fmt(get(name, 'model_only', 'of_batches'))} batches)"),
            (f"{precision} budget, padded frames/batch, peak MiB",
             f"cost {_fmt(e2e('budget_cost'), 0)}; mean {_fmt(e2e('padded_frames_per_batch', 'mean'))} "
             f"max {_fmt(e2e('padded_frames_per_batch', 'max'))}; padding {_fmt(e2e('padding_efficiency'), 3)}; "
             f"peak {_fmt(e2e('peak_device_memory_mib'))}"),
            (f"{precision} commits: first after s, median/max gap s",
             f"{_fmt(e2e('commit_interval', 'first_seconds'))}; {_fmt(e2e('commit_interval', 'median_seconds'))}"
             f" / {_fmt(e2e('commit_interval', 'max_seconds'))} over {_fmt(e2e('commit_interval', 'commits'))}"),
        ]
    fp32_alone = lambda key: get("invariance", "fp32_batched_vs_alone", key)  # noqa: E731
    bf16 = lambda key: get("invariance", "bf16_vs_fp32", key)  # noqa: E731
    latent_diffs = [x for x in (fp32_alone("condition_max_abs_diff"), fp32_alone("emo_vec_max_abs_diff"))
                    if x is not None]
    rows += [
        ("forced OOM",
         f"{_fmt(get('oom', 'cap'))}: {_fmt(get('oom', 'out_of_memory_errors'))} OOMs, "
         f"{_fmt(get('oom', 'batches_run'))} batches (largest {_fmt(get('oom', 'largest_batch'))}); every utterance "
         f"once {_fmt(get('oom', 'every_utterance_once'))}; equal to free run "
         f"{_fmt(get('oom', 'against_free_run', 'outputs_equal'))} {status('oom')}"),
        ("fp32 batched vs alone",
         f"codes identical {_fmt(fp32_alone('codes_identical'))}; latent max diff "
         f"{_fmt(max(latent_diffs) if latent_diffs else None, 2)} ({_fmt(get('invariance', 'compared_alone'))} utt) "
         f"{status('invariance')}"),
        ("bf16 vs fp32",
         f"codes equal {_fmt(bf16('codes_equal_fraction'), 4)}; condition max diff "
         f"{_fmt(bf16('condition_max_abs_diff'), 4)}; emo_vec {_fmt(bf16('emo_vec_max_abs_diff'), 4)}"),
        ("device fbank vs CPU, max diff",
         f"float64 {_fmt(get('fbank', 'device_float64', 'max_abs_diff'), 2)}; "
         f"float32 {_fmt(get('fbank', 'device_float32', 'max_abs_diff'), 2)} {status('fbank')}"),
        ("two workers / one, one GPU",
         f"{_fmt(get('two_workers', 'speedup_two_over_one'), 3)}x {status('two_workers')}"),
    ]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in rows)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, default=Path("gpu_check.json"), help="where the report goes")
    ap.add_argument("--work", type=Path, default=None,
                    help="work directory, kept (default: a temporary one, removed)")
    ap.add_argument("--models", type=Path, default=None, help="checkpoints to reuse (made there when absent)")
    ap.add_argument("--size", choices=("tiny", "full"), default=None, help="default: full on CUDA, tiny on CPU")
    ap.add_argument("--utterances", type=int, default=None)
    ap.add_argument("--min-seconds", type=float, default=None)
    ap.add_argument("--max-seconds", type=float, default=None)
    ap.add_argument("--sample", type=int, default=None, help="utterances of the fbank and invariance sections")
    ap.add_argument("--fp32-utterances", type=int, default=None)
    ap.add_argument("--oom-utterances", type=int, default=None)
    ap.add_argument("--two-worker-utterances", type=int, default=None)
    ap.add_argument("--time-limit", type=float, default=None, help="seconds for the whole check")
    ap.add_argument("--workers", type=int, default=0, help="CPU worker processes per job, 0: automatic")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    args = ap.parse_args(argv)
    args.sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        ap.error(f"--sections: unknown {', '.join(sorted(unknown))} (known: {', '.join(SECTIONS)})")
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    report = run_check(args)
    print(table(report))
    print(f"report: {args.json}")
    return report


if __name__ == "__main__":
    main()
