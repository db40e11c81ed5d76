"""Merging packed stores: the rows of per-device or per-job shards appended to one store."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .layout import zarr_dir
from .reader import PackedArrays
from .writer import ZarrWriter


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


def merge_zarr_stores(sources: list[Path], dest: Path | ZarrWriter) -> MergeMap:
    """Append the committed rows of each source store (output directories or their
    features.zarr) to `dest`, in order; returns old (source index, row) -> new row.
    `dest` is an output directory, or the ZarrWriter already open on it (e.g. OutputDir's
    store): a second ZarrWriter on the same directory would not see the rows this one adds.

    Data are decoded and re-encoded: zarr has no API to move encoded chunks between arrays,
    and ragged rows land at other element offsets anyway. Rows are copied in blocks ending on
    the destination's condition shard boundaries, so each shard file is written about once.
    Resumable: each block commits together with per-source progress in the `merged`
    attribute; rerunning the same merge skips what is done and returns the same mapping.
    Orphan rows (committed, but in no manifest) are copied too."""
    dest_dir = dest.path if isinstance(dest, ZarrWriter) else zarr_dir(dest)
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
        store = dest if isinstance(dest, ZarrWriter) else \
            ZarrWriter(dest_dir.parent, dtype, condition_len=condition_len, dim=dim)
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


def adopt_rows(target: ZarrWriter, shard: Path, lines: list[dict]) -> list[dict]:
    """Copy the committed rows of the shard's store into `target` (resumably, see
    merge_zarr_stores) and return `lines` (manifest lines of the shard) pointing to their rows
    in `target`. Durable when this returns."""
    rows = merge_zarr_stores([shard], target)
    return [{**line, "row": rows[(0, line["row"])]} for line in lines]
