"""Writing the npy layout: every file of a batch durable when `write` returns."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..features import UtteranceFeatures
from ..fsutil import npy_bytes, syncfs, write_atomic
from .layout import relative_paths


def trainer_arrays(item: UtteranceFeatures) -> dict[str, np.ndarray]:
    """The four arrays of an utterance as the trainer reads them, by manifest path key."""
    return {"text_ids_path": item.text_ids.astype(np.int32, copy=False),
            "codes_path": item.codes.astype(np.int32, copy=False),
            "condition_path": item.condition.astype(np.float32, copy=False),
            "emo_vec_path": item.emo_vec.astype(np.float32, copy=False)}


class NpyWriter:
    """Writes a batch of utterances; when `write` returns, every file is durable (one syncfs
    per batch, not one fsync per file)."""

    format = "npy"

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)

    def write(self, items: list[UtteranceFeatures]) -> list[dict]:
        locations = []
        for item in items:
            paths = relative_paths(item.id)
            arrays = trainer_arrays(item)
            for key, rel in paths.items():
                path = self.out_dir / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, npy_bytes(arrays[key]), fsync=False)
            locations.append(paths)
        if items:
            syncfs(self.out_dir)
        return locations

    def record_present(self, line: dict) -> bool:
        """Every file a manifest line points to exists (used when resuming)."""
        return all(isinstance(line.get(k), str) and (self.out_dir / line[k]).is_file()
                   for k in relative_paths(line["id"]))

    def is_durable(self, line: dict) -> bool:
        return True  # `write` syncs before returning

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
