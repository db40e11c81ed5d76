"""Length-bucketed batches under a padded-frame budget, and the budget's adaptation to OOM.

Frames are stacked fbank frames at 50 Hz (= code frames). A batch of B items padded to T frames
costs B*T frames; attention adds a term per frame that grows with T, so the budget is spent in
"cost units" of T * (1 + T / attention_knee) per item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SAMPLE_RATE = 16000
HOP = 160
WIN = 400
# Padded length at which attention memory per frame equals everything else per frame
# (w2v-BERT: scores B*16*T*T vs ~30 activations of width 1024 per frame). Estimated, then
# only relative costs matter: the budget itself is measured on the device.
ATTENTION_KNEE = 2048


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
    _successes: int = 0

    def fits(self, num_items: int, padded_frames: int) -> bool:
        if self.max_items and num_items > self.max_items:
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


def take_batch(frames: list[int], start: int, budget: Budget) -> int:
    """Length of the longest run frames[start:start+n] that fits the budget (at least 1).
    `frames` is sorted by decreasing length, so the first item of a run is its padded length."""
    padded = frames[start]
    n = 1
    while start + n < len(frames) and budget.fits(n + 1, max(padded, frames[start + n])):
        padded = max(padded, frames[start + n])
        n += 1
    return n


def padding_efficiency(batches: list[list[int]]) -> float:
    """Valid frames / padded frames over a list of batches (each a list of item frame counts)."""
    valid = sum(sum(b) for b in batches)
    padded = sum(len(b) * max(b) for b in batches if b)
    return valid / padded if padded else 1.0
