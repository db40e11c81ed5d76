"""Arrow and Parquet files as tables of rows, opened once per process.

Arrow files (`datasets.save_to_disk` writes the IPC stream format; the IPC file format is read
too) are memory-mapped: a row's bytes are read from the map, nothing else is. A Parquet file is
read by row group (its pages are compressed), one column at a time; the last row groups read
are kept, so rows read in order cost one read of each group.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

OPEN_TABLES = 16        # files kept open per process
CACHED_ROW_GROUPS = 2   # Parquet row groups (one audio column each) kept per file
ARROW_CHUNK = 8192      # rows listed at a time from an Arrow file


class TableError(Exception):
    """A file that cannot be read as a table, or a row or column it does not have."""


class Table:
    """One Arrow or Parquet file. `audio_kind(column)`: "struct" (Hugging Face `Audio`:
    `{bytes, path}`), "binary" (the bytes) or "string" (a path)."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._groups: OrderedDict[tuple[int, str], pa.Array] = OrderedDict()
        try:
            if path.lower().endswith(".parquet"):
                self._parquet = pq.ParquetFile(path)
                self._arrow = None
                self.schema = self._parquet.schema_arrow
                meta = self._parquet.metadata
                self._starts = [0]
                for i in range(meta.num_row_groups):
                    self._starts.append(self._starts[-1] + meta.row_group(i).num_rows)
                self.num_rows = self._starts[-1]
            else:
                self._parquet = None
                self._arrow = _read_arrow(path)
                self.schema = self._arrow.schema
                self.num_rows = self._arrow.num_rows
        except (OSError, pa.ArrowException) as e:
            raise TableError(f"cannot read as a table ({e})") from e

    def audio_kind(self, column: str) -> str:
        if column not in self.schema.names:
            raise TableError(f"no column {column!r} (columns: {', '.join(self.schema.names)})")
        t = self.schema.field(column).type
        if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
            return "struct"
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return "binary"
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return "string"
        raise TableError(f"column {column!r} of type {t} holds no audio bytes or path")

    def chunks(self, columns: list[str], audio: str) -> Iterator[tuple[int, dict, list, list]]:
        """(first row, {column: values}, audio paths, has audio bytes) per row group (Parquet)
        or batch (Arrow), in row order, without reading the audio bytes where it can be helped:
        `columns` are read whole; of `audio` only its `path` and whether `bytes` is null."""
        kind = self.audio_kind(audio)
        present = [c for c in columns if c in self.schema.names and c != audio]
        if self._arrow is not None:
            for start in range(0, self.num_rows, ARROW_CHUNK):
                part = self._arrow.slice(start, ARROW_CHUNK)
                values = {c: part.column(c).to_pylist() for c in present}
                paths, has = _audio_columns(part.column(audio), kind)
                yield start, values, paths, has
            return
        for g in range(len(self._starts) - 1):
            want = present + ([f"{audio}.path"] if kind == "struct" and _has_path(self.schema, audio)
                              else [audio] if kind == "string" else [])
            part = self._parquet.read_row_group(g, columns=want) if want else None
            n = self._starts[g + 1] - self._starts[g]
            values = {c: part.column(c).to_pylist() for c in present}
            if kind == "string":
                yield self._starts[g], values, part.column(audio).to_pylist(), [False] * n
                continue
            paths = (part.column(audio).combine_chunks().field("path").to_pylist()
                     if kind == "struct" and _has_path(self.schema, audio) else [None] * n)
            nulls = self._null_count(g, f"{audio}.bytes" if kind == "struct" else audio)
            if nulls == 0:
                has = [True] * n
            else:  # mixed or unknown: the bytes themselves say
                col = self._audio_array(g, audio)
                has = col.is_valid().to_pylist() if kind == "binary" else \
                    col.field("bytes").is_valid().to_pylist()
                if kind == "struct":
                    has = [h and v for h, v in zip(has, col.is_valid().to_pylist())]
            yield self._starts[g], values, paths, has

    def _null_count(self, group: int, column_path: str) -> int | None:
        rg = self._parquet.metadata.row_group(group)
        for j in range(rg.num_columns):
            c = rg.column(j)
            if c.path_in_schema == column_path:
                st = c.statistics
                return st.null_count if st is not None and st.has_null_count else None
        return None

    def _audio_array(self, group: int, column: str) -> pa.Array:
        key = (group, column)
        if key in self._groups:
            self._groups.move_to_end(key)
            return self._groups[key]
        arr = self._parquet.read_row_group(group, columns=[column]).column(column).combine_chunks()
        self._groups[key] = arr
        while len(self._groups) > CACHED_ROW_GROUPS:
            self._groups.popitem(last=False)
        return arr

    def cell_bytes(self, row: int, column: str) -> bytes:
        """The audio bytes of `row` (0-based) in `column` (a struct's `bytes` field, or binary)."""
        if not 0 <= row < self.num_rows:
            raise TableError(f"row {row} not in the file ({self.num_rows} rows)")
        kind = self.audio_kind(column)
        if kind == "string":
            raise TableError(f"column {column!r} holds paths, not bytes")
        with self._lock:
            if self._arrow is not None:
                value = self._arrow.column(column)[row]
            else:
                g = _group_of(self._starts, row)
                value = self._audio_array(g, column)[row - self._starts[g]]
        if kind == "struct":
            value = value["bytes"] if value.is_valid else None
        if value is None or not value.is_valid:
            raise TableError(f"row {row} has no audio bytes in {column!r}")
        return value.as_buffer().to_pybytes()


def _has_path(schema: pa.Schema, column: str) -> bool:
    return schema.field(column).type.get_field_index("path") >= 0


def _audio_columns(col: pa.ChunkedArray, kind: str) -> tuple[list, list]:
    if kind == "string":
        return col.to_pylist(), [False] * len(col)
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if kind == "binary":
        return [None] * len(arr), arr.is_valid().to_pylist()
    paths = arr.field("path").to_pylist() if arr.type.get_field_index("path") >= 0 else [None] * len(arr)
    has = [v and b for v, b in zip(arr.is_valid().to_pylist(), arr.field("bytes").is_valid().to_pylist())]
    return paths, has


def _group_of(starts: list[int], row: int) -> int:
    lo, hi = 0, len(starts) - 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if starts[mid] <= row:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _read_arrow(path: str) -> pa.Table:
    """A memory-mapped Arrow file, IPC stream format first, then the file format."""
    source = pa.memory_map(path, "r")
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source).read_all()


_tables: OrderedDict[str, Table] = OrderedDict()
_tables_lock = threading.Lock()


def open_table(path: str) -> Table:
    """The `Table` of `path`, kept open in this process (the least recently used closes first)."""
    with _tables_lock:
        table = _tables.get(path)
        if table is not None:
            _tables.move_to_end(path)
            return table
    table = Table(path)
    with _tables_lock:
        _tables[path] = table
        while len(_tables) > OPEN_TABLES:
            _tables.popitem(last=False)
    return table


def row_bytes(path: str, row: int, column: str) -> bytes:
    """The audio bytes of one row: what an `AudioRef` of kind "row" points to."""
    return open_table(path).cell_bytes(row, column)
