"""The packed format's side of the store interface (formats.py). Imports no zarr until used."""

from __future__ import annotations

from pathlib import Path

from ...contract import CODES_PER_SECOND, CONDITION_LEN, MODEL_DIM
from .layout import STORE_DIR, holds_store


class ZarrFormat:
    name = "zarr"
    owned = (STORE_DIR,)

    def holds(self, out: Path) -> bool:
        return holds_store(out)

    def writer(self, out: Path, latent_dtype: str = "float32"):
        from .writer import JOB_FLUSH_ROWS, ZarrWriter

        return ZarrWriter(out, latent_dtype, flush_rows=JOB_FLUSH_ROWS)

    def reopen_writer(self, out: Path):
        """A writer for the store in `out` with its own dtype and shape (float32 [32, 1280]
        where there is none yet); it writes each batch durably, without buffering."""
        from .reader import read_attributes
        from .writer import ZarrWriter

        attrs = read_attributes(out) or {}
        return ZarrWriter(out, attrs.get("latent_dtype", "float32"),
                          condition_len=attrs.get("condition_len", 32), dim=attrs.get("dim", 1280))

    def bytes_needed(self, utterances: int, audio_seconds: float, latent_dtype: str = "float32") -> int:
        """At most what `utterances` more take here: the latents uncompressed in
        `latent_dtype`, int32 codes (50 per second) and text ids (~15 per second), a manifest
        line each."""
        latent = 2 if latent_dtype == "float16" else 4
        per_utt = (CONDITION_LEN + 1) * MODEL_DIM * latent + 600
        return int(utterances * per_utt + audio_seconds * 4 * (CODES_PER_SECOND + 15))

    def rows(self, out: Path):
        from .reader import ZarrRows

        return ZarrRows(out)

    def adopt(self, target, shard: Path, lines: list[dict]) -> list[dict]:
        from .merge import adopt_rows

        return adopt_rows(target, shard, lines)

    def text_ids(self, out: Path, writer, staging: Path):
        from .text_ids import ZarrTextIds

        return ZarrTextIds(out, writer, staging)
