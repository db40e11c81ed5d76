"""Feature stores: one interface (formats.py) over the trainer's .npy layout (npy/) and the
packed zarr layout (zarr/); reading either back (reader.py); the output directory that keeps
store, manifests and journal consistent (dataset.py); shard merges (shards.py); export."""

from __future__ import annotations

import os


def open(out_dir: str | os.PathLike):  # noqa: A001 - `preprocess.store.open(OUT)` reads well
    """A FeatureReader over an output directory, whatever its format."""
    from .reader import FeatureReader  # lazy: importing the package must not pull in zarr

    return FeatureReader.open(out_dir)


def open_writer(out_dir: str | os.PathLike, fmt: str = "npy", latent_dtype: str = "float32"):
    """The feature writer of an output directory in format `fmt` ("npy" or "zarr")."""
    from .formats import open_writer as writer_of

    return writer_of(out_dir, fmt, latent_dtype)
