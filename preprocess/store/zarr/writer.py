"""Writing the packed store: ZarrWriter appends utterances as rows of OUT/features.zarr.

zarr creates the arrays and writes their metadata; shard files are encoded by codec.py.

Crash safety. Every file is written to a temporary name, fsynced and renamed (DurableLocalStore),
so a shard holding committed rows is never torn. After all arrays of a batch are durable, the
group attribute `commit` (row count and element counts) is rewritten the same way: it is the
commit point. On open, arrays longer than the commit are cut back and stray files removed;
rows at or beyond the commit do not exist (`record_present` is False for them).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import zarr  # the zarr package
from zarr.codecs import ZstdCodec

from ..features import UtteranceFeatures
from ..fsutil import fsync_dir
from . import layout
from .codec import encode_shard, sharded_layout
from .durable import PARTIAL, DurableLocalStore
from .layout import (LATENT_DTYPES, LAYOUT, LAYOUT_VERSION, OFFSETS, RAGGED, STORE_DIR, ArraySpec,
                     Block, check_layout, zero_commit)

# The job's buffering: one condition shard per flush, so each shard file is written once, not
# once per batch. A crash loses at most the rows buffered since the last flush (recomputed).
JOB_FLUSH_ROWS = 1024


class ZarrWriter:
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
        self.specs = layout.array_specs(latent_dtype, condition_len, dim)
        self._group = None
        self._store: DurableLocalStore | None = None
        self._arrays: dict = {}
        self._commit = zero_commit()
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
                "commit": zero_commit(), "merged": []})
            fsync_dir(self.out_dir)  # the new features.zarr entry itself
            attrs = self._group.attrs.asdict()
        else:
            self._group = zarr.open_group(self._store, mode="r+")
            attrs = self._group.attrs.asdict()
            check_layout(attrs, self.path)
            found = (attrs.get("latent_dtype"), attrs.get("condition_len"), attrs.get("dim"))
            if found != (self.latent_dtype, *cond):
                raise ValueError(f"{self.path} holds {found[0]} latents [{found[1]}, {found[2]}]; "
                                 f"this run writes {self.latent_dtype} [{cond[0]}, {cond[1]}]")
        self._commit = dict(attrs.get("commit") or zero_commit())
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
        layout = sharded_layout(arr.metadata.to_dict(), spec.row_shape, np.dtype(spec.dtype).itemsize)
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
                if f.name.endswith(PARTIAL) or past_end:
                    f.unlink()
        for f in self.path.glob(f"*{PARTIAL}"):
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

    def reset(self) -> None:
        """Forget what was opened: the next use reopens the directory (another store may now
        lie at its path)."""
        if self._pending:
            raise RuntimeError(f"{self.path}: buffered rows must be flushed first")
        self._group, self._store, self._arrays = None, None, {}
        self._commit, self._merged, self._ids = zero_commit(), [], None

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
        """Put `values` at rows [start, ...) of one shard and rewrite its file (codec.py says
        why the shard is encoded here and not by zarr)."""
        key = arr.metadata.encode_chunk_key((shard,) + (0,) * len(spec.row_shape))
        path = self.path / spec.name / key
        existing = path.read_bytes() if path.exists() else None
        self._store.write_parts(f"{spec.name}/{key}",
                                encode_shard(spec, shard, existing, start, values, path))
