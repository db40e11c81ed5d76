"""The packed store (`--format zarr`): layout.py (what is where), codec.py (shard files),
durable.py, writer.py, reader.py, merge.py, text_ids.py, and format.py (its side of the store
interface). Importing this package imports no zarr; the names below load their module on use."""

from __future__ import annotations

import importlib

_NAMES = {
    "STORE_DIR": "layout", "LATENT_DTYPES": "layout", "ArraySpec": "layout", "Block": "layout",
    "array_specs": "layout", "estimate_file_count": "layout",
    "ZarrWriter": "writer", "JOB_FLUSH_ROWS": "writer",
    "PackedArrays": "reader", "ZarrRows": "reader", "read_attributes": "reader",
    "MergeMap": "merge", "merge_zarr_stores": "merge",
    "exchange_paths": "text_ids", "stage_text_ids": "text_ids", "swap_with": "text_ids",
}


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
