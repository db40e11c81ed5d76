"""Shard files of the packed store, encoded and decoded here rather than through zarr's API.

Why: zarr's own `Array.__setitem__`, given the same whole, shard-aligned blocks (the job's
1,024-row flushes) through the same durable store, wrote more slowly, beyond the 1.5x this
module's upkeep is worth. `tools/bench_store.py --format zarr --zarr-codec own|api`, zarr 3.1.6
(the newest release; 3.1.x is the pin), synthetic float32 utterances in batches of 256, a
2-core VM shared with other work (load average at start -> end of each run):

    utterances  own codec                      zarr API                       API / own
    100,000     157.9 s (load 2.5 -> 4.3)      375.0 s (load 4.3 -> 7.0)      2.37
    100,000     437.5 s (load 6.8 -> 8.6)      444.1 s (load 8.4 -> 8.5)      1.02
    20,000      29.5 s (load 5.1 -> 7.3)       65.9 s (load 7.3 -> 8.9)       2.23
    20,000      25.4 s (load 8.9 -> 8.3)       44.7 s (load 8.3 -> 7.3)       1.76

Run one after another (own, api, own, api). Where the machine had a core to spare the API took
about twice as long; at load 8.5 on 2 cores both were starved alike. zarr's per-chunk Python and
event-loop work dominates with one-row condition chunks. Reading a row through zarr costs about
a millisecond of the same work per call, so rows are read here too (ShardRows).

The format is zarr's `sharding_indexed` codec exactly: the encoded chunks, then a little-endian
(offset, nbytes) uint64 table with one entry per chunk (2**64-1 twice for a chunk never
written) and its crc32c (little-endian uint32). Inner chunks are `bytes` (little-endian) then
zstd. zarr writes the metadata (writer.py) and reads every file written here
(tests/test_store_zarr_codec.py, for each zarr version the pin in pyproject.toml allows).
"""

from __future__ import annotations

import os
from pathlib import Path

import google_crc32c  # zarr's own dependency (its crc32c codec)
import numpy as np
from numcodecs import Zstd

from .layout import ArraySpec

EMPTY = 2**64 - 1  # shard index entry of a chunk that was never written
INDEX_ENTRY = 16   # bytes per chunk in the index: offset and nbytes, uint64 each
CRC = 4


def sharded_layout(meta: dict, row_shape: tuple[int, ...], itemsize: int) -> tuple[int, int] | None:
    """(chunk rows, shard rows) when an array's metadata (zarr.json as a dict) says it is
    encoded the way this module encodes: sharding_indexed(bytes little-endian, zstd; index
    bytes + crc32c at the end), chunks and shards spanning whole rows. None otherwise."""
    codecs = meta.get("codecs") or ()
    if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
        return None
    conf = codecs[0]["configuration"]
    inner = [c["name"] for c in conf["codecs"]]
    index = [c["name"] for c in conf["index_codecs"]]
    endian = (conf["codecs"][0].get("configuration") or {}).get("endian", "little")
    shard = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
    chunk = tuple(conf["chunk_shape"])
    if (inner != ["bytes", "zstd"] or index != ["bytes", "crc32c"]
            or conf.get("index_location", "end") != "end"
            or (endian != "little" and itemsize > 1)
            or chunk[1:] != row_shape or shard[1:] != row_shape or shard[0] % chunk[0]):
        return None
    return chunk[0], shard[0]


def shard_index(tail: bytes, where, chunks: int | None = None) -> np.ndarray:
    """The (offset, nbytes) table ending a shard file, checked against its crc32c."""
    table, crc = tail[:-CRC], tail[-CRC:]
    if (len(tail) < CRC or (chunks is not None and len(table) != chunks * INDEX_ENTRY)
            or google_crc32c.value(table) != int.from_bytes(crc, "little")):
        raise ValueError(f"{where}: damaged shard index")
    return np.frombuffer(table, "<u8").reshape(-1, 2)


