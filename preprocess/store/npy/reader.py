"""Reading the npy layout: the files manifest lines point to, for FeatureReader and verify."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...contract import PATH_KEYS


def load_npy(path: str | os.PathLike) -> np.ndarray:
    return np.load(path, allow_pickle=False)


class NpyRows:
    """A line's location is its four paths (relative to the output directory)."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def locate(self, line: dict) -> tuple[str, ...]:
        empty = [k for k in PATH_KEYS if not isinstance(line.get(k), str) or not line[k]]
        if empty:
            raise ValueError(f"the line of {line['id']!r} lacks {', '.join(empty)}")
        return tuple(line[k] for k in PATH_KEYS)

    def load(self, paths: tuple[str, ...]) -> tuple[np.ndarray, ...]:
        arrays = []
        for key, rel in zip(PATH_KEYS, paths):
            path = self.out_dir / rel
            if not path.is_file():
                raise ValueError(f"{key} file missing: {rel}")
            try:
                arrays.append(load_npy(path))
            except Exception as e:  # a truncated or pickled file
                raise ValueError(f"{key} file unreadable ({rel}): {e}") from None
        return tuple(arrays)

    def load_many(self, locations: list[tuple[str, ...]]):
        """(position, arrays) for every location, in order."""
        for k, paths in enumerate(locations):
            yield k, self.load(paths)

    def all_of(self, feature: int, locations: list[tuple[str, ...]]) -> list[np.ndarray]:
        return [load_npy(self.out_dir / p[feature]) for p in locations]

    def close(self) -> None:
        pass
