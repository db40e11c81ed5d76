"""`tools/bench.py --mode allocator`: the model stage with glibc's defaults against freed memory
kept in the heap (preprocess/heap.py), same random inputs, each in a fresh process.

Per variant, one process loads the bundle, sets its threads (`--threads`, 0: torch's default)
and runs `ModelBundle.run` on one utterance of each length in `FRAMES` (stacked frames, 50 per
second of audio): once untimed, then `--rounds` timed runs (at least 3). The report gives the
best and median seconds per length, the speed-up, the process's minor page faults and peak
resident size, and whether the outputs (codes, condition, emo_vec) were byte-identical.

    python tools/bench.py --mode allocator --size full --models DIR [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import ROOT, HostLoad, ensure_models, model_paths

FRAMES = (250, 500, 750)


def child(variant: str, models: Path, threads: int, rounds: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import time

    import torch

    from preprocess.heap import keep_freed_memory
    from preprocess.models.bundle import ModelBundle

    took = keep_freed_memory() if variant == "kept" else None
    bundle = ModelBundle.load(model_paths(models))
    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    per_length = {}
    for T in FRAMES:
        features, frames = torch.randn(1, T, 160, generator=g), torch.tensor([T])
        bundle.run(features, frames, frames)
        seconds = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            out = bundle.run(features, frames, frames)
            seconds.append(time.perf_counter() - t0)
        seconds.sort()
        digest = hashlib.sha256(out.codes[0].tobytes() + out.condition.tobytes() + out.emo_vec.tobytes())
        per_length[T] = {"best_seconds": round(seconds[0], 3), "median_seconds": round(seconds[len(seconds) // 2], 3),
                         "outputs_sha256": digest.hexdigest()}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"heap_setting_took": took, "torch_threads": torch.get_num_threads(), "per_frames": per_length,
            "minor_faults": usage.ru_minflt, "peak_rss_mib": usage.ru_maxrss // 1024}


def allocator_benchmark(args) -> dict:
    load = HostLoad()
    models_dir = args.models or Path(tempfile.gettempdir()) / f"preprocess-bench-models-{args.size}"
    models_dir, _ = ensure_models(models_dir, args.size, args.seed)
    rounds = max(3, args.rounds)
    runs = {}
    for variant in ("default", "kept"):
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), variant, str(models_dir),
                              str(args.threads), str(rounds)], check=True, capture_output=True, text=True)
        runs[variant] = json.loads(out.stdout.splitlines()[-1])
    speedup = {T: round(runs["default"]["per_frames"][str(T)]["best_seconds"]
                        / runs["kept"]["per_frames"][str(T)]["best_seconds"], 3) for T in FRAMES}
    identical = all(runs["default"]["per_frames"][str(T)]["outputs_sha256"]
                    == runs["kept"]["per_frames"][str(T)]["outputs_sha256"] for T in FRAMES)
    return {"allocator": {"frames": list(FRAMES), "rounds": rounds, "runs": runs,
                          "speedup_best": speedup, "outputs_identical": identical, "load": load.report()}}


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
