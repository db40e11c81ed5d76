"""Benchmarks of `preprocess-data` on random-weight checkpoints; each prints one JSON object.

    python tools/bench.py --mode MODE [--size tiny|full] [--models DIR] [--manifest M | --generate N
        --min-seconds 1 --max-seconds 30 --spread uniform|log-uniform] [--device auto|cpu|cuda]
        [--precision fp32|bf16|fp16] [--batch-size 0] [--workers 0] [--threads 0] [--out DIR] ...

Modes, each in a module of its own beside this file:
  end-to-end, model-only, both, plan   the job's throughput, timed per batch (bench_job.py)
  reference    our job beside --batch-size 1, beside the old scripts' sequential loop over the
               same model code and beside that loop with the scripts' own model calls, one run,
               same corpus (bench_reference.py)
  allocator    the model stage with glibc's defaults against freed memory kept in the heap
               (preprocess/heap.py), model-only, one utterance per length (bench_allocator.py)
  store        the feature stores alone: write, files, read latency (bench_store.py)
  cpu-stage    the CPU stage per component and per core (bench_cpu_stage.py)
  decode       reading and decoding from tar shards, Parquet, Arrow and Lhotse manifests against
               loose files (bench_decode.py)
  ray          the Ray engine: per-batch scheduling and transfer against the in-process
               engine on the same batches; the CPU stage on 1..N Ray workers (bench_ray.py)

Generated corpora (`--generate N`): durations drawn uniformly (or log-uniformly) between the
bounds, synthetic voice (tools/make_sample.py) written as 16-bit WAV at 16/22.05/24/44.1/48 kHz in
turn, text in several languages, all deterministic for `--seed`. Without `--out` everything goes
to a temporary directory that is removed. Checkpoints are reused from `--models` (made there
when absent). Record the machine's load (the `load` section) with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

if "cpu-stage" in sys.argv:
    # one BLAS thread, as in a CPU worker; it must be set before numpy loads (bench_cpu_stage.py)
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import torch  # noqa: E402

from benchlib import machine_info  # noqa: E402


def _job(args):
    import bench_job
    if args.mode == "plan":
        return {"plan": bench_job.plan_only(args)}
    return bench_job.benchmark(args)


def _reference(args):
    import bench_reference
    return bench_reference.reference_benchmark(args)


def _allocator(args):
    import bench_allocator
    return bench_allocator.allocator_benchmark(args)


def _store(args):
    import bench_store
    return bench_store.store_benchmark(args)


def _ray(args):
    import bench_ray
    return bench_ray.ray_benchmark(args)


MODES = {"end-to-end": _job, "model-only": _job, "both": _job, "plan": _job,
         "reference": _reference, "allocator": _allocator, "store": _store, "ray": _ray}
# cpu-stage and decode have options of their own: `tools/bench.py --mode cpu-stage --help`
OWN_OPTIONS = {"cpu-stage": "bench_cpu_stage", "decode": "bench_decode"}


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
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    ap.add_argument("--batch-size", type=int, default=0, help="0: the job's automatic budget")
    ap.add_argument("--workers", type=int, default=0, help="CPU worker processes, 0: automatic")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads of the main process, 0: torch's default")
    ap.add_argument("--mode", choices=(*MODES, *OWN_OPTIONS), default="both", help="what to measure (see above)")
    ap.add_argument("--budget-cost", type=float, default=None,
                    help="plan mode: batch cost budget (batching.batch_cost units) instead of the CPU one")
    ap.add_argument("--format", choices=("npy", "zarr"), default="npy")
    ap.add_argument("--latent-dtype", choices=("float32", "float16"), default="float32",
                    help="stored dtype of condition and emo_vec (float16: zarr only)")
    ap.add_argument("--reads", type=int, default=2000,
                    help="store mode: random single-utterance reads, warm and cold")
    ap.add_argument("--precision-compare", choices=("bf16", "fp16"), default=None,
                    help="also run the model-only batches in fp32 and in this precision and compare")
    ap.add_argument("--rounds", type=int, default=2, help="reference mode: interleaved rounds per variant; allocator mode: timed runs per length (at least 3)")
    ap.add_argument("--threads-variant", action="append", metavar="W,M,N",
                    help="reference mode: also run the job with W workers, M model threads, niceness N")
    ap.add_argument("--ray-cpus", type=int, default=0,
                    help="ray mode: largest local cluster of the CPU-stage scaling, 0: the cores")
    import bench_store
    bench_store.add_arguments(ap)
    ap.add_argument("--out", type=Path, default=None,
                    help="work directory (default: a temporary one, removed)")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    """Run the benchmark that `argv` asks for; print the report as JSON and return it."""
    argv = sys.argv[1:] if argv is None else list(argv)
    for mode, module in OWN_OPTIONS.items():
        if mode in argv and argv[argv.index(mode) - 1] == "--mode":
            i = argv.index(mode)
            return __import__(module).main(argv[:i - 1] + argv[i + 1:])
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine_info(),
              "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    report.update(MODES[args.mode](args))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
