"""Reading an output directory back, whatever its store format: a map-style dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..contract import MANIFESTS
from ..manifest import read_output_manifest
from .formats import detect_format

SPLITS = tuple(MANIFESTS)  # ("train", "val")


class FeatureReader:
    """Every utterance of one output directory (npy or zarr), by position or by id.

    Order: the train manifest's lines, then the val manifest's. An item is a dict with id,
    split, text_ids [T] int32, codes [C] int32, condition [32, D] float32 and emo_vec [D]
    float32 (a float16 store is upcast). A map-style dataset, e.g.:

        loader = torch.utils.data.DataLoader(FeatureReader.open(out), batch_size=None, shuffle=True)
    """

    def __init__(self, out_dir: Path, fmt, rows, ids: list[str], locations: list, splits: np.ndarray,
                 text_lens: np.ndarray, code_lens: np.ndarray):
        self.out_dir = out_dir
        self.format = fmt.name
        self._rows = rows
        self.ids = ids
        self._locations = locations
        self._splits = splits
        self._text_lens = text_lens
        self._code_lens = code_lens
        self._index = {id_: i for i, id_ in enumerate(ids)}
        if len(self._index) != len(ids):
            raise ValueError(f"{out_dir}: an id appears on more than one manifest line")

    @classmethod
    def open(cls, out_dir: str | os.PathLike) -> "FeatureReader":
        """Torn or malformed manifest lines are skipped (as OutputDir does on resume); a line
        pointing to data the store does not hold is an error (a crash no resume has repaired)."""
        out_dir = Path(out_dir)
        fmt = detect_format(out_dir)
        if not fmt.holds(out_dir):
            raise FileNotFoundError(f"{out_dir} holds neither manifests nor a feature store")
        rows = fmt.rows(out_dir)
        ids, locations, splits, text_lens, code_lens = [], [], [], [], []
        try:
            for s, split in enumerate(SPLITS):
                for line in read_output_manifest(out_dir / MANIFESTS[split])[0]:
                    try:
                        locations.append(rows.locate(line))
                    except ValueError as e:
                        raise ValueError(f"{out_dir}: {e}") from None
                    ids.append(line["id"])
                    splits.append(s)
                    text_lens.append(line.get("text_len", -1))
                    code_lens.append(line.get("code_len", -1))
        except BaseException:
            rows.close()
            raise
        return cls(out_dir, fmt, rows, ids, locations, np.array(splits, np.int8),
                   np.array(text_lens, np.int64), np.array(code_lens, np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, id_: str) -> int:
        try:
            return self._index[id_]
        except KeyError:
            raise KeyError(f"{id_!r} is not in {self.out_dir}") from None

    def _item(self, i: int, arrays) -> dict:
        text_ids, codes, condition, emo_vec = arrays
        return {"id": self.ids[i], "split": SPLITS[self._splits[i]],
                "text_ids": text_ids.astype(np.int32, copy=False),
                "codes": codes.astype(np.int32, copy=False),
                "condition": condition.astype(np.float32, copy=False),
                "emo_vec": emo_vec.astype(np.float32, copy=False)}

    def __getitem__(self, key: int | str) -> dict:
        i = self.index_of(key) if isinstance(key, str) else int(key)
        if i < 0:
            i += len(self.ids)
        if not 0 <= i < len(self.ids):
            raise IndexError(f"index {key} out of range for {len(self.ids)} utterances")
        return self._item(i, self._rows.load(self._locations[i]))

    def items(self, indices=None):
        """(index, item) for every index (default: all), read in bulk where the store can; in
        the store's order, which need not be the order given."""
        indices = list(range(len(self.ids))) if indices is None else [int(i) for i in indices]
        for k, arrays in self._rows.load_many([self._locations[i] for i in indices]):
            yield indices[k], self._item(indices[k], arrays)

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
        return [a.astype(np.int32, copy=False) for a in self._rows.all_of(0, self._locations)]

    def all_codes(self) -> list[np.ndarray]:
        """Every item's codes (int32), in reader order; one bulk read for zarr."""
        return [a.astype(np.int32, copy=False) for a in self._rows.all_of(1, self._locations)]

    def close(self) -> None:
        self._rows.close()

    def __enter__(self) -> "FeatureReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
