"""A named, timed phase of a run (hashing inputs, planning, loading models, sizing batches)."""

from __future__ import annotations

import sys
import time


class Phase:
    """Times one phase of a run into `summary.stage_seconds[name]` and, with progress on, says
    what it did on one line of stderr (before the bar, so a long silent wait has a name)."""

    def __init__(self, summary: object, name: str, words: str, show: bool):
        self.summary, self.name, self.words, self.show = summary, name, words, show

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        seconds = time.perf_counter() - self.t0
        self.summary.stage_seconds[self.name] = seconds
        if self.show and exc[0] is None:
            print(f"{self.words} ({seconds:.1f} s)", file=sys.stderr, flush=True)
