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
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .pipeline import JobOptions, RunSummary, make_plan, open_store, output_options, run_job
from .provenance import fingerprint_of
from .contract import SHARDS
from .store.dataset import (ConfigMismatch, OutputDir,
                            OutputExists, fault_point)
from .store.shards import merge_shards
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
