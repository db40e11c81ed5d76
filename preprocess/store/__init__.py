"""Feature stores: the trainer's .npy layout, the packed zarr layout, and reading either back."""

from __future__ import annotations

import os


def open(out_dir: str | os.PathLike):  # noqa: A001 - `preprocess.store.open(OUT)` reads well
    """A FeatureReader over an output directory: features.zarr if present, else the .npy files
    named by the manifests."""
    from .reader import FeatureReader  # lazy: importing the package must not pull in zarr

    return FeatureReader.open(out_dir)
