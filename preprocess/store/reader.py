"""Reading an output directory back, whatever its store format: a map-style dataset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..contract import MANIFESTS, PATH_KEYS
from .npy import load_npy
from .zarr import STORE_DIR, PackedArrays

SPLITS = tuple(MANIFESTS)  # ("train", "val")


def _manifest_lines(path: Path):
    """Objects of one of our manifests, one at a time; torn or malformed lines are skipped
    (as OutputDir does on resume)."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                yield obj


class _NpyBackend:
    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.paths: list[tuple[str, ...]] = []

    def add(self, line: dict) -> None:
        missing = [k for k in PATH_KEYS if not isinstance(line.get(k), str)]
        if missing:
            raise ValueError(f"{self.out_dir}: line of {line['id']!r} lacks {', '.join(missing)}")
        self.paths.append(tuple(line[k] for k in PATH_KEYS))

    def check(self, ids: list[str]) -> None:
        pass  # files are checked when read

    def get(self, i: int) -> tuple[np.ndarray, ...]:
        return tuple(load_npy(self.out_dir / p) for p in self.paths[i])

    def all_of(self, feature: int) -> list[np.ndarray]:
        return [load_npy(self.out_dir / p[feature]) for p in self.paths]

    def close(self) -> None:
        pass


class _ZarrBackend:
    def __init__(self, out_dir: Path):
        self.packed = PackedArrays(out_dir / STORE_DIR)
        self.row_list: list[int] = []

    def add(self, line: dict) -> None:
        row = line.get("row")
        if not isinstance(row, int) or isinstance(row, bool):
            raise ValueError(f"{self.packed.path}: line of {line['id']!r} has no integer 'row'")
        self.row_list.append(row)

    def check(self, ids: list[str]) -> None:
        """Every line points to a committed row holding its id (not so after a crash that no
        resume has repaired yet)."""
        self.rows = np.array(self.row_list, np.int64)
        stored = self.packed.ids
        bad = [i for i, r in enumerate(self.row_list) if not 0 <= r < len(stored) or stored[r] != ids[i]]
        if bad:
            raise ValueError(f"{self.packed.path.parent}: {len(bad)} manifest line(s) point to rows "
                             f"the store does not hold (first: {ids[bad[0]]!r}); rerun the same "
                             "command to resume and repair")

    def get(self, i: int) -> tuple[np.ndarray, ...]:
        return self.packed.row(int(self.rows[i]))

    def all_of(self, feature: int) -> list[np.ndarray]:
        name = ("text_ids", "codes")[feature]
        offsets = self.packed.offsets[name]
        data = self.packed.read(name, 0, int(offsets[-1]))
        return [data[offsets[r]:offsets[r + 1]] for r in self.rows]

    def close(self) -> None:
        self.packed.close()


class FeatureReader:
    """Every utterance of one output directory (npy or zarr), by position or by id.

    Order: the train manifest's lines, then the val manifest's. An item is a dict with id,
    split, text_ids [T] int32, codes [C] int32, condition [32, D] float32 and emo_vec [D]
    float32 (a float16 store is upcast). A map-style dataset, e.g.:

        loader = torch.utils.data.DataLoader(FeatureReader.open(out), batch_size=None, shuffle=True)
    """

    def __init__(self, out_dir: Path, backend, ids: list[str], splits: np.ndarray,
                 text_lens: np.ndarray, code_lens: np.ndarray):
        self.out_dir = out_dir
        self.format = "zarr" if isinstance(backend, _ZarrBackend) else "npy"
        self._backend = backend
        self.ids = ids
        self._splits = splits
        self._text_lens = text_lens
        self._code_lens = code_lens
        self._index = {id_: i for i, id_ in enumerate(ids)}
        if len(self._index) != len(ids):
            raise ValueError(f"{out_dir}: an id appears on more than one manifest line")

    @classmethod
    def open(cls, out_dir: str | os.PathLike) -> "FeatureReader":
        out_dir = Path(out_dir)
        packed = (out_dir / STORE_DIR / "zarr.json").exists()
        backend = _ZarrBackend(out_dir) if packed else _NpyBackend(out_dir)
        ids, splits, text_lens, code_lens = [], [], [], []
        for s, split in enumerate(SPLITS):
            for line in _manifest_lines(out_dir / MANIFESTS[split]):
                backend.add(line)
                ids.append(line["id"])
                splits.append(s)
                text_lens.append(line.get("text_len", -1))
                code_lens.append(line.get("code_len", -1))
        if not ids and not packed and not any((out_dir / m).exists() for m in MANIFESTS.values()):
            raise FileNotFoundError(f"{out_dir} holds neither manifests nor {STORE_DIR}")
        backend.check(ids)
        return cls(out_dir, backend, ids, np.array(splits, np.int8),
                   np.array(text_lens, np.int64), np.array(code_lens, np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, id_: str) -> int:
        try:
            return self._index[id_]
        except KeyError:
            raise KeyError(f"{id_!r} is not in {self.out_dir}") from None

    def __getitem__(self, key: int | str) -> dict:
        i = self.index_of(key) if isinstance(key, str) else int(key)
        if i < 0:
            i += len(self.ids)
        if not 0 <= i < len(self.ids):
            raise IndexError(f"index {key} out of range for {len(self.ids)} utterances")
        text_ids, codes, condition, emo_vec = self._backend.get(i)
        return {"id": self.ids[i], "split": SPLITS[self._splits[i]],
                "text_ids": text_ids.astype(np.int32, copy=False),
                "codes": codes.astype(np.int32, copy=False),
                "condition": condition.astype(np.float32, copy=False),
                "emo_vec": emo_vec.astype(np.float32, copy=False)}

    def split_of(self, i: int) -> str:
        return SPLITS[self._splits[i]]

    def text_lens(self) -> np.ndarray:
        """text_len per item, from the manifests (no data read)."""
        return self._text_lens.copy()

    def code_lens(self) -> np.ndarray:
        """code_len per item, from the manifests (no data read)."""
        return self._code_lens.copy()

    def all_text_ids(self) -> list[np.ndarray]:
        """Every item's text ids (int32), in reader order; one bulk read for zarr."""
        return [a.astype(np.int32, copy=False) for a in self._backend.all_of(0)]

    def all_codes(self) -> list[np.ndarray]:
        """Every item's codes (int32), in reader order; one bulk read for zarr."""
        return [a.astype(np.int32, copy=False) for a in self._backend.all_of(1)]

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> "FeatureReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
