"""The npy layout's side of the store interface (formats.py)."""

from __future__ import annotations

from pathlib import Path

from ...contract import MANIFESTS
from .layout import FEATURE_DIRS


class NpyFormat:
    name = "npy"
    owned = FEATURE_DIRS

    def holds(self, out: Path) -> bool:
        """Feature folders or manifests: what a run in this layout leaves (the default format,
        so this is asked only after the packed one said no)."""
        return any((out / d).is_dir() for d in FEATURE_DIRS) or \
            any((out / m).exists() for m in MANIFESTS.values())

    def writer(self, out: Path, latent_dtype: str = "float32"):
        """`latent_dtype` is ignored: the layout is the trainer's, float32."""
        from .writer import NpyWriter

        return NpyWriter(out)

    def reopen_writer(self, out: Path):
        from .writer import NpyWriter

        return NpyWriter(out)

    def rows(self, out: Path):
        from .reader import NpyRows

        return NpyRows(out)

    def adopt(self, target, shard: Path, lines: list[dict]) -> list[dict]:
        from .shards import adopt_files

        return adopt_files(target, shard, lines)

    def text_ids(self, out: Path, writer, staging: Path):
        from .text_ids import NpyTextIds

        return NpyTextIds(out, writer, staging)
