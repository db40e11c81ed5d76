"""`--engine ray`: the plan's batches over a Ray cluster (`pip install -e ".[ray]"`).

    driver (this process): plan -> batches (BatchPlanner, the whole plan, done items included)
      --prepare tasks (CPU stage, chunks of a batch, anywhere in the cluster)--> Prepared
      --DeviceWorker actors (one per GPU, num_gpus=1; CPU actors without GPUs)--> features
      each actor commits every batch whole into its own shard OUT/shards/ray-<n>/
    then the shards are adopted into OUT (store.shards.merge_shards).

Ray is built on tasks and actors; this module uses those directly (Ray Core, the layer Ray Data
is made of): the unit of work is one planned batch, which must be cut by our frame budget from
the whole plan and committed whole into a store the actor owns, and Ray Core schedules exactly
that with no data-format conversion (Ray Data's blocks are Arrow tables of rows).

Why the actors commit, each into its own shard, rather than the driver: features stay on the
node that computed them (a batch's latents are ~170 KB per utterance), writes spread over all
nodes, and "nothing lost or written twice" reduces to what a shard already guarantees:

- a batch is committed whole (OutputDir: arrays, manifest lines, rejects, journal) before the
  actor's call returns, so a batch the driver has seen finish is durable;
- an actor that dies (`ray.kill`, a lost node) is restarted (max_restarts) with the same
  arguments: it reopens the same shard, whose recovery drops a half-done commit, and Ray reruns
  the calls it held (max_task_retries); a rerun batch skips the utterances the shard already
  marks done, so a batch committed just before the death is not written again;
- a batch that fails more often than that (or whose preparation task keeps failing) is split
  into single utterances and retried once more; one that still fails becomes a reject;
- the driver killed: Ray ends its actors (they are owned by the driver); the rerun adopts what
  the shards hold (`before_plan`) and plans the rest; merge skips ids already in OUT.

Models load once per actor. Each actor runs the device stage's OOM split-and-retry on its
batches. With `--batch-size 0` the budget is the device's memory ceiling (probed by the first
actor) with the padding rule; the timed budget search of the in-process engine is not run (its
timings would mix actors). One progress bar in the driver: audio seconds, rate and ETA over all
actors.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import deque
from dataclasses import dataclass

from ..batching import BatchPlanner, Budget, automatic_budget
from ..contract import SHARDS
from ..manifest import Reject
from ..store.dataset import OutputExists, fault_point
from ..store.shards import merge_shards

CHUNK = 32                    # records per preparation task
DEPTH = 2                     # batches queued on each actor (one running, one waiting)
TASK_RETRIES = 3              # reruns of a batch whose actor died, before it is split
ACTOR_NAME = "preprocess-device"
# CPU workers get one BLAS thread (prepare.CpuStage has the measurement); the actors set
# torch's threads themselves.
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1"}


def import_ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError('--engine ray needs Ray: pip install -e ".[ray]"') from None
    return ray


@dataclass
class BatchResult:
    """What an actor reports for one batch it committed."""

    indices: list[int]
    processed: int
    rejected: int
    audio_seconds: float
    model_seconds: float      # inside DeviceStage
    valid_frames: int
    padded_frames: int
    skipped: int              # already committed by this shard (a batch rerun after a death)
    received: float           # time.time() when the actor started the call
    finished: float           # ... and when its commit had finished


class DeviceWorker:
    """One actor: the models on one device, writing into its own shard. Made by Ray with the
    same arguments after a restart, so it reopens the same shard."""

    def __init__(self, opts, provenance: dict, shard: str, device: str, threads: int,
                 budget: tuple[float, int]):
        import torch

        from ..device import PRECISIONS, DeviceStage, resolve_device
        from ..job import Job
        from ..models.bundle import ModelBundle

        self.opts, self.device = opts, resolve_device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        job = Job(opts, provenance)
        self.output = job.open_output(opts.output_dir / SHARDS / shard, force=False)
        self.bundle = ModelBundle.load(opts.models, layer=opts.layer,
                                       trust_checkpoint=opts.trust_checkpoint)
        self.bundle.to(self.device, PRECISIONS[opts.precision])
        cost, max_items = budget
        self.stage = DeviceStage(self.bundle, self.device, Budget(cost=cost, max_items=max_items))

    def ceiling(self, max_frames: int) -> float:
        from ..batching import cpu_ceiling, probe_cuda_ceiling

        if self.device.type == "cuda":
            return probe_cuda_ceiling(self.bundle.run, self.device, max_frames, self.opts.memory_fraction)
        return cpu_ceiling()

    def pid(self) -> int:
        return os.getpid()

    def run(self, records: list, *chunks) -> BatchResult:
        """Commit one batch: `records` [(plan index, Record)] and, in the same order, the
        results of the preparation tasks for them (one list per task)."""
        from ..prepare import Prepared
        from ..writer import entry

        received = time.time()
        results = [r for chunk in chunks for r in chunk]
        done = self.output.done
        todo = [(rec, r) for (_, rec), r in zip(records, results) if rec.id not in done]
        by_index = {i: rec for i, rec in records}
        prepared = [r for _, r in todo if isinstance(r, Prepared)]
        rejects = [r for _, r in todo if isinstance(r, Reject)]
        busy = self.stage.busy_seconds
        valid, padded = self.stage.valid_frames, self.stage.padded_frames
        entries = []
        for p, result in self.stage.run_all(prepared):
            rec = by_index[p.index]
            if isinstance(result, str):
                rejects.append(rec.reject("device", result))
            else:
                entries.append(entry(rec, p, result, self.opts.val_ratio))
        self.output.commit(entries, rejects)
        self.output.flush()   # durable before the driver hears of it (a packed store buffers rows)
        return BatchResult([i for i, _ in records], len(entries), len(rejects),
                           sum(p.audio_seconds for p in prepared), self.stage.busy_seconds - busy,
                           self.stage.valid_frames - valid, self.stage.padded_frames - padded,
                           len(records) - len(todo), received, time.time())

    def close(self) -> None:
        self.output.close()


_prepare_key: tuple | None = None


def prepare_task(items: list, initargs: tuple, language: str | None) -> list:
    """The CPU stage for some records of a batch, in a Ray worker (its tokenizer loaded once
    per worker process)."""
    global _prepare_key
    from ..prepare import init_worker, prepare_chunk

    if _prepare_key != initargs:
        init_worker(*initargs)
        _prepare_key = initargs
    return prepare_chunk(items, language)[0]


class RayEngine:
    def __init__(self, address: str | None = None, actors: int = 0, actor_threads: int = 1,
                 on_batch=None):
        """`address`: a running cluster to join (`ray://...` or host:port); None: the session
        this process already has, else a local cluster. `actors`: device actors, 0 = one per
        GPU of the cluster, or one CPU actor per node without GPUs. `actor_threads`: torch
        threads of a CPU actor. `on_batch(BatchResult)` after each batch."""
        self.address, self.actors, self.actor_threads = address, actors, actor_threads
        self.on_batch = on_batch
        self._valid = self._padded = 0   # frames of the batches run, for padding efficiency

    def before_plan(self, job, output) -> None:
        # What a killed driver's actors committed is adopted, not redone. Its actors end with
        # it, but may hold their shards' locks for a moment.
        deadline = time.monotonic() + 60
        while True:
            try:
                merge_shards(output)
                return
            except OutputExists:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _connect(self, ray) -> bool:
        """Join or start Ray; True when this call started the session (and must end it)."""
        if ray.is_initialized():
            return False
        env = {"env_vars": WORKER_ENV}
        if self.address:
            ray.init(address=self.address, runtime_env=env, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, runtime_env=env, log_to_driver=False)
        return True

    def execute(self, job, plan, output, summary) -> None:
        from tqdm import tqdm

        ray = import_ray()
        opts = job.opts
        started = self._connect(ray)
        actors = []
        bar = None
        try:
            resources = ray.cluster_resources()
            gpus = int(resources.get("GPU", 0))
            use_gpu = gpus > 0 and opts.device != "cpu"
            count = self.actors or (gpus if use_gpu else
                                    max(1, sum(1 for n in ray.nodes() if n.get("Alive"))))
            device = "cuda" if use_gpu else "cpu"
            fixed = opts.batch_size > 0
            budget = (math.inf, opts.batch_size) if fixed else (math.inf, 0)
            options = {"max_restarts": -1, "max_task_retries": TASK_RETRIES}
            # A CPU actor reserves no Ray CPU: preparation tasks must always find one (on a small
            # machine two actors holding a CPU each would starve them), and the actor's torch
            # threads share the cores with them as the in-process engine's model does.
            options.update(num_gpus=1, num_cpus=1) if use_gpu else options.update(num_cpus=0)
            remote = ray.remote(**options)(DeviceWorker)
            tag = f"{ACTOR_NAME}-{os.getpid()}-{int(time.time())}"
            actors = [remote.options(name=f"{tag}-{k}").remote(
                opts, {k2: v for k2, v in job.provenance.items() if k2 != "options"},
                f"ray-{k}", device, self.actor_threads, budget) for k in range(count)]
            if fixed:
                planner = BatchPlanner(plan.frames, plan.todo, Budget(cost=math.inf, max_items=opts.batch_size))
            else:
                ceiling = ray.get(actors[0].ceiling.remote(max(plan.frames)))
                planner = BatchPlanner(plan.frames, plan.todo, automatic_budget(ceiling))
            bar = tqdm(total=round(plan.audio_seconds, 1), unit="s audio", disable=not opts.progress,
                       file=sys.stderr, desc=f"preprocess ray x{count}", mininterval=1.0,
                       dynamic_ncols=True)
            # A constructor that fails (a shard made with other settings, a missing file)
            # stops the job here, not batch by batch.
            ray.get([a.pid.remote() for a in actors])
            prepare = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(prepare_task)
            prepared_text = None
            if opts.prepared_text is not None:
                from .inprocess import attach_prepared_text

                attach_prepared_text([plan.items[i] for i in plan.todo_indices()], opts.prepared_text)
                prepared_text = str(opts.prepared_text)  # on a file system every node sees
            initargs = (str(opts.tokenizer), opts.resample, opts.limits, use_gpu, 0, prepared_text)
            window = max(4, 2 * int(resources.get("CPU", 1)))
            self._drive(ray, opts, plan, planner, actors, prepare, initargs, window, output,
                        summary, bar)
            ray.get([a.close.remote() for a in actors])
        finally:
            if bar is not None:
                bar.close()
            for a in actors:
                ray.kill(a, no_restart=True)   # releases the shards' locks
            if started:
                ray.shutdown()
        if self._padded:
            summary.padding_efficiency = self._valid / self._padded
        fault_point("before_merge")
        merge_shards(output)

    def _drive(self, ray, opts, plan, planner, actors, prepare, initargs, window, output,
               summary, bar) -> None:
        """Keep every actor DEPTH batches deep and the preparation `window` tasks ahead; take
        results as they come."""
        lost = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                ray.exceptions.ObjectLostError, ray.exceptions.OutOfMemoryError)
        units = deque(b.indices for b in planner)
        ready: deque = deque()        # (indices, [preparation refs]), submitted
        running: dict = {}            # actor call -> (indices, actor number)
        depth = [0] * len(actors)
        alone: set[int] = set()       # indices split out of a failed batch: no further retry
        self._valid = self._padded = 0
        started = time.perf_counter()
        while units or ready or running:
            while units and sum(len(r) for _, r in ready) < window:
                indices = units.popleft()
                items = [plan.items[i] for i in indices]
                ready.append((indices, [prepare.remote(items[s:s + CHUNK], initargs, opts.language)
                                        for s in range(0, len(items), CHUNK)]))
            for k in range(len(actors)):
                while ready and depth[k] < DEPTH:
                    indices, refs = ready.popleft()
                    records = [(i, plan.items[i].record) for i in indices]
                    running[actors[k].run.remote(records, *refs)] = (indices, k)
                    depth[k] += 1
            [ref], _ = ray.wait(list(running), num_returns=1)
            indices, k = running.pop(ref)
            depth[k] -= 1
            try:
                result = ray.get(ref)
            except lost as e:
                if len(indices) > 1 or indices[0] not in alone:
                    alone.update(indices)
                    units.extendleft([i] for i in reversed(indices))
                    continue
                rec = plan.items[indices[0]].record
                reason = f"the device worker was lost on it {TASK_RETRIES + 2} times ({type(e).__name__})"
                output.add_rejects([rec.reject("device", reason)])
                summary.rejected += 1
                continue
            summary.processed += result.processed
            summary.rejected += result.rejected
            summary.audio_seconds += result.audio_seconds
            summary.device_seconds += result.model_seconds
            self._valid += result.valid_frames
            self._padded += result.padded_frames
            secs = sum(plan.seconds[i] for i in result.indices)
            bar.update(min(secs, bar.total - bar.n))
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix_str(f"{summary.audio_seconds / elapsed:.1f} s audio/s", refresh=False)
            if self.on_batch is not None:
                self.on_batch(result)
