"""The packed store's layout (`--format zarr`): every utterance of a run in a few large files.

OUT/features.zarr is one Zarr v3 group. Rows are utterances in write order; a manifest line
carries {"row": i} instead of the four *_path keys.

    array         dtype             shape           inner chunk   shard (one file)
    id_utf8       uint8             [bytes]         65,536        16,777,216  (16 MiB)
    id_offsets    int64             [N+1]           16,384        262,144     (2 MiB)
    text_ids      int32             [tokens]        8,192         4,194,304   (16 MiB)
    text_offsets  int64             [N+1]           16,384        262,144
    codes         int16             [codes]         16,384        8,388,608   (16 MiB)
    code_offsets  int64             [N+1]           16,384        262,144
    condition     float32 | float16 [N, 32, 1280]   1 row         1,024 rows  (160 | 80 MiB)
    emo_vec       float32 | float16 [N, 1280]       16 rows       4,096 rows  (20 | 10 MiB)

Ragged features are flat arrays plus offsets: row i's codes are codes[o[i]:o[i+1]] with
o = code_offsets. Every array is sharded (index at the end, crc32c) with zstd inside.

Shard sizes: a shard file is rewritten whole whenever rows are appended to it (the format cannot
grow in place and stay crash-safe), so small shards mean little rewriting and large shards few
files. The condition latents are ~96% of the bytes; 1,024 rows per shard puts 100,000
utterances in 98 condition files and ~150 files in all (see `estimate_file_count`), while one
append rewrites the partly filled condition shard (at most 160 MiB for float32) plus the new
rows. One-row condition chunks make reading an utterance one decode.

The group attributes name the layout and its version, the latent dtype and shape, the `commit`
(row count and element counts: the commit point, see writer.py) and `merged` (per-source
progress of a merge). This module imports no zarr: knowing the layout is cheap.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..features import UtteranceFeatures

STORE_DIR = "features.zarr"
LAYOUT = "indextts2-packed-features"
LAYOUT_VERSION = 1
LATENT_DTYPES = ("float32", "float16")
# (flat data array, its offsets array) for each ragged feature
RAGGED = (("id_utf8", "id_offsets"), ("text_ids", "text_offsets"), ("codes", "code_offsets"))
OFFSETS = tuple(off for _, off in RAGGED)


@dataclass(frozen=True)
class ArraySpec:
    name: str
    dtype: str
    row_shape: tuple[int, ...]  # shape of one row; () for flat arrays
    chunk_rows: int             # rows per inner chunk (one zstd frame)
    shard_rows: int             # rows per shard (one file)
    level: int                  # zstd level


def array_specs(latent_dtype: str = "float32", condition_len: int = 32,
                dim: int = 1280) -> dict[str, ArraySpec]:
    # Float latents are mostly mantissa noise: zstd level 1 compresses them as well as level 3.
    specs = (
        ArraySpec("id_utf8", "uint8", (), 1 << 16, 1 << 24, 3),
        ArraySpec("id_offsets", "int64", (), 1 << 14, 1 << 18, 3),
        ArraySpec("text_ids", "int32", (), 1 << 13, 1 << 22, 3),
        ArraySpec("text_offsets", "int64", (), 1 << 14, 1 << 18, 3),
        ArraySpec("codes", "int16", (), 1 << 14, 1 << 23, 3),
        ArraySpec("code_offsets", "int64", (), 1 << 14, 1 << 18, 3),
        ArraySpec("condition", latent_dtype, (condition_len, dim), 1, 1024, 1),
        ArraySpec("emo_vec", latent_dtype, (dim,), 16, 4096, 1),
    )
    return {s.name: s for s in specs}


def estimate_file_count(rows: int, text_ids: int, codes: int, id_bytes: int) -> int:
    """Files in a store of `rows` utterances holding these element totals: one per shard that
    holds data, one zarr.json per array and one for the group."""
    specs = array_specs()
    lengths = {"id_utf8": id_bytes, "text_ids": text_ids, "codes": codes,
               "condition": rows, "emo_vec": rows}
    lengths.update({name: rows + 1 if rows else 0 for name in OFFSETS})  # [0] alone is fill
    shards = sum(math.ceil(lengths[n] / s.shard_rows) for n, s in specs.items())
    return shards + len(specs) + 1


@dataclass
class Block:
    """Consecutive rows in column form: what one append writes, what a bulk read returns."""
    ids: list[str]
    text_ids: np.ndarray   # [sum text_lens] int32
    text_lens: np.ndarray  # [n] int64
    codes: np.ndarray      # [sum code_lens] int16
    code_lens: np.ndarray  # [n] int64
    condition: np.ndarray  # [n, 32, 1280]
    emo_vec: np.ndarray    # [n, 1280]

    @classmethod
    def from_items(cls, items: list[UtteranceFeatures], latent_dtype: str) -> "Block":
        def flat(arrays, dtype):
            return np.concatenate([np.asarray(a).reshape(-1) for a in arrays]).astype(dtype) \
                if arrays else np.zeros(0, dtype)
        return cls(
            ids=[it.id for it in items],
            text_ids=flat([it.text_ids for it in items], np.int32),
            text_lens=np.array([np.size(it.text_ids) for it in items], np.int64),
            codes=flat([it.codes for it in items], np.int16),
            code_lens=np.array([np.size(it.codes) for it in items], np.int64),
            condition=np.stack([it.condition for it in items]).astype(latent_dtype, copy=False),
            emo_vec=np.stack([it.emo_vec for it in items]).astype(latent_dtype, copy=False),
        )

    def item(self, k: int, t: np.ndarray, c: np.ndarray) -> UtteranceFeatures:
        """Row k of the block; t and c are the cumulative text and code offsets ([0, ...])."""
        return UtteranceFeatures(id=self.ids[k], text_ids=self.text_ids[t[k]:t[k + 1]],
                                 codes=self.codes[c[k]:c[k + 1]], condition=self.condition[k],
                                 emo_vec=self.emo_vec[k])


def zero_commit() -> dict:
    return {"rows": 0, **{data: 0 for data, _ in RAGGED}}


def zarr_dir(path: str | os.PathLike) -> Path:
    """An output directory or its features.zarr -> the features.zarr."""
    path = Path(path)
    return path if path.name == STORE_DIR else path / STORE_DIR


def holds_store(out: str | os.PathLike) -> bool:
    """`out` (an output directory or a features.zarr) holds a packed store's group."""
    return (zarr_dir(out) / "zarr.json").exists()


def check_layout(attrs: dict, where: Path) -> None:
    if attrs.get("layout") != LAYOUT or attrs.get("layout_version") != LAYOUT_VERSION:
        raise ValueError(f"{where} is not a packed feature store of this tool "
                         f"(layout {attrs.get('layout')!r} v{attrs.get('layout_version')!r})")
