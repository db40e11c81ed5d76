"""Running jobs: several datasets with models loaded once, one worker process per GPU, merges.

With several devices, the launching process plans once (skipping what is done), deals the
remaining utterances out in duration-balanced shares, and runs one worker per device, each
writing its own sub-store under OUT/shards/<k>/. When all finish, the shards are merged into
OUT: files are hard-linked into place before the manifest lines are adopted, and a shard is
deleted only after all of it is adopted, so a crash mid-merge loses nothing and a rerun (or
`preprocess merge OUT`) completes it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .manifest import Reject, read_output_manifest
from .pipeline import JobOptions, RunSummary, make_plan, open_store, output_options, run_job
from .provenance import fingerprint_of
from .contract import MANIFESTS, PATH_KEYS, REJECTS, SHARDS, STATS
from .store.dataset import (ConfigMismatch, OutputDir,
                            OutputExists, fault_point)
from .store.fsutil import syncfs
from .store.journal import Journal
from .store.stats import write_stats


class WorkerFailed(RuntimeError):
    """A device worker exited with an error; what it finished was merged."""


@dataclass
class DatasetSpec:
    language: str | None
    manifest: Path
    output_dir: Path


def parse_dataset(value: str, output_root: Path) -> DatasetSpec:
    """LANG=MANIFEST[=OUT]. Split from the left once and from the right once, so an '=' inside
    the manifest path survives when OUT is given explicitly."""
    lang, sep, rest = value.partition("=")
    if not sep or not lang or not rest:
        raise ValueError(f"--dataset {value!r}: expected LANG=MANIFEST[=OUT]")
    manifest, out = rest, None
    if "=" in rest:
        head, _, tail = rest.rpartition("=")
        if not Path(rest).exists():
            manifest, out = head, tail
    output = Path(out) if out else output_root / f"{lang.lower()}_processed_data"
    return DatasetSpec(lang, Path(manifest), output)


class SharedModels:
    """Loads the model set on first use and hands the same instance to every dataset."""

    def __init__(self, opts: JobOptions):
        self.opts, self.bundle = opts, None

    def __call__(self):
        if self.bundle is None:
            from .models.bundle import ModelBundle
            self.bundle = ModelBundle.load(self.opts.models, layer=self.opts.layer)
        return self.bundle


def _print(message: str, err: bool = False) -> None:
    print(message, file=sys.stderr if err else sys.stdout)


def run_datasets(base: JobOptions, specs: list[DatasetSpec], devices: str | None = None,
                 strict: bool = False, echo=_print) -> int:
    """Run every dataset in turn; returns the process exit code."""
    from .provenance import describe_inputs

    models = SharedModels(base)
    provenance = None
    any_rejects = False
    for spec in specs:
        opts = replace(base, manifest=spec.manifest, output_dir=spec.output_dir,
                       language=spec.language)
        try:
            if provenance is None:
                provenance = describe_inputs(opts.models, opts.tokenizer, opts.output_dir)
            if devices:
                summary = run_on_devices(opts, parse_devices(devices), provenance)
            else:
                summary = run_job(opts, bundle=models, provenance=provenance)
        except (ConfigMismatch, OutputExists) as e:
            echo(f"error: {e}", err=True)
            return 2
        except WorkerFailed as e:
            echo(f"error: {e}", err=True)
            return 1
        except KeyboardInterrupt:
            echo(f"\ninterrupted: work in flight was not marked done; rerun the same command "
                 f"to resume {opts.output_dir}", err=True)
            return 130
        echo(summary.text())
        any_rejects |= summary.stats.get("rejected", 0) > 0
    if strict and any_rejects:
        echo("error: records were rejected and --strict was given (see rejects.jsonl)", err=True)
        return 1
    return 0


def parse_devices(value: str) -> list[str]:
    import torch

    if value == "all":
        n = torch.cuda.device_count()
        if n == 0:
            raise SystemExit("error: --devices all: no CUDA device is available")
        return [f"cuda:{i}" for i in range(n)]
    out = []
    for part in value.split(","):
        part = part.strip()
        out.append(part if not part.isdigit() else f"cuda:{part}")
    return out


def deal_shares(frames: list[int], count: int) -> list[list[int]]:
    """Indices of items (sorted longest first) dealt so each share gets nearly equal audio:
    each item goes to the share with the least audio so far."""
    totals = [0] * count
    shares: list[list[int]] = [[] for _ in range(count)]
    for i, f in enumerate(frames):
        k = min(range(count), key=totals.__getitem__)
        shares[k].append(i)
        totals[k] += f
    return shares


def run_on_devices(opts: JobOptions, devices: list[str], provenance: dict) -> RunSummary:
    from tqdm import tqdm

    t0 = time.perf_counter()
    provenance = {**provenance, "options": output_options(opts)}
    fingerprint = fingerprint_of(provenance)
    output = OutputDir(opts.output_dir, fingerprint,
                       lambda: open_store(opts.output_dir, opts.format, opts.latent_dtype),
                       force=opts.force)
    summary = RunSummary(opts.output_dir)
    try:
        merge_shards(output)
        plan = make_plan(opts, output.done, output.rejected_lines)
        output.add_rejects(plan.rejects)
        summary.skipped_done, summary.rejected = plan.skipped_done, len(plan.rejects)
        shares = [s for s in deal_shares(plan.frames, len(devices)) if s]
        if shares:
            ctx = mp.get_context("spawn")
            progress = ctx.Queue()
            procs = []
            for k, share in enumerate(shares):
                ids = frozenset(plan.items[i].record.id for i in share)
                sub = replace(opts, output_dir=opts.output_dir / SHARDS / str(k), device=devices[k],
                              only_ids=ids, progress=False, force=False)
                p = ctx.Process(target=_device_worker, args=(sub, provenance, progress), daemon=False)
                p.start()
                procs.append(p)
            bar = tqdm(total=round(plan.audio_seconds, 1), unit="s audio", disable=not opts.progress,
                       file=sys.stderr, desc=f"preprocess x{len(procs)}", mininterval=1.0)
            try:
                while any(p.is_alive() for p in procs) or not progress.empty():
                    try:
                        n, secs = progress.get(timeout=0.5)
                    except Exception:
                        continue
                    summary.processed += n
                    summary.audio_seconds += secs
                    bar.update(secs)
            finally:
                bar.close()
                for p in procs:
                    p.join()
            failed = [k for k, p in enumerate(procs) if p.exitcode != 0]
            fault_point("before_merge")
            merge_shards(output)
            if failed:
                raise WorkerFailed(f"worker(s) {failed} failed; what they finished is merged, "
                                   "rerun the same command to resume")
        output.finalize(plan.line_of)
        summary.stats = write_stats(opts.output_dir, provenance)
    finally:
        output.close()
    summary.wall_seconds = time.perf_counter() - t0
    return summary


def _device_worker(opts: JobOptions, provenance: dict, progress) -> None:
    from .pipeline import _exit_with_parent
    _exit_with_parent()
    try:
        run_job(opts, provenance=provenance, on_progress=lambda n, s: progress.put((n, s)))
    except KeyboardInterrupt:
        sys.exit(130)


def merge_shards(output: OutputDir) -> int:
    """Adopt every finished record of OUT/shards/* into OUT, then delete the shards.
    Idempotent: records already adopted are skipped. Returns the number adopted."""
    root = output.path / SHARDS
    if not root.is_dir():
        return 0
    adopted = 0
    for shard in sorted(p for p in root.iterdir() if p.is_dir()):
        fp = Journal.read_fingerprint(shard)
        if fp is None:
            shutil.rmtree(shard)
            continue
        if fp != output.journal.fingerprint:
            raise ConfigMismatch(f"{shard} was made with other settings than {output.path}; "
                                 "remove it or rerun with its settings")
        packed = output.store.format == "zarr"
        sub = OutputDir(shard, fp, open_store(shard, output.store.format,
                                              getattr(output.store, "latent_dtype", "float32")))
        try:
            if packed:
                from .store.zarr import merge_zarr_stores
                rows = merge_zarr_stores([shard], output.store)
            lines = []
            for split, name in MANIFESTS.items():
                for line in read_output_manifest(shard / name)[0]:
                    if line["id"] in output.done:
                        continue
                    if packed:
                        line["row"] = rows[(0, line["row"])]
                    else:
                        for key in PATH_KEYS:
                            _link(shard / line[key], output.path / line[key])
                    lines.append((split, line))
            syncfs(output.path)
            output.adopt(lines)
            adopted += len(lines)
            rejects = read_output_manifest(shard / REJECTS, require_id=False)[0]
            output.add_rejects(Reject(r["line"], r.get("id"), r["stage"], r["reason"]) for r in rejects)
        finally:
            sub.close()
        shutil.rmtree(shard)
    root.rmdir()
    return adopted


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def merge_command(out: Path) -> int:
    """`preprocess merge OUT`: finish a merge that a crash interrupted."""
    fp = Journal.read_fingerprint(out)
    shards = out / SHARDS
    if fp is None:
        found = sorted(shards.glob("*/")) if shards.is_dir() else []
        fp = Journal.read_fingerprint(found[0]) if found else None
    if fp is None:
        raise OutputExists(f"{out}: nothing to merge (no progress file in it or in {shards})")
    shard_dirs = sorted(shards.glob("*/")) if shards.is_dir() else []
    provenance = _stats_provenance(out, *shard_dirs)
    options = provenance.get("options", {})
    fmt = "zarr" if any((d / "features.zarr").exists() for d in [out, *shard_dirs]) else "npy"
    output = OutputDir(out, fp, open_store(out, fmt, options.get("latent_dtype", "float32")))
    try:
        n = merge_shards(output)
        output.finalize()
        write_stats(out, provenance)
    finally:
        output.close()
    return n


def _stats_provenance(*dirs: Path) -> dict:
    """The provenance recorded by the first of `dirs` that finished a stats.json."""
    import json
    for d in dirs:
        try:
            return json.loads((d / STATS).read_text())["provenance"]
        except (OSError, KeyError, ValueError):
            continue
    return {}
