"""Feature-store benchmark: write N synthetic utterances through OutputDir, read them back.

    python tools/bench_store.py [--format npy|zarr] [--latent-dtype float32|float16]
        [--zarr-codec own|api] [--generate N] [--batch-size 256] [--reads 2000] [--out DIR]
    python tools/bench.py --mode store ...      (the same, from the main benchmark)

No audio, no models: `--generate N` synthetic utterances are written through OutputDir in
batches of `--batch-size` (0: 256) in `--format` (zarr as the job opens it: flush_rows=1024),
then files and bytes on disk, the latency of reading one utterance through FeatureReader (warm,
and cold after evicting the store's pages) and the time to load every utterance's codes.
Write seconds run from opening OutputDir to the end of finalize and close; making the random
data is timed apart and excluded.

`--zarr-codec` chooses how the packed store's shard files are written: `own` is the store's
shard encoder (preprocess/store/zarr/codec.py), `api` hands the same whole, shard-aligned blocks
to zarr's own `Array.__setitem__` (same layout, same durable store). Comparing the two is how the
encoder's reason to exist is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIB = 1 << 20


def zarr_version() -> str:
    import zarr

    return zarr.__version__


def zarr_api_writer():
    """The packed store's writer with its shard files written by zarr's own API: the same
    whole, shard-aligned blocks (the job's 1,024-row flushes) handed to `Array.__setitem__`,
    through the same durable store. For measuring the shard codec against, not for use."""
    from preprocess.store.zarr.writer import ZarrWriter

    class ZarrApiWriter(ZarrWriter):
        def _put(self, name: str, start: int, values: np.ndarray) -> None:
            spec = self.specs[name]
            arr = self._arrays[name]
            arr.resize((start + len(values), *spec.row_shape))
            arr[start:start + len(values)] = np.ascontiguousarray(values, dtype=spec.dtype)

    return ZarrApiWriter


def open_writer(out: Path, fmt: str, latent_dtype: str, codec: str = "own"):
    """The writer the job opens for `fmt`; with codec "api", the packed store writes its shards
    through zarr's API instead of its own encoder."""
    from preprocess.store.formats import open_writer as job_writer

    if fmt == "zarr" and codec == "api":
        from preprocess.store.zarr.writer import JOB_FLUSH_ROWS

        return zarr_api_writer()(out, latent_dtype, flush_rows=JOB_FLUSH_ROWS)
    return job_writer(out, fmt, latent_dtype)


STORE_NOTE = ("condition and emo_vec are standard-normal random floats, which zstd cannot compress: "
              "the zarr store holds them at about raw size (real latents are mostly mantissa noise "
              "too, so compress little). Codes and text ids are uniform random, less compressible "
              "than real ones.")


def synthetic_utterances(rng: np.random.Generator, first: int, count: int,
                         condition_len: int = 32, dim: int = 1280) -> list:
    """`count` utterances of realistic sizes: text ids 10..150 tokens, codes 50..1500 (1..30 s at
    50 Hz) in [0, 8192), condition [32, 1280] and emo_vec [1280] float32 from N(0, 1)."""
    from preprocess.store.features import UtteranceFeatures

    text_lens = rng.integers(10, 151, count)
    code_lens = rng.integers(50, 1501, count)
    condition = rng.standard_normal((count, condition_len, dim), dtype=np.float32)
    emo_vec = rng.standard_normal((count, dim), dtype=np.float32)
    return [UtteranceFeatures(id=f"store_{first + i:07d}",
                              text_ids=rng.integers(0, 12000, text_lens[i], dtype=np.int32),
                              codes=rng.integers(0, 8192, code_lens[i], dtype=np.int32),
                              condition=condition[i], emo_vec=emo_vec[i]) for i in range(count)]


def write_store(out: Path, fmt: str, latent_dtype: str, count: int, batch: int, seed: int,
                codec: str = "own") -> dict:
    """Write `count` synthetic utterances through OutputDir as the job does (a commit per batch,
    finalize, close) and time it, leaving out the time spent making the data."""
    from preprocess.store.dataset import OutputDir

    rng = np.random.default_rng(seed)
    totals = {"text_ids": 0, "codes": 0, "id_bytes": 0, "feature_bytes": 0}
    commit_seconds, generate_seconds = [], 0.0
    t_start = time.perf_counter()
    output = OutputDir(out, f"bench-store {fmt} {latent_dtype} {codec}",
                       lambda: open_writer(out, fmt, latent_dtype, codec))
    open_seconds = time.perf_counter() - t_start
    try:
        for first in range(0, count, batch):
            t0 = time.perf_counter()
            items = synthetic_utterances(rng, first, min(batch, count - first))
            entries = []
            for it in items:
                base = {"id": it.id, "audio_path": f"audio/{it.id}.wav", "text": "synthetic",
                        "speaker": f"spk{int(it.id[-3:]) % 100}", "language": "en",
                        "duration": round(it.codes.size / 50, 3)}
                entries.append(("train", base, it.text_ids.size, it.codes.size, {}, it))
                totals["text_ids"] += it.text_ids.size
                totals["codes"] += it.codes.size
                totals["id_bytes"] += len(it.id.encode())
                # the arrays as the trainer gets them: int32 ids, float32 latents
                totals["feature_bytes"] += sum(a.nbytes for a in (it.text_ids, it.codes, it.condition, it.emo_vec))
            t1 = time.perf_counter()
            output.commit(entries)
            commit_seconds.append(time.perf_counter() - t1)
            generate_seconds += t1 - t0
        t_final = time.perf_counter()
        output.finalize()
    finally:
        output.close()
    t_end = time.perf_counter()
    seconds = t_end - t_start - generate_seconds
    return {"utterances": count, "batch_size": batch, "flush_rows": getattr(output.store, "flush_rows", None),
            "totals": totals,
            "seconds": round(seconds, 3), "open_seconds": round(open_seconds, 3),
            "commit_seconds": round(sum(commit_seconds), 3),
            "commit_seconds_median": round(float(np.median(commit_seconds)), 4) if commit_seconds else None,
            "commit_seconds_max": round(max(commit_seconds), 3) if commit_seconds else None,
            "finalize_close_seconds": round(t_end - t_final, 3),
            "generate_seconds_excluded": round(generate_seconds, 3),
            "utterances_per_second": count / seconds if seconds else None,
            "feature_mib_per_second": totals["feature_bytes"] / MIB / seconds if seconds else None}


def disk_usage(root: Path) -> dict:
    """Files under `root`, their apparent bytes and the bytes allocated for them."""
    files = size = allocated = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            st = os.stat(os.path.join(dirpath, name))
            files, size, allocated = files + 1, size + st.st_size, allocated + st.st_blocks * 512
    return {"files": files, "bytes": size, "allocated_bytes": allocated}


def evict_page_cache(root: Path) -> int:
    """Ask the kernel to drop the cached pages of every file under `root` (posix_fadvise
    DONTNEED, no privileges needed; pages must be clean, hence the sync first). The VM's host
    may still cache them, so reads afterwards are cold for this machine only. -> files"""
    from preprocess.store.fsutil import syncfs

    syncfs(root)
    count = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            count += 1
    return count


def latency_ms(reader, indices: np.ndarray) -> dict:
    """Milliseconds per `reader[i]` (all four features of one utterance), one call at a time."""
    times = np.empty(len(indices))
    for k, i in enumerate(indices):
        t0 = time.perf_counter()
        reader[int(i)]
        times[k] = time.perf_counter() - t0
    times *= 1000
    return {"reads": len(indices), "median_ms": round(float(np.median(times)), 4),
            "p95_ms": round(float(np.percentile(times, 95)), 4), "mean_ms": round(float(times.mean()), 4),
            "max_ms": round(float(times.max()), 3)}


def read_store(out: Path, reads: int, seed: int) -> dict:
    """Random reads of one utterance, warm (the same utterances read once before) and cold (a
    fresh reader after evicting the store's pages), then a bulk load of every utterance's codes,
    cold and again warm."""
    from preprocess.store.reader import FeatureReader

    rng = np.random.default_rng(seed + 1)
    result: dict = {}
    t0 = time.perf_counter()
    with FeatureReader.open(out) as reader:
        result["open_seconds_warm"] = round(time.perf_counter() - t0, 3)
        n = len(reader)
        indices = rng.integers(0, n, reads)
        item = reader[int(indices[0])]
        result["item_shapes"] = {k: list(item[k].shape) for k in ("text_ids", "codes", "condition", "emo_vec")}
        for i in indices:   # bring these utterances into the page cache and the reader's state
            reader[int(i)]
        result["warm"] = latency_ms(reader, rng.permutation(indices))

    result["evicted_files"] = evict_page_cache(out)
    t0 = time.perf_counter()
    with FeatureReader.open(out) as reader:
        result["open_seconds_cold"] = round(time.perf_counter() - t0, 3)
        result["cold"] = latency_ms(reader, rng.integers(0, n, reads))

    evict_page_cache(out)
    with FeatureReader.open(out) as reader:
        t0 = time.perf_counter()
        codes = reader.all_codes()
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        reader.all_codes()
        warm = time.perf_counter() - t0
    result["bulk_codes"] = {"utterances": len(codes), "codes": int(sum(c.size for c in codes)),
                            "seconds_cold": round(cold, 3), "seconds_warm": round(warm, 3)}
    return result


def store_benchmark(args) -> dict:
    if args.format == "npy" and args.latent_dtype != "float32":
        raise SystemExit("--latent-dtype float16 needs --format zarr (the npy layout is float32)")
    from benchlib import HostLoad, peak_rss_mib

    load = HostLoad()
    work = args.out or Path(tempfile.mkdtemp(prefix="preprocess-bench-store-"))
    out = work / "store"
    shutil.rmtree(out, ignore_errors=True)
    try:
        report = {"format": args.format, "latent_dtype": args.latent_dtype, "note": STORE_NOTE}
        if args.format == "zarr":
            report["zarr"] = {"version": zarr_version(), "codec": args.zarr_codec}
        report["write"] = write_store(out, args.format, args.latent_dtype, args.generate,
                                      args.batch_size or 256, args.seed, args.zarr_codec)
        report["disk"] = disk_usage(out)
        if args.format == "zarr":
            from preprocess.store.zarr import STORE_DIR, estimate_file_count

            totals = report["write"]["totals"]
            report["disk"]["feature_files"] = disk_usage(out / STORE_DIR)["files"]
            report["disk"]["estimated_feature_files"] = estimate_file_count(
                args.generate, totals["text_ids"], totals["codes"], totals["id_bytes"])
        else:
            from preprocess.store.npy import FEATURE_DIRS

            report["disk"]["feature_files"] = sum(disk_usage(out / d)["files"] for d in FEATURE_DIRS)
        report["write"]["disk_mib_per_second"] = (report["disk"]["bytes"] / MIB / report["write"]["seconds"]
                                                  if report["write"]["seconds"] else None)
        report["read"] = read_store(out, args.reads, args.seed)
        return {"store": report, "load": load.report(), "peak_rss_mib": peak_rss_mib()}
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of the store benchmark that tools/bench.py does not already have."""
    ap.add_argument("--zarr-codec", choices=("own", "api"), default="own",
                    help="zarr: shard files by the store's encoder (own) or zarr's setitem (api)")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generate", type=int, default=1000, metavar="N", help="synthetic utterances")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=0, help="utterances per commit, 0: 256")
    ap.add_argument("--format", choices=("npy", "zarr"), default="npy")
    ap.add_argument("--latent-dtype", choices=("float32", "float16"), default="float32",
                    help="stored dtype of condition and emo_vec (float16: zarr only)")
    ap.add_argument("--reads", type=int, default=2000, help="random single-utterance reads, warm and cold")
    ap.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one, removed)")
    add_arguments(ap)
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    """Run the store benchmark; print the report as JSON and return it."""
    from benchlib import machine_info

    args = parse_args(argv)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine_info(),
              "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    report.update(store_benchmark(args))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "tools"))
    main()
