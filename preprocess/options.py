"""The options of one job, their defaults (configs/job.yaml) and which of them change outputs.

Imports no torch: the CLI builds options before it knows whether any model will run.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .contract import MAX_CODE_LEN, MAX_TEXT_LEN, W2V_BERT_LAYER

if TYPE_CHECKING:  # the CPU workers import this module; they need no model code
    from .models.files import ModelPaths

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "job.yaml"


@dataclass
class Limits:
    min_duration: float = 0.1     # seconds; below ~75 ms the Conformer has no valid frame
    max_duration: float = 36.0    # seconds; 36.3 s is the trainer's 1816-code limit
    max_text_len: int = MAX_TEXT_LEN
    max_code_len: int = MAX_CODE_LEN


@dataclass
class JobDefaults:
    """What configs/job.yaml holds: the defaults a user may copy, edit and pass (--job-config)."""

    layer: int = W2V_BERT_LAYER
    val_ratio: float = 0.01
    limits: Limits = field(default_factory=Limits)
    w2v_bert_hub_id: str = "facebook/w2v-bert-2.0"
    semantic_codec_hub_id: str = "amphion/MaskGCT"

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "JobDefaults":
        """The YAML at `path` (default: the packaged configs/job.yaml); a key it lacks keeps
        the packaged default, an unknown key is an error naming the file."""
        path = Path(path) if path is not None else DEFAULT_CONFIG
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise ValueError(f"job config {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ValueError(f"job config {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"job config {path}: expected a mapping of option: value")
        if path != DEFAULT_CONFIG:
            base = asdict(cls.load(None))
            base["limits"].update(data.pop("limits", None) or {})
            data = {**base, **data}
        limits = data.pop("limits", None) or {}
        known = {f.name for f in fields(cls)} - {"limits"}
        unknown = sorted(set(data) - known) + sorted(f"limits.{k}" for k in set(limits) - {
            f.name for f in fields(Limits)})
        if unknown:
            raise ValueError(f"job config {path}: unknown option(s) {', '.join(unknown)}")
        return cls(limits=Limits(**limits), **data)


@dataclass
class JobOptions:
    manifest: Path | tuple[Path, ...]  # a source: one path, or several (tar shards, tables, ...)
    output_dir: Path
    models: ModelPaths
    tokenizer: Path
    language: str | None = None
    val_ratio: float = 0.01
    batch_size: int = 0           # 0: automatic (the fastest measured budget under the memory ceiling)
    workers: int = 0              # 0: automatic
    device: str = "auto"
    precision: str = "fp32"
    max_samples: int | None = None
    limits: Limits = field(default_factory=Limits)
    resample: str = "reference"
    format: str = "npy"
    latent_dtype: str = "float32"
    layer: int = W2V_BERT_LAYER
    force: bool = False
    memory_fraction: float = 0.9
    progress: bool = True
    trust_checkpoint: bool = False  # gpt.pth through the full unpickler (it can run code in the file)
    only_ids: frozenset[str] | None = None  # this process's share of the ids (one GPU of several)
    # How the source is read (sources.read_source); not in the fingerprint, which covers how
    # records become features, not which corpus they come from.
    input_format: str = "auto"
    fields: tuple[tuple[str, str], ...] = ()  # (our field, the source's key), from --field
    # Text ids made beforehand (preprocess prepare-text); not in the fingerprint: the ids taken
    # from it equal those the job would make, so outputs are the same with or without it.
    prepared_text: Path | None = None
    shard: tuple[int, int] | None = None    # (K, N): share K of an array of N jobs (--shard K/N)


def output_options(opts: JobOptions) -> dict:
    """The options that change outputs; changing any of them needs --force. The text pipeline's
    version and the normaliser's are here too: a new normaliser must not resume silently into
    ids made by the old one."""
    from .text import TEXT_PIPELINE_VERSION, normaliser_versions

    return {"language": opts.language, "val_ratio": opts.val_ratio, "resample": opts.resample,
            "layer": opts.layer, "precision": opts.precision, "format": opts.format,
            "latent_dtype": opts.latent_dtype, **asdict(opts.limits),
            "text_pipeline": TEXT_PIPELINE_VERSION, "normaliser": normaliser_versions()}
