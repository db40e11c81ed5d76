"""All batch planning: length-bucketed batches under a padded-cost budget, the memory ceiling of
a device, the search for the fastest budget under it, and the budget's adaptation to OOM.

Frames are stacked fbank frames at 50 Hz (= code frames). A batch of B items padded to T frames
costs B*T frames; attention adds a term per frame that grows with T, so the budget is spent in
"cost units" of T * (1 + T / attention_knee) per item.

The plan is sorted longest first and cut into consecutive runs (`take_batch`). How long a run
may be is the budget. A fixed `--batch-size N` caps the count; the automatic budget
(`--batch-size 0`) is chosen by measurement: memory gives a ceiling (the device's probe, or a
share of RAM on CPU), and `BatchPlanner` times the first batches of the run under a ladder of
budgets from one utterance up to that ceiling and keeps the one with the most work per second.
Batching pays on a GPU by a large factor; on a CPU with long attention over padded frames it
can lose, and then the search settles on one utterance per batch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

SAMPLE_RATE = 16000
HOP = 160
WIN = 400
# Padded length at which attention memory per frame equals everything else per frame
# (w2v-BERT: scores B*16*T*T vs ~30 activations of width 1024 per frame). Estimated, then
# only relative costs matter: the budget itself is measured on the device.
ATTENTION_KNEE = 2048
# An automatic batch stops growing before its padded frames are more than 10 % padding, so
# one long clip never pads a batch of short ones.
MIN_PADDING_EFFICIENCY = 0.9


def frames_for_seconds(seconds: float) -> int:
    """Stacked frames T = ceil(F / 2) for a clip of this duration at 16 kHz."""
    n = int(math.ceil(seconds * SAMPLE_RATE))
    if n < WIN:
        return 0
    f = 1 + (n - WIN) // HOP
    return (f + 1) // 2


def batch_cost(num_items: int, padded_frames: int) -> float:
    return num_items * padded_frames * (1.0 + padded_frames / ATTENTION_KNEE)


@dataclass
class Budget:
    """A cost budget per batch that shrinks on OOM and grows back slowly after successes."""

    cost: float
    max_items: int = 0        # 0 = no cap (a fixed --batch-size sets it)
    floor: float = 1.0
    ceiling: float = math.inf
    grow_after: int = 50      # successes before growing again
    min_padding_efficiency: float = 0.0
    _successes: int = 0

    def fits(self, num_items: int, padded_frames: int, valid_frames: int | None = None) -> bool:
        if self.max_items and num_items > self.max_items:
            return False
        if valid_frames is not None and valid_frames < (
                self.min_padding_efficiency * num_items * padded_frames):
            return False
        return batch_cost(num_items, padded_frames) <= self.cost

    def shrink(self, failed_cost: float) -> None:
        """After an OOM: the budget goes below what just failed; the ceiling remembers it."""
        self.ceiling = min(self.ceiling, failed_cost)
        self.cost = max(self.floor, min(self.cost, failed_cost) * 0.7)
        self._successes = 0

    def succeeded(self) -> None:
        self._successes += 1
        if self._successes >= self.grow_after and self.cost < self.ceiling:
            self.cost = min(self.ceiling * 0.95, self.cost * 1.1)
            self._successes = 0


def automatic_budget(ceiling: float) -> Budget:
    """The budget of `--batch-size 0` under a memory ceiling: cut by cost, with the padding rule."""
    return Budget(cost=ceiling, min_padding_efficiency=MIN_PADDING_EFFICIENCY)


def take_batch(frames: list[int], start: int, budget: Budget) -> int:
    """Length of the longest run frames[start:start+n] that fits the budget (at least 1).
    `frames` is sorted by decreasing length, so the first item of a run is its padded length."""
    padded = valid = frames[start]
    n = 1
    while start + n < len(frames):
        nxt = frames[start + n]
        if not budget.fits(n + 1, max(padded, nxt), valid + nxt):
            break
        padded, valid = max(padded, nxt), valid + nxt
        n += 1
    return n


def padding_efficiency(batches: list[list[int]]) -> float:
    """Valid frames / padded frames over a list of batches (each a list of item frame counts)."""
    valid = sum(sum(b) for b in batches)
    padded = sum(len(b) * max(b) for b in batches if b)
    return valid / padded if padded else 1.0


# -- memory ceilings ----------------------------------------------------------------------------

CPU_BYTES_PER_COST = 256 * 1024  # estimated activation bytes per frame of the full-size set


def cpu_ceiling() -> float:
    """On CPU, memory is rarely the limit and large batches do not pay: the ceiling allows
    about 2,048 frames per core, capped by a quarter of the RAM. Fixed for a machine."""
    cores = os.cpu_count() or 1
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        ram = 8 << 30
    return float(max(batch_cost(1, 1024), min(batch_cost(1, 2048 * cores), ram / 4 / CPU_BYTES_PER_COST)))


def probe_cuda_ceiling(run, device, max_frames: int, fraction: float = 0.9) -> float:
    """Largest batch cost that fits `fraction` of the device's memory, measured by running
    synthetic worst-case batches (every item `max_frames` long) through `run(features, frames,
    lengths)` (ModelBundle.run)."""
    import torch

    from .frontend import STACKED_DIM

    limit = fraction * torch.cuda.get_device_properties(device).total_memory

    def peak(n: int) -> int:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        feats = torch.randn(n, max_frames, STACKED_DIM, device=device)
        frames = torch.full((n,), max_frames, device=device)
        run(feats, frames, frames)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)

    base = peak(1)
    per_item = max(peak(2) - base, 1)
    n = max(1, int((limit - base) / per_item) + 1)
    while n > 1:  # confirm the extrapolation on the real models; back off if it was optimistic
        try:
            if peak(n) <= limit:
                break
        except torch.OutOfMemoryError:
            pass
        n = int(n * 0.8)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)  # the probe filled memory on purpose
    return batch_cost(n, max_frames)


# -- the batches of a run -----------------------------------------------------------------------

SEARCH_STEP = 4              # each budget of the ladder holds 4x the utterances of the one before
SEARCH_MIN_SECONDS = 1.0     # time each budget over at least this much model time ...
SEARCH_MAX_BATCHES = 8       # ... or this many batches, whichever comes first
SEARCH_GIVE_UP = 0.8         # stop climbing once a budget is this much slower than the best
# A kill costs the batch in flight: batches are cut so that one takes about this long at the
# measured rate (one item that takes longer alone still runs alone).
MAX_BATCH_SECONDS = {"cpu": 5.0, "cuda": 30.0}


def work_of(frames: list[int]) -> float:
    """What a batch of items is worth: their cost one at a time. Rates in work per second
    compare batches of different lengths fairly (long items are slower per second of audio)."""
    return sum(batch_cost(1, f) for f in frames)


@dataclass
class Batch:
    indices: list[int]        # plan indices to run (those not done yet)
    start: int                # the run frames[start:stop] of the plan this batch was cut from
    stop: int
    candidate: int | None     # index into the search ladder while the budget is being measured


def budget_ladder(frames: list[int], ceiling: float) -> list[dict]:
    """One utterance per batch, then budgets holding 4, 16, ... utterances of the median length,
    up to the memory ceiling. JSON-ready: recorded in the output directory."""
    median = sorted(frames)[len(frames) // 2] if frames else 1
    ladder = [{"cost": ceiling, "max_items": 1}]
    n = SEARCH_STEP
    while batch_cost(n, median) < ceiling:
        ladder.append({"cost": batch_cost(n, median), "max_items": 0})
        n *= SEARCH_STEP
    if len(ladder) == 1 or ladder[-1]["cost"] < ceiling / 2:
        ladder.append({"cost": ceiling, "max_items": 0})
    return ladder


class BatchPlanner:
    """Cuts the plan into consecutive batches, done items included (a resumed run forms the same
    batches), and yields those with work left.

    Fixed budget: every batch is cut under it. Automatic (`search` is a record): the first
    batches are cut under each budget of `record["ladder"]` in turn, each timed by `measured`;
    the climb stops at the top of the ladder or once a budget is clearly slower than the best,
    and the rest of the plan is cut under the fastest. The record (ladder, every timed batch,
    the choice) is handed to `save` before the batch it describes is committed, and a resumed
    run replays it: same trial batches, same choice, same batches after it.

    `max_batch_seconds` bounds what a kill can cost: the climb stops below budgets that would
    take longer per batch at the best measured rate, and the chosen budget is capped to it."""

    def __init__(self, frames: list[int], todo: list[bool], budget: Budget,
                 record: dict | None = None, save=lambda record: None,
                 max_batch_seconds: float = math.inf):
        self.frames, self.todo, self.budget = frames, todo, budget
        self.record, self.save = record, save
        self.max_batch_seconds = max_batch_seconds
        self.pos = 0
        self._replay = list(record["trials"]) if record else []

    @classmethod
    def new_record(cls, frames: list[int], ceiling: float) -> dict:
        return {"ladder": budget_ladder(frames, ceiling), "trials": [], "chosen": None}

    @property
    def searching(self) -> bool:
        return self.record is not None and self.record["chosen"] is None

    def _budget(self, k: int, capped: bool = False) -> Budget:
        step = self.record["ladder"][k]
        cost = min(step["cost"], self.budget.cost)
        if capped and self.record.get("cap") is not None:
            cost = min(cost, self.record["cap"])
        return Budget(cost=cost, max_items=step["max_items"],
                      min_padding_efficiency=self.budget.min_padding_efficiency)

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        while self.pos < len(self.frames):
            batch = self._cut()
            self.pos = batch.stop
            if batch.indices:
                return batch
        raise StopIteration

    def _cut(self) -> Batch:
        if self._replay:
            t = self._replay.pop(0)
            return self._batch(t["start"], t["stop"], t["candidate"])
        if self.searching:
            k = self._next_candidate()
            if k is not None:
                return self._batch(self.pos, self.pos + take_batch(self.frames, self.pos, self._budget(k)), k)
        if self.record is not None:
            budget = self._budget(self.record["chosen"], capped=True)
        else:
            budget = self.budget
        return self._batch(self.pos, self.pos + take_batch(self.frames, self.pos, budget), None)

    def _batch(self, start: int, stop: int, candidate: int | None) -> Batch:
        return Batch([i for i in range(start, stop) if self.todo[i]], start, stop, candidate)

    def _rates(self) -> dict[int, float]:
        """Work per model-second of each budget tried so far."""
        work: dict[int, float] = {}
        secs: dict[int, float] = {}
        for t in self.record["trials"]:
            work[t["candidate"]] = work.get(t["candidate"], 0.0) + t["work"]
            secs[t["candidate"]] = secs.get(t["candidate"], 0.0) + t["seconds"]
        return {k: work[k] / secs[k] for k in work if secs[k] > 0}

    def _next_candidate(self) -> int | None:
        """The budget to time next, or None after recording the choice."""
        trials = self.record["trials"]
        ladder = self.record["ladder"]
        if trials:
            k = trials[-1]["candidate"]
            mine = [t for t in trials if t["candidate"] == k]
            if sum(t["seconds"] for t in mine) < SEARCH_MIN_SECONDS and len(mine) < SEARCH_MAX_BATCHES:
                return k
            rates = self._rates()
            best = max(rates, key=rates.get) if rates else k
            slower = k in rates and rates[k] < SEARCH_GIVE_UP * rates[best]
            cap = rates[best] * self.max_batch_seconds if rates else math.inf
            if k + 1 < len(ladder) and not slower and ladder[k + 1]["cost"] <= cap:
                return k + 1
            self.record["chosen"] = best
            self.record["cap"] = None if math.isinf(cap) else cap
            self.save(self.record)
            return None
        return 0

    def measured(self, batch: Batch, seconds: float, frames: list[int]) -> None:
        """Model seconds of a batch (whose items that ran had `frames`), if it was cut under a
        budget being measured."""
        if batch.candidate is None or not self.searching:
            return
        if any(t["start"] == batch.start for t in self.record["trials"]):
            return  # replayed: timed by the run that first made it
        self.record["trials"].append({
            "candidate": batch.candidate, "start": batch.start, "stop": batch.stop,
            "items": len(batch.indices), "seconds": round(seconds, 6),
            "work": work_of(frames)})
        self.save(self.record)

    def chosen_budget(self) -> Budget | None:
        if self.record is None:
            return self.budget
        if self.record["chosen"] is None:
            return None
        return self._budget(self.record["chosen"], capped=True)
