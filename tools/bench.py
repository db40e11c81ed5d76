"""Throughput benchmark of `preprocess-data` on random-weight checkpoints; prints one JSON object.

    python tools/bench.py [--size tiny|full] [--models DIR] [--manifest M | --generate N
        --min-seconds 1 --max-seconds 30] [--device auto|cpu|cuda] [--precision fp32|bf16|fp16]
        [--batch-size 0] [--workers 0] [--threads 0] [--mode end-to-end|model-only|both|plan|store]
        [--format npy|zarr] [--latent-dtype float32|float16] [--precision-compare bf16|fp16]
        [--reads 2000] [--out DIR]

Modes (both run the batches that `make_plan` + `Plan.batches` form under the job's budget):
  end-to-end  `run_job` on the manifest: decode, resample, fbank, text ids, models, store.
  model-only  the same batches through `ModelBundle.run` on inputs prepared beforehand (decode,
              resample, fbank and collate happen outside the timing; one untimed warm-up batch).
  both        the two, then pipeline efficiency = end-to-end rate / model-only rate.
  plan        padding efficiency of the planned batches only (no audio decoded, no models).
  store       the feature store alone (no audio, no models): `--generate N` synthetic utterances
              written through OutputDir in batches of `--batch-size` (0: 256) in `--format`
              (zarr as the job opens it: flush_rows=1024), then files and bytes on disk, the
              latency of reading one utterance through FeatureReader (warm, and cold after
              evicting the store's pages) and the time to load every utterance's codes.
              Write seconds run from opening OutputDir to the end of finalize and close; making
              the random data is timed apart and excluded.

Time line of an end-to-end run (batches in the order the device runs them, longest first):
  warm-up     from the start (hashing model files for provenance) to the end of the first
              batch's ModelBundle.run: plan (manifest, audio headers), model load, budget probe,
              worker start-up, the CPU stage of the first batch and the first batch itself
              (one-time costs: lazy initialisation, allocator growth, kernel selection);
  window      from the end of the first batch's ModelBundle.run to the end of the last one;
  tail        the rest: the last batch's write, manifests, stats.json.
  device_busy_fraction = seconds inside ModelBundle.run for batches 2..n / window.
  RunSummary.device_seconds (all batches, including collation or the device fbank) is reported
  beside it. With a single batch there is no window: use more utterances or --batch-size.
  pipeline_efficiency = model-only seconds of batches 2..n / window (= end-to-end rate over
  model-only rate on the same batches); pipeline_efficiency_overall = model-only seconds of all
  batches / end-to-end wall seconds (warm-up included).

`--precision-compare P` runs the model-only batches in fp32 and in P and reports how many codes
differ and the absolute differences of condition and emo_vec.

Generated corpora (`--generate N`): durations drawn uniformly (or log-uniformly) between the
bounds, synthetic voice (tools/make_sample.py) written as 16-bit WAV at 16/22.05/24/44.1/48 kHz in
turn, text in several languages, all deterministic for `--seed`. Without `--out` everything goes
to a temporary directory that is removed; with `--out DIR`, DIR/corpus and DIR/store are
replaced on each run. Checkpoints are reused from `--models` (made there when absent).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from make_sample import SENTENCES, synthetic_voice  # noqa: E402

from preprocess import pipeline  # noqa: E402
from preprocess.batching import Budget  # noqa: E402
from preprocess.models import bundle as bundle_module  # noqa: E402
from preprocess.models.bundle import ModelBundle, ModelPaths  # noqa: E402

RATES = (16000, 22050, 24000, 44100, 48000)
MIB = 1 << 20


# -- machine and load -----------------------------------------------------------------------

def machine_info() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "ram_gib": None, "gpu": None, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / (1 << 30), 1)
        info["cuda"] = torch.version.cuda
    return info


def _host_cpu_busy_seconds() -> float | None:
    """CPU seconds all processes of the host have used (/proc/stat), for the load estimate."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class HostLoad:
    """How much of the host's CPU others used while we ran: host busy - ours (ours includes
    reaped children, i.e. the CPU workers once the pool has ended)."""

    def __init__(self):
        self.t0, self.host0, self.own0 = time.perf_counter(), _host_cpu_busy_seconds(), _own_cpu_seconds()
        self.load0 = os.getloadavg()

    def report(self) -> dict:
        wall = time.perf_counter() - self.t0
        host, own = _host_cpu_busy_seconds(), _own_cpu_seconds() - self.own0
        out = {"loadavg_start": [round(x, 2) for x in self.load0],
               "loadavg_end": [round(x, 2) for x in os.getloadavg()],
               "own_cpu_seconds": round(own, 1), "wall_seconds": round(wall, 1)}
        if host is not None and self.host0 is not None:
            others = max(0.0, host - self.host0 - own)
            out.update(others_cpu_seconds=round(others, 1),
                       others_cores_busy=round(others / wall, 2) if wall else 0.0)
        return out


