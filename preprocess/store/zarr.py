"""The packed store (`--format zarr`): every utterance of a run in a few large Zarr v3 files.

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

Writing: zarr creates the arrays and writes their metadata; shard files are encoded here (same
format, read back by zarr in the tests), because zarr's per-chunk overhead dominated writes.

Shard sizes: a shard file is rewritten whole whenever rows are appended to it (the format cannot
grow in place and stay crash-safe), so small shards mean little rewriting and large shards few
files. The condition latents are ~96% of the bytes;
1,024 rows per shard puts 100,000 utterances in 98 condition files and ~150 files in all (see
`estimate_file_count`), while one append rewrites the partly filled condition shard (at most
160 MiB for float32) plus the new rows. `ZarrStore(flush_rows=1024)` buffers rows so that each
shard is written about once. One-row condition chunks make reading an utterance one decode.

Crash safety. Every file is written to a temporary name, fsynced and renamed (DurableLocalStore),
so a shard holding committed rows is never torn. After all arrays of a batch are durable, the
group attribute `commit` (row count and element counts) is rewritten the same way: it is the
commit point. On open, arrays longer than the commit are cut back and stray files removed;
rows at or beyond the commit do not exist (`record_present` is False for them).
"""

from __future__ import annotations

import asyncio
import math
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import google_crc32c  # zarr's own dependency (its crc32c codec)
import numpy as np
import zarr  # the zarr package (absolute import), not this module
from numcodecs import Zstd
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore

from .fsutil import fsync_dir
from .npy import UtteranceFeatures

STORE_DIR = "features.zarr"
LAYOUT = "indextts2-packed-features"
LAYOUT_VERSION = 1
LATENT_DTYPES = ("float32", "float16")
# (flat data array, its offsets array) for each ragged feature
RAGGED = (("id_utf8", "id_offsets"), ("text_ids", "text_offsets"), ("codes", "code_offsets"))
OFFSETS = tuple(off for _, off in RAGGED)
EMPTY = 2**64 - 1  # shard index entry of a chunk that was never written


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


class DurableLocalStore(LocalStore):
    """A zarr LocalStore whose writes survive a power cut: temp file, fsync, rename. The
    directories touched are fsynced by `sync_dirs()`, which the writer calls before it commits.
    (zarr's own LocalStore renames too, but without fsync.)"""

    def __init__(self, root: Path | str, *, read_only: bool = False) -> None:
        super().__init__(root, read_only=read_only)
        self._dirty_dirs: set[str] = set()

    def write_parts(self, key: str, parts) -> None:
        """Write the concatenation of `parts` (bytes-like) as one file, durably and atomically."""
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
        try:
            with open(tmp, "wb") as f:
                for part in parts:
                    f.write(part)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._dirty_dirs.add(str(path.parent))

    async def set(self, key: str, value) -> None:
        if not self._is_open:
            await self._open()
        self._check_writable()
        await asyncio.to_thread(self.write_parts, key, [value.as_buffer_like()])

    async def set_if_not_exists(self, key: str, value) -> None:
        if not await self.exists(key):
            await self.set(key, value)

    def set_sync(self, key: str, value) -> None:
        self._check_writable()
        self.write_parts(key, [value.as_buffer_like()])

    def sync_dirs(self) -> None:
        dirs, self._dirty_dirs = self._dirty_dirs, set()
        for d in sorted(dirs):
            fsync_dir(d)


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


def _zero_commit() -> dict:
    return {"rows": 0, **{data: 0 for data, _ in RAGGED}}


def _zarr_dir(path: str | os.PathLike) -> Path:
    """An output directory or its features.zarr -> the features.zarr."""
    path = Path(path)
    return path if path.name == STORE_DIR else path / STORE_DIR


def _check_layout(attrs: dict, where: Path) -> None:
    if attrs.get("layout") != LAYOUT or attrs.get("layout_version") != LAYOUT_VERSION:
        raise ValueError(f"{where} is not a packed feature store of this tool "
                         f"(layout {attrs.get('layout')!r} v{attrs.get('layout_version')!r})")