def encode_shard(spec: ArraySpec, shard: int, existing: bytes | None, start: int,
                 values: np.ndarray, where="shard") -> list:
    """The parts (bytes-like, to be concatenated) of shard `shard` of array `spec` holding
    `values` at rows [start, start + len(values)) over the `existing` file's contents.

    Chunks already in the file are kept as encoded bytes; a chunk only partly covered by
    `values` is decoded, overlaid and re-encoded (rows before `start` are committed and kept,
    rows past the end are padding)."""
    per_shard = spec.shard_rows // spec.chunk_rows
    zstd = Zstd(level=spec.level)
    values = np.ascontiguousarray(values, dtype=np.dtype(spec.dtype).newbyteorder("<"))
    chunks: list = [None] * per_shard
    if existing is not None:
        data = memoryview(existing)
        index = shard_index(bytes(data[-(per_shard * INDEX_ENTRY + CRC):]), where)
        for j, (offset, nbytes) in enumerate(index.tolist()):
            if offset != EMPTY:
                chunks[j] = data[offset:offset + nbytes]
    first_row = shard * spec.shard_rows
    stop = start + len(values)
    for j in range((start - first_row) // spec.chunk_rows,
                   (stop - 1 - first_row) // spec.chunk_rows + 1):
        c0 = first_row + j * spec.chunk_rows
        lo, hi = max(start, c0), min(stop, c0 + spec.chunk_rows)
        if (lo, hi) == (c0, c0 + spec.chunk_rows):
            chunk = values[lo - start:hi - start]
        else:
            chunk = np.zeros((spec.chunk_rows, *spec.row_shape), values.dtype)
            if chunks[j] is not None:
                chunk[:] = np.frombuffer(zstd.decode(chunks[j]), values.dtype).reshape(chunk.shape)
            chunk[lo - c0:hi - c0] = values[lo - start:hi - start]
        chunks[j] = zstd.encode(np.ascontiguousarray(chunk))
    index = np.full((per_shard, 2), EMPTY, "<u8")
    parts, position = [], 0
    for j, chunk in enumerate(chunks):
        if chunk is not None:
            index[j] = (position, len(chunk))
            parts.append(chunk)
            position += len(chunk)
    table = index.tobytes()
    return parts + [table, google_crc32c.value(table).to_bytes(CRC, "little")]


class ShardRows:
    """Rows of one array read straight from its shard files.

    Reads the shard index once per shard (checked against its crc32c); then a row is one pread
    and one zstd decode. Arrays in any other encoding are read through zarr."""

    def __init__(self, array, directory: Path):
        self.array = array
        self.directory = directory
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        self.row_shape = tuple(array.shape[1:])
        self.fill = np.array(array.fill_value, dtype=self.dtype)
        self._shards: dict[int, tuple[int, np.ndarray] | None] = {}
        self._last: tuple[tuple[int, int], np.ndarray] | None = None  # last decoded chunk
        self._zstd = Zstd()
        layout = sharded_layout(array.metadata.to_dict(), self.row_shape, self.dtype.itemsize)
        self.fast = layout is not None
        if layout is not None:
            self.chunk_rows, shard_rows = layout
            self.chunks_per_shard = shard_rows // self.chunk_rows

    def _shard(self, s: int) -> tuple[int, np.ndarray] | None:
        if s not in self._shards:
            key = self.array.metadata.encode_chunk_key((s,) + (0,) * len(self.row_shape))
            try:
                fd = os.open(self.directory / key, os.O_RDONLY)
            except FileNotFoundError:
                self._shards[s] = None  # never written: all fill
                return None
            size = os.fstat(fd).st_size
            nbytes = self.chunks_per_shard * INDEX_ENTRY + CRC
            try:
                index = shard_index(os.pread(fd, nbytes, max(0, size - nbytes)),
                                    self.directory / key, self.chunks_per_shard)
            except ValueError:
                os.close(fd)
                raise
            self._shards[s] = (fd, index)
        return self._shards[s]

    def _chunk(self, k: int) -> np.ndarray | None:
        s, j = divmod(k, self.chunks_per_shard)
        if self._last is not None and self._last[0] == (s, j):
            return self._last[1]
        shard = self._shard(s)
        if shard is None or shard[1][j, 0] == EMPTY:
            return None
        fd, index = shard
        raw = os.pread(fd, int(index[j, 1]), int(index[j, 0]))
        chunk = np.frombuffer(self._zstd.decode(raw), self.dtype).reshape(
            (self.chunk_rows, *self.row_shape))
        self._last = ((s, j), chunk)
        return chunk

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a new writable array."""
        if not self.fast:
            return np.array(self.array[start:stop], dtype=self.dtype)
        out = np.empty((stop - start, *self.row_shape), self.dtype)
        row = start
        while row < stop:
            k = row // self.chunk_rows
            first = k * self.chunk_rows
            end = min(stop, first + self.chunk_rows)
            chunk = self._chunk(k)
            part = self.fill if chunk is None else chunk[row - first:end - first]
            out[row - start:end - start] = part
            row = end
        return out

    def close(self) -> None:
        for entry in self._shards.values():
            if entry is not None:
                os.close(entry[0])
        self._shards.clear()
        self._last = None