class TreeRss(threading.Thread):
    """Samples the summed resident memory of this process and all its descendants (Linux /proc).
    getrusage gives exact peaks of this process and of the largest single child; this gives
    the peak of their sum, to sampling accuracy."""

    def __init__(self, interval: float = 0.25):
        super().__init__(daemon=True, name="rss-sampler")
        self.interval, self.peak, self._halt = interval, 0, threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def sample(self) -> int:
        parent, rss = {}, {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
                parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                rss[int(entry.name)] = int(Path(entry.path, "statm").read_text().split()[1]) * self.page
            except (OSError, ValueError, IndexError):
                continue
        tree, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            p = frontier.pop()
            kids = [c for c, pp in parent.items() if pp == p and c not in tree]
            tree.update(kids)
            frontier += kids
        return sum(rss.get(p, 0) for p in tree)

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.peak = max(self.peak, self.sample())

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


def peak_rss_mib() -> dict:
    # ru_maxrss is KiB on Linux; the children figure is the largest single reaped descendant
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"main": round(me), "largest_child": round(kids)}


# -- inputs ---------------------------------------------------------------------------------

def ensure_models(models_dir: Path, size: str, seed: int) -> tuple[Path, bool]:
    """Reuse checkpoints in `models_dir`, or make them there (in a child process, so that the
    making does not count in this process's peak memory)."""
    if (models_dir / "config.yaml").is_file():
        made = models_dir / "MADE_BY.json"
        if made.is_file() and json.loads(made.read_text()).get("size") != size:
            raise SystemExit(f"{models_dir} holds checkpoints of another --size ({made.read_text().strip()})")
        return models_dir, False
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_checkpoints.py"), str(models_dir),
                    "--size", size, "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL)
    return models_dir, True


def model_paths(models_dir: Path) -> ModelPaths:
    return ModelPaths.resolve(models_dir / "config.yaml", w2v_bert=models_dir / "w2v-bert-2.0",
                              semantic_codec=models_dir / "semantic_codec" / "model.safetensors")


def draw_durations(count: int, min_seconds: float, max_seconds: float, seed: int = 0,
                   spread: str = "uniform") -> np.ndarray:
    rng = np.random.default_rng(seed)
    if spread == "log-uniform":
        return np.exp(rng.uniform(math.log(min_seconds), math.log(max_seconds), count))
    return rng.uniform(min_seconds, max_seconds, count)


def generate_corpus(out: Path, count: int, min_seconds: float, max_seconds: float, seed: int = 0,
                    spread: str = "uniform") -> tuple[Path, float]:
    """Synthetic utterances with durations spread between the bounds -> (manifest, audio seconds)."""
    durations = draw_durations(count, min_seconds, max_seconds, seed, spread)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    lines, total = [], 0.0
    for i, seconds in enumerate(durations):
        lang, _, sentence = SENTENCES[i % len(SENTENCES)]
        rate = RATES[i % len(RATES)]
        n = int(round(seconds * rate))
        voice = synthetic_voice("x" * 150, seed * 100003 + i, rate)  # 12 s, tiled to length
        name = f"audio/bench_{i:05d}.wav"
        sf.write(out / name, np.resize(voice, n), rate, subtype="PCM_16")
        # text grows with the audio, about one sentence per 4 s, as in read speech
        text = " ".join([sentence] * max(1, math.ceil(seconds / 4)))
        lines.append({"id": f"bench_{i:05d}", "text": text, "audio": name, "speaker": f"{lang}_spk{i % 3}",
                      "language": lang, "duration": round(n / rate, 3)})
        total += n / rate
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return manifest, total


