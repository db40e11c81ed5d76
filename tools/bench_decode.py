"""Decoding from every source kind against loose files: the CPU stage's read + decode.

    python tools/bench.py --mode decode [--count 200] [--min-seconds 2 --max-seconds 15]
        [--formats flac,mp3,wav] [--rate 24000] [--per-shard 100] [--rounds 2]
        [--kinds loose,tar,parquet,arrow,lhotse] [--out report.json]

Self-contained: writes a synthetic corpus (tools/make_sample.py's voice; the formats in turn,
durations uniform between the bounds, deterministic) as loose files with a JSONL manifest to a
temporary directory, repacks it with tools/repack.py as tar shards, Parquet files, an Arrow
dataset folder and Lhotse manifests, then for each kind:

    plan     preprocess.plan.make_plan: read the source, probe every header (threads, as a job)
    decode   preprocess.audio.load_audio of every planned item on one thread, in plan order
             (longest first, so reads jump between shards and row groups as a worker's do)

and reports seconds and audio seconds per second of each, and decode throughput relative to
loose files. Rounds alternate the kinds' order; the best round counts. The page cache is warm
after the first round: the figures are of decode and container overhead, not of the disk.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tools"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

KINDS = ("loose", "tar", "parquet", "arrow", "lhotse")


def write_corpus(root: Path, count: int, lo: float, hi: float, formats: list[str], rate: int,
                 seed: int) -> Path:
    import numpy as np
    import soundfile as sf
    from make_sample import synthetic_voice

    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True)
    lines = []
    for i in range(count):
        seconds = float(rng.uniform(lo, hi))
        wave = np.resize(synthetic_voice("x" * 40, i, rate), int(seconds * rate)).astype(np.float32)
        ext = formats[i % len(formats)]
        sf.write(root / "audio" / f"u{i:05d}.{ext}", wave, rate)
        lines.append({"id": f"u{i:05d}", "text": "synthetic", "audio": f"audio/u{i:05d}.{ext}"})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest


def measure(source) -> dict:
    import torch

    from preprocess.audio import load_audio
    from preprocess.options import JobOptions, Limits
    from preprocess.plan import make_plan

    # no duration limits: every clip is decoded, whatever the bounds asked for
    opts = JobOptions(manifest=source, output_dir=Path("-"), models=None, tokenizer=Path("-"),
                      limits=Limits(0.0, float("inf")))
    t0 = time.perf_counter()
    plan = make_plan(opts, set(), set())
    plan_seconds = time.perf_counter() - t0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        audio = 0.0
        for item in plan.items:
            wave, sr = load_audio(item.audio)
            audio += len(wave) / sr
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        torch.set_num_threads(threads)
    return {"items": len(plan.items), "rejects": len(plan.rejects), "audio_seconds": round(audio, 2),
            "plan_seconds": round(plan_seconds, 3), "decode_wall_seconds": round(wall, 3),
            "decode_cpu_seconds": round(cpu, 3),
            "decode_audio_seconds_per_cpu_second": round(audio / cpu, 1) if cpu else None}


def run(args) -> dict:
    from repack import repack

    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        root = Path(args.out_dir) if args.out_dir else Path(tmp)
        manifest = write_corpus(root / "loose", args.count, args.min_seconds, args.max_seconds,
                                args.formats.split(","), args.rate, args.seed)
        sources = {"loose": manifest}
        for kind in args.kinds.split(","):
            if kind == "loose":
                continue
            files, _ = repack(manifest, root / kind, kind, per_shard=args.per_shard)
            sources[kind] = files if kind == "lhotse" else root / kind
        kinds = [k for k in args.kinds.split(",") if k in sources]
        best: dict[str, dict] = {}
        for r in range(args.rounds):
            for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                got = measure(sources[kind])
                if kind not in best or got["decode_cpu_seconds"] < best[kind]["decode_cpu_seconds"]:
                    best[kind] = got
        base = best.get("loose", {}).get("decode_cpu_seconds")
        for got in best.values():
            if base and got["decode_cpu_seconds"]:
                got["decode_throughput_vs_loose"] = round(base / got["decode_cpu_seconds"], 3)
        return {"corpus": {"count": args.count, "seconds": [args.min_seconds, args.max_seconds],
                           "formats": args.formats, "rate": args.rate, "per_shard": args.per_shard},
                "sources": best}


def main(argv=None) -> dict:
    from benchlib import machine_info

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--max-seconds", type=float, default=15.0)
    ap.add_argument("--formats", default="flac,mp3,wav")
    ap.add_argument("--rate", type=int, default=24000)
    ap.add_argument("--per-shard", type=int, default=100, help="records per tar shard or table file")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=None, help="keep the corpora here (default: a temporary directory)")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = ap.parse_args(argv)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine_info(),
              "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    report.update(run(args))
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
