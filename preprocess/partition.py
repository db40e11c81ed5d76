"""`--shard K/N`: which records of a manifest belong to share K of N.

The partition is a pure function of the manifest's text (or any source's records) and N, the same on every machine and
at every point of progress: all records of the manifest take part (not what is left to do),
so N independent jobs that each compute it agree on who does what without talking to each
other, and a job that resumes keeps its share.

Weights come from the manifest's `duration` field, not from the audio headers the plan
probes. Probing reads every audio file: on a shared file system each of N jobs would read
every header (N times the metadata load), and a transient read error on one machine would
change that machine's partition, so an utterance would fall into two shares or none. The
manifest is one file every machine reads the same. A record without a usable duration
(missing, not positive, not finite) weighs the mean of those that have one, or one second
when none has; weights are whole milliseconds so the dealing is exact integer arithmetic.

Records are dealt longest first (ties in manifest order), each to the share with the least
audio so far (ties to the lowest K), so shares differ by at most one record's duration.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import re
from dataclasses import dataclass

from .manifest import Record


def parse_shard(value: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 0 <= K < N; ValueError naming the value otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if not m:
        raise ValueError(f"--shard {value!r}: expected K/N, e.g. 0/8")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"--shard {value!r}: K must be in 0..N-1 and N at least 1")
    return k, n


def shard_name(index: int, count: int) -> str:
    """The sub-store of share K of N under OUT/shards: 'KofN' (store.shards.ARRAY_SHARD)."""
    return f"{index}of{count}"


def weights_ms(records: list[Record]) -> list[int]:
    given = [r.duration for r in records
             if r.duration is not None and math.isfinite(r.duration) and r.duration > 0]
    fill = sum(given) / len(given) if given else 1.0
    return [round(1000 * (r.duration if r.duration is not None and math.isfinite(r.duration)
                          and r.duration > 0 else fill)) for r in records]


def deal(weights: list[int], count: int) -> list[int]:
    """The share of each weight: longest first (ties by position), each to the lightest share
    so far (ties to the lowest index)."""
    order = sorted(range(len(weights)), key=lambda i: (-weights[i], i))
    heap = [(0, k) for k in range(count)]
    share = [0] * len(weights)
    for i in order:
        total, k = heapq.heappop(heap)
        share[i] = k
        heapq.heappush(heap, (total + weights[i], k))
    return share


@dataclass
class Partition:
    count: int
    ids: list[str]          # every record of the manifest, in manifest order
    lines: list[int]        # their source lines
    share: list[int]        # their share
    seconds: list[float]    # their weights, in seconds
    digest: str             # what the partition was computed from: N, ids and weights

    @classmethod
    def of_manifest(cls, source, count: int, input_format: str = "auto",
                    fields: dict[str, str] | None = None) -> Partition:
        """Of every record `sources.read_source(source, input_format, fields)` yields."""
        from .sources import read_source

        records = [r for r in read_source(source, input_format, fields) if isinstance(r, Record)]
        weights = weights_ms(records)
        h = hashlib.sha256(f"{count}\n".encode())
        for r, w in zip(records, weights):
            h.update(f"{r.id}\0{w}\n".encode())
        return cls(count, [r.id for r in records], [r.line for r in records],
                   deal(weights, count), [w / 1000 for w in weights], h.hexdigest())

    def ids_of(self, index: int) -> frozenset[str]:
        return frozenset(i for i, k in zip(self.ids, self.share) if k == index)

    def left_in(self, index: int, done: set[str], rejected_lines: set[int]) -> int:
        """Records of share `index` neither in `done` nor rejected (by source line)."""
        return sum(1 for i, line, k in zip(self.ids, self.lines, self.share)
                   if k == index and i not in done and line not in rejected_lines)

    def size_of(self, index: int) -> int:
        return sum(1 for k in self.share if k == index)