def job_options(args, manifest: Path, store: Path, paths: ModelPaths, models_dir: Path) -> pipeline.JobOptions:
    return pipeline.JobOptions(manifest=manifest, output_dir=store, models=paths,
                               tokenizer=models_dir / "bpe.model", batch_size=args.batch_size,
                               workers=args.workers, device=args.device, precision=args.precision,
                               format=args.format, latent_dtype=args.latent_dtype, progress=False)


def model_sizes(bundle: ModelBundle) -> dict:
    """Parameters and resident bytes (parameters + buffers) of each loaded module."""
    parts = {"w2v_bert": bundle.encoder, "standardizer": bundle.standardizer,
             "semantic_codec": bundle.codec, "conditioning_heads": bundle.heads}
    out = {}
    for name, m in parts.items():
        tensors = list(m.parameters()) + list(m.buffers())
        out[name] = {"parameters": sum(p.numel() for p in m.parameters()),
                     "bytes": sum(t.numel() * t.element_size() for t in tensors)}
    return {"parameters": sum(v["parameters"] for v in out.values()),
            "resident_bytes": sum(v["bytes"] for v in out.values()), "modules": out}


def checkpoint_parameters(paths: ModelPaths) -> dict:
    """Parameters stored in the safetensors files (whole w2v-BERT, codec with its decoder), read
    from the headers: what a loader that takes everything would hold."""
    from safetensors import safe_open

    out = {}
    files = {"w2v_bert": sorted(paths.w2v_bert.glob("*.safetensors")), "semantic_codec": [paths.semantic_codec]}
    for name, group in files.items():
        total = 0
        for path in group:
            with safe_open(str(path), "pt") as f:
                total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        out[name] = total
    return out


# -- end to end -----------------------------------------------------------------------------

class RunLog:
    """Times every ModelBundle.run of real batches; calls made while the budget is probed are
    kept apart (the probe runs synthetic worst-case batches through the same bundle)."""

    def __init__(self):
        self.calls: list[tuple[float, float, int, int, int]] = []   # (start, end, B, T, sum T_i)
        self.probing = False
        self.probe_seconds = 0.0
        self.probe_cost: float | None = None

    def instrument(self, bundle: ModelBundle) -> ModelBundle:
        run = bundle.run

        def timed_run(features, frames, lengths):
            t0 = time.perf_counter()
            out = run(features, frames, lengths)   # returns host arrays: the device is done
            if not self.probing:
                self.calls.append((t0, time.perf_counter(), int(features.shape[0]),
                                   int(features.shape[1]), sum(c.size for c in out.codes)))
            return out

        bundle.run = timed_run
        return bundle

    def probe_marker(self, probe):
        def marked(bundle, device, *a, **kw):
            self.probing, t0 = True, time.perf_counter()
            try:
                self.probe_cost = probe(bundle, device, *a, **kw)
                return self.probe_cost
            finally:
                self.probing = False
                self.probe_seconds += time.perf_counter() - t0
                torch.cuda.reset_peak_memory_stats(device)  # the probe fills memory on purpose
        return marked


