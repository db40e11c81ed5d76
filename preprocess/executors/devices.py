"""One worker process per local device, each an in-process job on its share of the plan.

The launching process plans once (skipping what is done), deals the remaining utterances out in
duration-balanced shares, and runs one worker per device, each writing its own sub-store under
OUT/shards/<k>/ with the job's fingerprint. When all finish, the shards are adopted into OUT
(store.shards.merge_shards: data before manifest lines, a shard deleted only once adopted), so
a crash mid-merge loses nothing and a rerun (or `preprocess merge OUT`) completes it.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import sys
from dataclasses import replace

from ..contract import SHARDS
from ..store.dataset import fault_point
from ..store.shards import merge_shards


TEXT_SOURCES = "text_sources"  # on the progress queue: a worker's RunSummary.text_sources


class WorkerFailed(RuntimeError):
    """A device worker exited with an error; what it finished was merged."""


def parse_devices(value: str) -> list[str]:
    """'all' (every visible GPU) or a list like '0,1,cuda:3'."""
    import torch

    if value == "all":
        n = torch.cuda.device_count()
        if n == 0:
            raise ValueError("--devices all: no CUDA device is available")
        return [f"cuda:{i}" for i in range(n)]
    return [part if not part.isdigit() else f"cuda:{part}"
            for part in (p.strip() for p in value.split(","))]


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


class OnePerDevice:
    def __init__(self, devices: list[str]):
        self.devices = devices

    def before_plan(self, job, output) -> None:
        merge_shards(output)  # what an interrupted run finished is adopted, not redone

    def execute(self, job, plan, output, summary) -> None:
        from tqdm import tqdm

        todo = plan.todo_indices()
        dealt = deal_shares([plan.frames[i] for i in todo], len(self.devices))
        shares = [[todo[j] for j in share] for share in dealt if share]
        ctx = mp.get_context("spawn")
        progress = ctx.Queue()
        procs = []
        for k, share in enumerate(shares):
            ids = frozenset(plan.items[i].record.id for i in share)
            sub = replace(job.opts, output_dir=job.opts.output_dir / SHARDS / str(k),
                          device=self.devices[k], only_ids=ids, shard=None, progress=False, force=False)
            p = ctx.Process(target=_device_worker, args=(sub, job.provenance, progress), daemon=False)
            p.start()
            procs.append(p)
        bar = tqdm(total=round(plan.audio_seconds, 1), unit="s audio", disable=not job.opts.progress,
                   file=sys.stderr, desc=f"preprocess x{len(procs)}", mininterval=1.0)
        try:
            while any(p.is_alive() for p in procs) or not progress.empty():
                try:
                    n, secs = progress.get(timeout=0.5)
                except queue.Empty:
                    continue
                if n == TEXT_SOURCES:  # a worker's last message: where its text ids came from
                    summary.text_sources = summary.text_sources or {}
                    for key, count in secs.items():
                        summary.text_sources[key] = summary.text_sources.get(key, 0) + count
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


def _device_worker(opts, provenance: dict, progress) -> None:
    from ..job import Job
    from ..prepare import exit_with_parent
    from .inprocess import InProcess

    exit_with_parent()
    # The launcher's provenance already holds the options; Job adds them again, unchanged.
    base = {k: v for k, v in provenance.items() if k != "options"}
    try:
        done = Job(opts, base).run(InProcess(on_progress=lambda n, s: progress.put((n, s))))
        if done.text_sources is not None:
            progress.put((TEXT_SOURCES, done.text_sources))
    except KeyboardInterrupt:
        sys.exit(130)
