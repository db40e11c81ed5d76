"""Feature stores: one interface (formats.py) over the trainer's .npy layout (npy/) and the
packed zarr layout (zarr/); reading either back (reader.py); the output directory that keeps
store, manifests and journal consistent (dataset.py); shard merges (shards.py); export."""

from __future__ import annotations

import os


def open(out_dir: str | os.PathLike):  # noqa: A001 - `preprocess.store.open(OUT)` reads well
    """A FeatureReader over an output directory, whatever its format."""
    from .reader import FeatureReader  # lazy: importing the package must not pull in zarr

    return FeatureReader.open(out_dir)