def run_end_to_end(opts: pipeline.JobOptions, log: RunLog, layer: int = 17) -> tuple[dict, ModelBundle | None]:
    from preprocess.provenance import describe_inputs

    loaded: dict = {}

    def load() -> ModelBundle:
        loaded["bundle"] = log.instrument(ModelBundle.load(opts.models, layer=layer))
        return loaded["bundle"]

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    sampler = TreeRss()
    sampler.start()
    # pipeline.auto_budget imports probe_batch_budget from the bundle module when it runs
    original_probe = bundle_module.probe_batch_budget
    bundle_module.probe_batch_budget = log.probe_marker(original_probe)
    try:
        t_start = time.perf_counter()
        provenance = describe_inputs(opts.models, opts.tokenizer, opts.output_dir)
        t_hashed = time.perf_counter()
        summary = pipeline.run_job(opts, bundle=load, provenance=provenance)
        t_end = time.perf_counter()
    finally:
        bundle_module.probe_batch_budget = original_probe
        tree_peak = sampler.stop()

    wall = t_end - t_start
    calls = log.calls
    first_end, last_end = (calls[0][1], calls[-1][1]) if calls else (t_end, t_end)
    window = last_end - first_end
    steady_seconds = sum(e - s for s, e, *_ in calls[1:])
    # audio of batches 2..n, apportioned by their share of the code frames
    steady_share = sum(c[4] for c in calls[1:]) / max(1, sum(c[4] for c in calls))
    valid = summary.audio_seconds
    result = {
        "utterances": summary.processed, "rejected": summary.rejected,
        "workers": pipeline.resolve_workers(opts.workers), "main_torch_threads": torch.get_num_threads(),
        "audio_seconds": round(valid, 3), "wall_seconds": round(wall, 3),
        "audio_seconds_per_second": valid / wall if wall else 0.0,
        "utterances_per_second": summary.processed / wall if wall else 0.0,
        "padding_efficiency": summary.padding_efficiency,
        "batches": len(calls), "batch_shapes": [f"{c[2]}x{c[3]}" for c in calls],
        "batch_seconds": [round(e - s, 3) for s, e, *_ in calls],
        "warmup_seconds": round(first_end - t_start, 3), "window_seconds": round(window, 3),
        "tail_seconds": round(t_end - last_end, 3),
        "model_seconds": round(sum(e - s for s, e, *_ in calls), 3),
        "device_seconds": round(summary.device_seconds, 3),
        "device_busy_fraction": steady_seconds / window if window > 0 else None,
        "steady_audio_seconds_per_second": valid * steady_share / window if window > 0 else None,
        "stage_seconds": {"hash_inputs": round(t_hashed - t_start, 3),
                          **{k: round(v, 3) for k, v in summary.stage_seconds.items()},
                          "budget_probe": round(log.probe_seconds, 3)},
        "peak_rss_mib": {**peak_rss_mib(), "tree_sampled": round(tree_peak / MIB)},
        "peak_device_memory_mib": (round(torch.cuda.max_memory_allocated() / MIB)
                                   if torch.cuda.is_available() and opts.device != "cpu" else None),
    }
    return result, loaded.get("bundle")


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


# -- model only -----------------------------------------------------------------------------

