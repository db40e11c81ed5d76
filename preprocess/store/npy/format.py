"""The npy layout's side of the store interface (formats.py)."""

from __future__ import annotations

from pathlib import Path

from ...contract import CODES_PER_SECOND, CONDITION_LEN, MANIFESTS, MODEL_DIM
from .layout import FEATURE_DIRS


def _blocks(n: int, block: int = 4096) -> int:
    return -(-n // block) * block


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

    def bytes_needed(self, utterances: int, audio_seconds: float, latent_dtype: str = "float32") -> int:
        """About what `utterances` more take here: four float32/int32 files each (codes at 50
        per second, ~15 text ids per second), each rounded up to whole 4 KiB blocks, and a
        manifest line."""
        files = (CONDITION_LEN * MODEL_DIM * 4, MODEL_DIM * 4)
        per_utt = sum(_blocks(n + 128) for n in files) + 2 * 4096 + 600
        per_second = 4 * (CODES_PER_SECOND + 15)
        return int(utterances * per_utt + audio_seconds * per_second)

    def rows(self, out: Path):
        from .reader import NpyRows

        return NpyRows(out)

    def adopt(self, target, shard: Path, lines: list[dict]) -> list[dict]:
        from .shards import adopt_files

        return adopt_files(target, shard, lines)

    def text_ids(self, out: Path, writer, staging: Path):
        from .text_ids import NpyTextIds

        return NpyTextIds(out, writer, staging)
