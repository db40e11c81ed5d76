"""Reading the packed store: PackedArrays (committed rows, column-wise) and ZarrRows (what
FeatureReader and verify read an utterance through)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import zarr  # the zarr package
from zarr.storage import LocalStore

from . import layout
from .codec import ShardRows
from .layout import OFFSETS, RAGGED, Block, check_layout, zarr_dir, zero_commit


def _open_group(path: Path):
    if not layout.holds_store(path):
        raise FileNotFoundError(f"no packed feature store at {path}")
    return zarr.open_group(LocalStore(path, read_only=True), mode="r")


def read_attributes(path: str | os.PathLike) -> dict | None:
    """The group attributes of the packed store in `path` (an output directory or its
    features.zarr); None where there is none."""
    try:
        return _open_group(zarr_dir(path)).attrs.asdict()
    except FileNotFoundError:
        return None


class PackedArrays:
    """Read-only view of the committed rows of a features.zarr. Offsets live in memory; rows
    are read through _ShardRows. A snapshot: rows committed later are not seen."""

    def __init__(self, path: str | os.PathLike):
        self.path = zarr_dir(path)
        group = _open_group(self.path)
        attrs = group.attrs.asdict()
        check_layout(attrs, self.path)
        self.latent_dtype = attrs["latent_dtype"]
        self.condition_len, self.dim = attrs["condition_len"], attrs["dim"]
        self.commit = dict(attrs.get("commit") or zero_commit())
        self.rows = self.commit["rows"]
        self.arrays = {name: group[name] for name in layout.array_specs()}
        for name, arr in self.arrays.items():
            need = self.rows + 1 if name in OFFSETS else self.commit.get(name, self.rows)
            if arr.shape[0] < need:
                raise ValueError(f"{self.path}/{name} holds {arr.shape[0]} rows but "
                                 f"{need} are committed: the store is damaged")
        self.offsets = {data: np.asarray(self.arrays[off][: self.rows + 1], np.int64)
                        for data, off in RAGGED}
        self._rows = {name: ShardRows(arr, self.path / name) for name, arr in self.arrays.items()}
        self._ids: list[str] | None = None

    @property
    def ids(self) -> list[str]:
        if self._ids is None:
            off = self.offsets["id_utf8"]
            data = self.read("id_utf8", 0, int(off[-1])).tobytes()
            self._ids = [data[a:b].decode("utf-8") for a, b in zip(off[:-1], off[1:])]
        return self._ids

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        return self._rows[name].read(start, stop)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(text_ids, codes, condition, emo_vec) of row i, in stored dtypes."""
        if not 0 <= i < self.rows:
            raise IndexError(f"row {i} not in the {self.rows} committed rows of {self.path}")
        t, c = self.offsets["text_ids"], self.offsets["codes"]
        return (self.read("text_ids", t[i], t[i + 1]), self.read("codes", c[i], c[i + 1]),
                self.read("condition", i, i + 1)[0], self.read("emo_vec", i, i + 1)[0])

    def block(self, start: int, stop: int) -> Block:
        t, c = self.offsets["text_ids"], self.offsets["codes"]
        return Block(ids=self.ids[start:stop],
                     text_ids=self.read("text_ids", t[start], t[stop]),
                     text_lens=np.diff(t[start:stop + 1]),
                     codes=self.read("codes", c[start], c[stop]),
                     code_lens=np.diff(c[start:stop + 1]),
                     condition=self.read("condition", start, stop),
                     emo_vec=self.read("emo_vec", start, stop))

    def close(self) -> None:
        for rows in self._rows.values():
            rows.close()


class ZarrRows:
    """The rows manifest lines point to ({"row": i}), for FeatureReader and verify."""

    def __init__(self, out_dir: Path):
        self.packed = PackedArrays(out_dir)
        self.where = out_dir

    def locate(self, line: dict) -> int:
        """The row of a manifest line, checked to hold the line's id."""
        row = line.get("row")
        if not isinstance(row, int) or isinstance(row, bool):
            raise ValueError(f"the line of {line['id']!r} has no integer 'row'")
        ids = self.packed.ids
        if not 0 <= row < len(ids) or ids[row] != line["id"]:
            raise ValueError(f"the line of {line['id']!r} points to row {row}, which the store does "
                             "not hold for it; rerun the same command to resume and repair")
        return row

    def load(self, row: int) -> tuple[np.ndarray, ...]:
        return self.packed.row(row)

    def load_many(self, rows: list[int], block_rows: int = 1024):
        """(position in `rows`, arrays) for every row, read in blocks of consecutive rows (bulk
        reads, not row by row); in store order, not in the order given."""
        order = sorted(range(len(rows)), key=rows.__getitem__)
        i = 0
        while i < len(order):
            start = rows[order[i]]
            j = i
            while j < len(order) and rows[order[j]] < start + block_rows:
                j += 1
            block = self.packed.block(start, rows[order[j - 1]] + 1)
            t = np.concatenate([[0], np.cumsum(block.text_lens)])
            c = np.concatenate([[0], np.cumsum(block.code_lens)])
            for k in order[i:j]:
                item = block.item(rows[k] - start, t, c)
                yield k, (item.text_ids, item.codes, item.condition, item.emo_vec)
            i = j

    def all_of(self, feature: int, rows: list[int]) -> list[np.ndarray]:
        """Feature 0 (text ids) or 1 (codes) of every row, in one bulk read."""
        name = ("text_ids", "codes")[feature]
        offsets = self.packed.offsets[name]
        data = self.packed.read(name, 0, int(offsets[-1]))
        return [data[offsets[r]:offsets[r + 1]] for r in rows]

    def close(self) -> None:
        self.packed.close()
