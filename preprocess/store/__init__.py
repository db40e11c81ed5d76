"""Feature stores: the trainer's .npy layout, the packed zarr layout, and reading either back."""

from __future__ import annotations

import os


def open(out_dir: str | os.PathLike):  # noqa: A001 - `preprocess.store.open(OUT)` reads well
    """A FeatureReader over an output directory: features.zarr if present, else the .npy files
    named by the manifests."""
    from .reader import FeatureReader  # lazy: importing the package must not pull in zarr

    return FeatureReader.open(out_dir)


def open_writer(out_dir: str | os.PathLike, fmt: str = "npy", latent_dtype: str = "float32"):
    """The feature writer of an output directory in format `fmt` ("npy" or "zarr")."""
    from pathlib import Path

    if fmt == "zarr":
        from .zarr import ZarrStore
        # One condition shard per flush: each shard file is written once, not once per batch.
        # A crash loses at most the rows buffered since the last flush; they are recomputed.
        return ZarrStore(Path(out_dir), latent_dtype=latent_dtype, flush_rows=1024)
    from .npy import NpyStore
    return NpyStore(Path(out_dir))
