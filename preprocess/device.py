"""The device stage: prepared items in, features out; a batch that runs out of memory is split.

    [Prepared] --collate (CPU fbank) or DeviceFbank (waves)--> features [B,T,160], T_i, L_i
               --ModelBundle.run--> codes [T_i], condition [32,1280], emo_vec [1280] per item

On OOM the batch is halved and retried, down to one item; an item too big alone is a reject.
The shared Budget remembers the failure, so later batches are cut smaller.
"""

from __future__ import annotations

import math
import time

import torch

from .batching import Budget, batch_cost, take_batch
from .heap import keep_freed_memory
from .prepare import Prepared


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: no CUDA device is available")
    return dev


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


class DeviceStage:
    """Turns prepared items into features; splits a batch that runs out of memory."""

    def __init__(self, bundle, device: torch.device, budget: Budget):
        keep_freed_memory()
        self.bundle, self.device, self.budget = bundle, device, budget
        self.busy_seconds = 0.0
        self.valid_frames = 0
        self.padded_frames = 0
        self._fbank = None
        if device.type != "cpu":
            from .frontend import DeviceFbank
            self._fbank = DeviceFbank(device)

    def _inputs(self, batch: list[Prepared]):
        if self._fbank is not None:
            waves = [torch.from_numpy(p.wave).to(self.device, non_blocking=True) for p in batch]
            return self._fbank(waves)
        from .frontend import collate
        return collate([p.features for p in batch], [p.valid for p in batch])

    def run_all(self, items: list[Prepared]) -> list[tuple[Prepared, object]]:
        """Run a planned batch, in pieces if the budget shrank (an OOM) since it was planned."""
        items = sorted(items, key=lambda p: -p.frames)
        if math.isinf(self.budget.ceiling):
            return self.run(items) if items else []
        out, start = [], 0
        while start < len(items):
            n = take_batch([p.frames for p in items], start, self.budget)
            out += self.run(items[start:start + n])
            start += n
        return out

    def run(self, batch: list[Prepared]) -> list[tuple[Prepared, object]]:
        """[(item, (codes, condition, emo_vec) or Reject reason str)] in batch order."""
        try:
            t0 = time.perf_counter()
            feats, frames, valid = self._inputs(batch)
            out = self.bundle.run(feats.to(self.device), frames.to(self.device), valid.to(self.device))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.busy_seconds += time.perf_counter() - t0
        except Exception as e:
            if not is_oom(e):
                raise
            self._free()
            padded = max(p.frames for p in batch)
            self.budget.shrink(batch_cost(len(batch), padded))
            if len(batch) == 1:
                return [(batch[0], f"out of device memory even alone ({padded} frames)")]
            half = len(batch) // 2
            return self.run(batch[:half]) + self.run(batch[half:])
        self.budget.succeeded()
        self.valid_frames += sum(p.frames for p in batch)
        self.padded_frames += len(batch) * max(p.frames for p in batch)
        return [(p, (out.codes[i], out.condition[i], out.emo_vec[i])) for i, p in enumerate(batch)]

    def _free(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