def prepare_inputs(plan: pipeline.Plan, batches: list[list[int]], tokenizer: Path, resample: str):
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
                wave, sr = load_audio(item.audio_path)
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
    bundle.to(device, pipeline.PRECISIONS[low])
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
    budget, --batch-size, or --budget-cost (e.g. a cost a GPU run measured)."""
    from preprocess.batching import frames_for_seconds, padding_efficiency

    opts = pipeline.JobOptions(manifest=args.manifest or Path("-"), output_dir=Path("-"), models=None,
                               tokenizer=Path("-"), batch_size=args.batch_size)
    if args.manifest is not None:
        plan = pipeline.make_plan(opts, set(), set())
        frames, seconds = plan.frames, plan.seconds
    else:
        seconds = sorted(draw_durations(args.generate, args.min_seconds, args.max_seconds, args.seed,
                                        args.spread).tolist(), reverse=True)
        frames = [max(1, frames_for_seconds(x)) for x in seconds]
        plan = pipeline.Plan(items=[None] * len(frames), frames=frames, seconds=seconds,
                             todo=[True] * len(frames), rejects=[], skipped_done=0, line_of={})
    if args.budget_cost:
        budget = Budget(cost=args.budget_cost)
    else:
        budget = pipeline.auto_budget(opts, None, torch.device("cpu"), max(frames))
    batches = plan.batches(budget)
    sizes = [len(b) for b in batches]
    n = len(frames)
    return {"utterances": n, "audio_seconds": round(sum(seconds), 3), "budget_cost": budget.cost,
            "max_items": budget.max_items, "batches": len(batches),
            "items_per_batch": {"min": min(sizes), "mean": round(n / len(batches), 2), "max": max(sizes)},
            "padding_efficiency": padding_efficiency([[frames[i] for i in b] for b in batches])}


# -- feature stores: tools/bench_store.py ---------------------------------------------------

def store_benchmark(args) -> dict:
    import bench_store

    return bench_store.store_benchmark(args)


# -- main -----------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=("tiny", "full"), default="tiny")
    ap.add_argument("--models", type=Path, default=None,
                    help="checkpoint directory, made with make_checkpoints if absent "
                         "(default: <tmp>/preprocess-bench-models-SIZE, kept for reuse)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--manifest", type=Path, default=None)
    src.add_argument("--generate", type=int, default=40, metavar="N", help="generated utterances")
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--max-seconds", type=float, default=30.0)
    ap.add_argument("--spread", choices=("uniform", "log-uniform"), default="uniform")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--precision", choices=tuple(pipeline.PRECISIONS), default="fp32")
    ap.add_argument("--batch-size", type=int, default=0, help="0: the job's automatic budget")
    ap.add_argument("--workers", type=int, default=0, help="CPU worker processes, 0: automatic")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads of the main process, 0: torch's default")
    ap.add_argument("--mode", choices=("end-to-end", "model-only", "both", "plan", "store"), default="both",
                    help="plan: padding of the planned batches only, for --generate N durations; "
                         "store: the feature store alone, --generate N synthetic utterances")
    ap.add_argument("--budget-cost", type=float, default=None,
                    help="plan mode: batch cost budget (batching.batch_cost units) instead of the CPU one")
    ap.add_argument("--format", choices=("npy", "zarr"), default="npy")
    ap.add_argument("--latent-dtype", choices=("float32", "float16"), default="float32",
                    help="stored dtype of condition and emo_vec (float16: zarr only)")
    ap.add_argument("--reads", type=int, default=2000,
                    help="store mode: random single-utterance reads, warm and cold")
    import bench_store

    bench_store.add_arguments(ap)
    ap.add_argument("--precision-compare", choices=("bf16", "fp16"), default=None,
                    help="also run the model-only batches in fp32 and in this precision and compare")
    ap.add_argument("--out", type=Path, default=None,
                    help="work directory (default: a temporary one, removed)")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    """Run the benchmark that `argv` asks for; print the report as JSON and return it."""
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine_info(),
              "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if args.mode == "plan":
        report["plan"] = plan_only(args)
    elif args.mode == "store":
        report.update(store_benchmark(args))
    else:
        report.update(benchmark(args))
    print(json.dumps(report, indent=1))
    return report


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
        device = pipeline.resolve_device(args.device)
        plan = pipeline.make_plan(opts, set(), set())
        report["corpus"] = {"manifest": str(manifest), "utterances": len(plan.items),
                            "audio_seconds": round(corpus_seconds if corpus_seconds is not None
                                                   else sum(plan.seconds), 3),
                            "min_seconds": round(min(plan.seconds), 3) if plan.seconds else None,
                            "max_seconds": round(max(plan.seconds), 3) if plan.seconds else None,
                            "rejected_at_plan": len(plan.rejects)}
        report["models"] = {"size": args.size, "dir": str(models_dir), "made_this_run": made}

        bundle, log = None, RunLog()
        if args.mode in ("end-to-end", "both"):
            report["end_to_end"], bundle = run_end_to_end(opts, log, opts.layer)
            report["end_to_end"]["read_back"] = read_back(store)
        if bundle is None:
            bundle = ModelBundle.load(paths, layer=opts.layer).to(device, pipeline.PRECISIONS[args.precision])
        report["models"].update(model_sizes(bundle), dtype=str(bundle.dtype).replace("torch.", ""),
                                checkpoint_file_parameters=checkpoint_parameters(paths))

        if args.mode in ("model-only", "both") or args.precision_compare:
            if log.probe_cost is not None:   # the budget the job measured: the same batches
                budget = Budget(cost=log.probe_cost)
            else:
                budget = pipeline.auto_budget(opts, bundle, device, max(plan.frames))
            batches = plan.batches(budget)
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


if __name__ == "__main__":
    main()
