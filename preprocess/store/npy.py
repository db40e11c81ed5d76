"""The trainer's layout: one .npy file per feature and utterance, fanned out into sub-folders."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fsutil import npy_bytes, syncfs, write_atomic

FEATURE_DIRS = ("text_ids", "codes", "condition", "emo_vec")


@dataclass
class UtteranceFeatures:
    id: str
    text_ids: np.ndarray   # [text_len] int32
    codes: np.ndarray      # [code_len] int32
    condition: np.ndarray  # [32, 1280] float32
    emo_vec: np.ndarray    # [1280] float32


def fanout(id_: str) -> str:
    """Two hex digits of the id's SHA-1: 256 folders keep directories small at 1M+ utterances."""
    return hashlib.sha1(id_.encode("utf-8")).hexdigest()[:2]


def relative_paths(id_: str) -> dict[str, str]:
    sub = fanout(id_)
    return {f"{name}_path": f"{name}/{sub}/{id_}.npy" for name in FEATURE_DIRS}


class NpyStore:
    """Writes a batch of utterances; when `write` returns, every file is durable."""

    format = "npy"

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)

    def write(self, items: list[UtteranceFeatures]) -> list[dict]:
        locations = []
        for item in items:
            paths = relative_paths(item.id)
            arrays = {
                "text_ids_path": item.text_ids.astype(np.int32, copy=False),
                "codes_path": item.codes.astype(np.int32, copy=False),
                "condition_path": item.condition.astype(np.float32, copy=False),
                "emo_vec_path": item.emo_vec.astype(np.float32, copy=False),
            }
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


def load_npy(path: str | os.PathLike) -> np.ndarray:
    return np.load(path, allow_pickle=False)