class ZarrStore:
    """Appends utterances as rows of OUT/features.zarr; `write` returns [{"row": i}, ...].

    flush_rows=0 (default): every `write` is durable when it returns.
    flush_rows=N: rows are buffered and written when the row count crosses a multiple of N (and
    on `flush`/`close`), so each shard is written about once. `write` then returns before its
    rows are durable; OutputDir holds their manifest lines back until `is_durable` says so, and
    a crash loses only the buffered rows, which are recomputed.

    The directory is opened lazily (first write / record_present), so a store made before
    OutputDir(..., force=True) wipes the directory still starts from an empty store.
    """

    format = "zarr"

    def __init__(self, out_dir: str | os.PathLike, latent_dtype: str = "float32", *,
                 flush_rows: int = 0, condition_len: int = 32, dim: int = 1280):
        if latent_dtype not in LATENT_DTYPES:
            raise ValueError(f"latent_dtype must be one of {LATENT_DTYPES}, not {latent_dtype!r}")
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / STORE_DIR
        self.latent_dtype = latent_dtype
        self.flush_rows = flush_rows
        self.specs = array_specs(latent_dtype, condition_len, dim)
        self._group = None
        self._store: DurableLocalStore | None = None
        self._arrays: dict = {}
        self._commit = _zero_commit()
        self._merged: list[dict] = []
        self._ids: list[str] | None = None  # committed ids, loaded on first record_present
        self._pending: list[UtteranceFeatures] = []

    # -- opening and recovery ---------------------------------------------------------------

    def _open(self) -> None:
        if self._group is not None:
            return
        cond = self.specs["condition"].row_shape
        self._store = DurableLocalStore(self.path)
        if not (self.path / "zarr.json").exists():
            self._group = zarr.create_group(self._store, attributes={
                "layout": LAYOUT, "layout_version": LAYOUT_VERSION,
                "latent_dtype": self.latent_dtype, "condition_len": cond[0], "dim": cond[1],
                "commit": _zero_commit(), "merged": []})
            fsync_dir(self.out_dir)  # the new features.zarr entry itself
            attrs = self._group.attrs.asdict()
        else:
            self._group = zarr.open_group(self._store, mode="r+")
            attrs = self._group.attrs.asdict()
            _check_layout(attrs, self.path)
            found = (attrs.get("latent_dtype"), attrs.get("condition_len"), attrs.get("dim"))
            if found != (self.latent_dtype, *cond):
                raise ValueError(f"{self.path} holds {found[0]} latents [{found[1]}, {found[2]}]; "
                                 f"this run writes {self.latent_dtype} [{cond[0]}, {cond[1]}]")
        self._commit = dict(attrs.get("commit") or _zero_commit())
        self._merged = [dict(m) for m in attrs.get("merged", [])]
        for spec in self.specs.values():
            self._arrays[spec.name] = self._open_array(spec)
        self._truncate_to_commit()

    def _open_array(self, spec: ArraySpec):
        try:
            arr = self._group[spec.name]
        except KeyError:  # a fresh store, or a crash while it was being created
            rows = 1 if spec.name in OFFSETS else 0  # offsets start as [0] (the fill value)
            return self._group.create_array(
                spec.name, shape=(rows, *spec.row_shape), dtype=spec.dtype,
                chunks=(spec.chunk_rows, *spec.row_shape),
                shards=(spec.shard_rows, *spec.row_shape),
                compressors=ZstdCodec(level=spec.level), fill_value=0,
                chunk_key_encoding={"name": "default", "separator": "."})
        layout = _sharded_layout(arr.metadata.to_dict(), spec.row_shape, np.dtype(spec.dtype).itemsize)
        if (np.dtype(arr.dtype) != np.dtype(spec.dtype) or tuple(arr.shape[1:]) != spec.row_shape
                or layout != (spec.chunk_rows, spec.shard_rows)):
            raise ValueError(f"{self.path}/{spec.name}: {arr.dtype} {arr.shape} in another "
                             f"encoding than this tool writes ({spec.dtype}, chunks of "
                             f"{spec.chunk_rows} rows, shards of {spec.shard_rows})")
        return arr

    def _committed_length(self, name: str) -> int:
        rows = self._commit["rows"]
        if name in OFFSETS:
            return rows + 1
        if name in self._commit:
            return self._commit[name]
        return rows

    def _truncate_to_commit(self) -> None:
        """Cut rows a crash left beyond the commit; delete temp files and shards past the end."""
        for name, spec in self.specs.items():
            arr = self._arrays[name]
            length = self._committed_length(name)
            if arr.shape[0] < length:
                raise ValueError(f"{self.path}/{name} holds {arr.shape[0]} rows but "
                                 f"{length} are committed: the store is damaged")
            if arr.shape[0] > length:
                arr.resize((length, *spec.row_shape))
            shards_in_use = math.ceil(length / spec.shard_rows)
            for f in (self.path / name).iterdir():
                parts = f.name.split(".")  # shard files are c.<row shard>[.0 ...]
                past_end = (len(parts) > 1 and parts[0] == "c" and parts[1].isdigit()
                            and int(parts[1]) >= shards_in_use)
                if f.name.endswith(".partial") or past_end:
                    f.unlink()
        for f in self.path.glob("*.partial"):
            f.unlink()
        self._store.sync_dirs()

    # -- the OutputDir protocol ------------------------------------------------------------

    @property
    def committed_rows(self) -> int:
        self._open()
        return self._commit["rows"]

    @property
    def rows(self) -> int:
        """Rows assigned so far (committed + buffered): the next write starts here."""
        return self.committed_rows + len(self._pending)

    def write(self, items: list[UtteranceFeatures]) -> list[dict]:
        self._open()
        for item in items:
            self._check(item)
        first = self.rows
        self._pending.extend(items)
        every = self.flush_rows
        if every <= 0 or self.rows // every > self.committed_rows // every:
            self.flush()
        return [{"row": first + k} for k in range(len(items))]

    def flush(self) -> None:
        """Make every buffered row durable and committed."""
        if not self._pending:
            return
        self._append(Block.from_items(self._pending, self.latent_dtype))
        self._pending = []

    def is_durable(self, line: dict) -> bool:
        """The row of a manifest line just written is committed (not only buffered)."""
        return line["row"] < self.committed_rows

    def record_present(self, line: dict) -> bool:
        """A manifest line's row is committed and holds that id."""
        row = line.get("row")
        if not isinstance(row, int) or isinstance(row, bool) or not 0 <= row < self.committed_rows:
            return False
        return self.ids()[row] == line.get("id")

    def ids(self) -> list[str]:
        """Ids of the committed rows, in row order."""
        self._open()
        if self._ids is None:
            offsets = np.asarray(self._arrays["id_offsets"][: self._commit["rows"] + 1])
            data = np.asarray(self._arrays["id_utf8"][: int(offsets[-1])]).tobytes()
            self._ids = [data[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]
        return self._ids

    def close(self) -> None:
        if self._group is not None:
            self.flush()

    # -- appending ---------------------------------------------------------------------------

    def _check(self, item: UtteranceFeatures) -> None:
        cond = self.specs["condition"].row_shape
        problems = []
        if np.shape(item.condition) != cond:
            problems.append(f"condition shape {np.shape(item.condition)} != {cond}")
        if np.shape(item.emo_vec) != cond[1:]:
            problems.append(f"emo_vec shape {np.shape(item.emo_vec)} != {cond[1:]}")
        if np.ndim(item.text_ids) != 1 or np.ndim(item.codes) != 1:
            problems.append("text_ids and codes must be 1-D")
        codes = np.asarray(item.codes)
        if codes.size and (codes.min() < -(1 << 15) or codes.max() >= 1 << 15):
            problems.append("codes do not fit int16")
        if problems:
            raise ValueError(f"{item.id}: " + "; ".join(problems))

    def _append(self, block: Block, merged: list[dict] | None = None) -> None:
        """Write `block` after the committed rows, make it durable, then commit.
        Positions come from the commit alone, so a retry after a failure rewrites the same rows."""
        self._open()
        start = self._commit
        n = len(block.ids)
        encoded = [i.encode("utf-8") for i in block.ids]
        id_bytes = np.frombuffer(b"".join(encoded), np.uint8)
        ragged = {"id_utf8": (id_bytes, np.array([len(e) for e in encoded], np.int64)),
                  "text_ids": (block.text_ids, block.text_lens),
                  "codes": (block.codes, block.code_lens)}
        commit = {"rows": start["rows"] + n}
        for data_name, offsets_name in RAGGED:
            data, lens = ragged[data_name]
            self._put(data_name, start[data_name], data)
            self._put(offsets_name, start["rows"] + 1, start[data_name] + np.cumsum(lens))
            commit[data_name] = start[data_name] + len(data)
        self._put("condition", start["rows"], block.condition)
        self._put("emo_vec", start["rows"], block.emo_vec)
        self._store.sync_dirs()
        attrs = {"commit": commit}
        if merged is not None:
            attrs["merged"] = merged
        self._group.update_attributes(attrs)  # the commit point (durable atomic rename)
        self._store.sync_dirs()
        self._commit = commit
        if merged is not None:
            self._merged = merged
        if self._ids is not None:
            self._ids.extend(block.ids)

    def _put(self, name: str, start: int, values: np.ndarray) -> None:
        """Rows [start, start + len(values)) of array `name`: zarr.json first (a crash leaves the
        array longer than the commit, which open cuts back), then each shard touched."""
        spec = self.specs[name]
        arr = self._arrays[name]
        arr.resize((start + len(values), *spec.row_shape))
        values = np.ascontiguousarray(values, dtype=np.dtype(spec.dtype).newbyteorder("<"))
        stop = start + len(values)
        row = start
        while row < stop:
            shard = row // spec.shard_rows
            end = min(stop, (shard + 1) * spec.shard_rows)
            self._write_shard(spec, arr, shard, row, values[row - start:end - start])
            row = end

    def _write_shard(self, spec: ArraySpec, arr, shard: int, start: int, values: np.ndarray) -> None:
        """Put `values` at rows [start, ...) of one shard and rewrite its file.

        We encode shards ourselves (zarr's sharding format: chunks, then a little-endian
        (offset, nbytes) uint64 table and its crc32c) rather than through zarr's setitem, whose
        per-chunk Python and event-loop work took 6x the zstd time of the one-row condition
        chunks on our test machine.
        Chunks already in the file are copied as encoded bytes; a chunk only partly covered by
        `values` is decoded, overlaid and re-encoded."""
        key = arr.metadata.encode_chunk_key((shard,) + (0,) * len(spec.row_shape))
        path = self.path / spec.name / key
        per_shard = spec.shard_rows // spec.chunk_rows
        zstd = Zstd(level=spec.level)
        chunks: list = [None] * per_shard
        if path.exists():
            data = memoryview(path.read_bytes())
            index = _shard_index(bytes(data[-(per_shard * 16 + 4):]), path)
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
            else:  # rows before `start` are committed and kept; rows past the end are padding
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
        parts += [table, google_crc32c.value(table).to_bytes(4, "little")]
        self._store.write_parts(f"{spec.name}/{key}", parts)

    # -- replacing the text ids (`preprocess text-ids`) ----------------------------------------

    def stage_text_ids(self, replace: Mapping[int, np.ndarray], staging_dir: str | os.PathLike,
                       attributes: dict | None = None) -> Path:
        """Write `staging_dir`/features.zarr: a complete copy of this store in which row r holds
        the text ids replace[r] (rows not in `replace` keep theirs), for `swap_with`.

        Only text_ids and text_offsets are written anew; every file of the other arrays is
        hard-linked (the same inode: ids, codes and latents stay byte for byte; copied where
        the file system cannot link). The copy's `commit` counts the new text ids, and
        `attributes` are added to its group. Durable when this returns; a rerun removes a
        partial copy first. This store is not modified."""
        import shutil

        self._open()
        self.flush()
        rows = self._commit["rows"]
        bad = [r for r in replace if not 0 <= r < rows]
        if bad:
            raise IndexError(f"rows {bad[:5]} are not among the {rows} committed rows of {self.path}")
        dest = _zarr_dir(staging_dir)
        if dest.resolve() == self.path.resolve():
            raise ValueError("stage_text_ids needs a staging directory other than the store's")
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)

        offsets = np.asarray(self._arrays["text_offsets"][: rows + 1], np.int64)
        old = np.asarray(self._arrays["text_ids"][: int(offsets[-1])], np.int32)
        pieces, lens = [], np.zeros(rows, np.int64)
        for r in range(rows):
            ids = replace.get(r)
            piece = old[offsets[r]:offsets[r + 1]] if ids is None else \
                np.asarray(ids).reshape(-1).astype(np.int32)
            pieces.append(piece)
            lens[r] = piece.size
        flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)

        cond = self.specs["condition"].row_shape
        copy = ZarrStore(dest.parent, self.latent_dtype, condition_len=cond[0], dim=cond[1])
        copy._store = DurableLocalStore(dest)
        commit = {**self._commit, "text_ids": int(flat.size)}
        # `commit` keeps its place among the attributes; its value is the copy's
        attrs = {**self._group.attrs.asdict(), **(attributes or {}), "commit": commit}
        copy._group = zarr.create_group(copy._store, attributes=attrs)
        for name in ("text_ids", "text_offsets"):
            copy._arrays[name] = copy._open_array(copy.specs[name])
        copy._put("text_ids", 0, flat)
        copy._put("text_offsets", 1, np.cumsum(lens))
        copy._store.sync_dirs()
        for name in self.specs:
            if name not in ("text_ids", "text_offsets"):
                _link_tree(self.path / name, dest / name)
        fsync_dir(dest)
        fsync_dir(dest.parent)
        return dest

    def swap_with(self, staging_dir: str | os.PathLike) -> None:
        """Exchange features.zarr and `staging_dir`/features.zarr in one atomic rename (Linux
        renameat2 RENAME_EXCHANGE): a reader opening the store finds the old one or the new one,
        each consistent with its own commit, never a mixture or nothing. Afterwards the old
        store lies in `staging_dir`, and this object reopens (lazily) on the new one."""
        if self._pending:
            raise RuntimeError(f"{self.path}: buffered rows must be flushed before a swap")
        other = _zarr_dir(staging_dir)
        exchange_paths(self.path, other)
        fsync_dir(self.out_dir)
        fsync_dir(other.parent)
        self._group, self._store, self._arrays = None, None, {}
        self._commit, self._merged, self._ids = _zero_commit(), [], None


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file under `src` into `dst` (copying where linking fails), durably."""
    import shutil

    for root, _, files in os.walk(src):
        target = dst / Path(root).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in sorted(files):
            if name.endswith(".partial"):
                continue
            try:
                os.link(Path(root) / name, target / name)
            except OSError:
                shutil.copyfile(Path(root) / name, target / name)
                with open(target / name, "rb+") as f:
                    os.fsync(f.fileno())
        fsync_dir(target)


def exchange_paths(a: str | os.PathLike, b: str | os.PathLike) -> None:
    """Swap two paths of one file system atomically (Linux renameat2 with RENAME_EXCHANGE:
    ext4, xfs, btrfs, tmpfs, ...). Raises OSError where the system or file system cannot."""
    import ctypes
    import errno

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available on this system")
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot exchange {a} and {b} atomically: {os.strerror(err)}")


# -- reading ---------------------------------------------------------------------------------

def _sharded_layout(meta: dict, row_shape: tuple[int, ...], itemsize: int) -> tuple[int, int] | None:
    """(chunk rows, shard rows) when an array is encoded the way this module writes it:
    sharding_indexed(bytes little-endian, zstd; index bytes + crc32c at the end), chunks and
    shards spanning whole rows. None otherwise."""
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


class _ShardRows:
    """Rows of one of our arrays read straight from its shard files.

    zarr's generic read path costs about a millisecond of Python and event-loop work per call;
    this reads the shard index once per shard (checked against its crc32c), then a row is one
    pread and one zstd decode. Arrays in any other encoding are read through zarr."""

    def __init__(self, array, directory: Path):
        self.array = array
        self.directory = directory
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        self.row_shape = tuple(array.shape[1:])
        self.fill = np.array(array.fill_value, dtype=self.dtype)
        self._shards: dict[int, tuple[int, np.ndarray] | None] = {}
        self._last: tuple[tuple[int, int], np.ndarray] | None = None  # last decoded chunk
        self._zstd = Zstd()
        layout = _sharded_layout(array.metadata.to_dict(), self.row_shape, self.dtype.itemsize)
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
            nbytes = self.chunks_per_shard * 16 + 4
            try:
                index = _shard_index(os.pread(fd, nbytes, max(0, size - nbytes)), self.directory / key,
                                     self.chunks_per_shard)
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


def _shard_index(tail: bytes, where, chunks: int | None = None) -> np.ndarray:
    """The (offset, nbytes) table ending a shard file, checked against its crc32c."""
    table, crc = tail[:-4], tail[-4:]
    if (len(tail) < 4 or (chunks is not None and len(table) != chunks * 16)
            or google_crc32c.value(table) != int.from_bytes(crc, "little")):
        raise ValueError(f"{where}: damaged shard index")
    return np.frombuffer(table, "<u8").reshape(-1, 2)


class PackedArrays:
    """Read-only view of the committed rows of a features.zarr. Offsets live in memory; rows
    are read through _ShardRows. A snapshot: rows committed later are not seen."""

    def __init__(self, path: str | os.PathLike):
        self.path = _zarr_dir(path)
        if not (self.path / "zarr.json").exists():
            raise FileNotFoundError(f"no packed feature store at {self.path}")
        group = zarr.open_group(LocalStore(self.path, read_only=True), mode="r")
        attrs = group.attrs.asdict()
        _check_layout(attrs, self.path)
        self.latent_dtype = attrs["latent_dtype"]
        self.condition_len, self.dim = attrs["condition_len"], attrs["dim"]
        self.commit = dict(attrs.get("commit") or _zero_commit())
        self.rows = self.commit["rows"]
        self.arrays = {name: group[name] for name in array_specs()}
        for name, arr in self.arrays.items():
            need = self.rows + 1 if name in OFFSETS else self.commit.get(name, self.rows)
            if arr.shape[0] < need:
                raise ValueError(f"{self.path}/{name} holds {arr.shape[0]} rows but "
                                 f"{need} are committed: the store is damaged")
        self.offsets = {data: np.asarray(self.arrays[off][: self.rows + 1], np.int64)
                        for data, off in RAGGED}
        self._rows = {name: _ShardRows(arr, self.path / name) for name, arr in self.arrays.items()}
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


# -- merging per-worker stores -----------------------------------------------------------------

class MergeMap(Mapping):
    """(source index, source row) -> row in the merged store. Each source's rows are one
    contiguous run, so this holds only (first row, count) per source."""

    def __init__(self, spans: list[tuple[int, int]]):
        self.spans = spans

    def __getitem__(self, key: tuple[int, int]) -> int:
        source, row = key
        if not 0 <= source < len(self.spans) or not 0 <= row < self.spans[source][1]:
            raise KeyError(key)
        return self.spans[source][0] + row

    def __iter__(self):
        for source, (_, count) in enumerate(self.spans):
            for row in range(count):
                yield (source, row)

    def __len__(self) -> int:
        return sum(count for _, count in self.spans)


def merge_zarr_stores(sources: list[Path], dest: Path | ZarrStore) -> MergeMap:
    """Append the committed rows of each source store (output directories or their
    features.zarr) to `dest`, in order; returns old (source index, row) -> new row.
    `dest` is an output directory, or the ZarrStore already open on it (e.g. OutputDir's
    store): a second ZarrStore on the same directory would not see the rows this one adds.

    Data are decoded and re-encoded: zarr has no API to move encoded chunks between arrays,
    and ragged rows land at other element offsets anyway. Rows are copied in blocks ending on
    the destination's condition shard boundaries, so each shard file is written about once.
    Resumable: each block commits together with per-source progress in the `merged`
    attribute; rerunning the same merge skips what is done and returns the same mapping.
    Orphan rows (committed, but in no manifest) are copied too."""
    dest_dir = dest.path if isinstance(dest, ZarrStore) else _zarr_dir(dest)
    packed = [PackedArrays(s) for s in sources]
    try:
        if not packed:
            raise ValueError("no source stores to merge")
        kind = {(p.latent_dtype, p.condition_len, p.dim) for p in packed}
        if len(kind) != 1:
            raise ValueError(f"sources differ in latent dtype or shape: {sorted(kind)}")
        if any(p.path.resolve() == dest_dir.resolve() for p in packed):
            raise ValueError(f"{dest_dir} is also a source")
        dtype, condition_len, dim = kind.pop()
        store = dest if isinstance(dest, ZarrStore) else \
            ZarrStore(dest_dir.parent, dtype, condition_len=condition_len, dim=dim)
        if (store.latent_dtype, *store.specs["condition"].row_shape) != (dtype, condition_len, dim):
            raise ValueError(f"{dest_dir} stores {store.latent_dtype} latents "
                             f"{store.specs['condition'].row_shape}, the sources {dtype} "
                             f"({condition_len}, {dim})")
        store._open()
        store.flush()
        shard_rows = store.specs["condition"].shard_rows
        spans = []
        for src in packed:
            key = str(src.path.resolve())
            merged = [dict(m) for m in store._merged]
            entry = next((m for m in merged if m["source"] == key), None)
            if entry is None:
                entry = {"source": key, "rows": src.rows, "first_row": store.committed_rows,
                         "done": 0}
                merged.append(entry)
            elif entry["rows"] != src.rows:
                raise ValueError(f"{key} held {entry['rows']} rows when it was merged into "
                                 f"{dest_dir}, now {src.rows}")
            resumes_at = entry["first_row"] + entry["done"]
            if entry["done"] < src.rows and store.committed_rows != resumes_at:
                raise ValueError(f"{dest_dir} gained rows after a partial merge of {key}")
            while entry["done"] < src.rows:
                a = entry["done"]
                dest_row = entry["first_row"] + a
                b = min(src.rows, a + shard_rows - dest_row % shard_rows)
                entry["done"] = b
                store._append(src.block(a, b), merged=merged)
                merged = [dict(m) for m in store._merged]
                entry = next(m for m in merged if m["source"] == key)
            spans.append((entry["first_row"], entry["rows"]))
        return MergeMap(spans)
    finally:
        for p in packed:
            p.close()
