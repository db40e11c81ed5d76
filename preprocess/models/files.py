"""Where the model files are and what can be wrong with them; no torch, no transformers.

The CLI resolves and checks every path, and the job plans and starts its CPU workers, before
anything imports torch (1.3 s here) or transformers (3 s): the workers' own start-up then runs
beside those imports instead of after them (docs/PERFORMANCE.md, per-run overhead).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

HUB_ID = "facebook/w2v-bert-2.0"


def hf_hub_cache_dir() -> Path:
    """The local Hugging Face hub cache, resolved the way huggingface_hub resolves it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def hub_repo_dir(hub_id: str) -> str:
    """The cache folder name of a hub model id: "facebook/w2v-bert-2.0" -> "models--facebook--w2v-bert-2.0"."""
    return "models--" + hub_id.replace("/", "--")


def _is_model_dir(path: Path) -> bool:
    has_weights = (path / "model.safetensors").is_file() or (
        path / "model.safetensors.index.json"
    ).is_file()
    return (path / "config.json").is_file() and has_weights


def resolve_w2v_bert_dir(path_or_none: str | os.PathLike | None, hub_id: str = HUB_ID) -> Path:
    """The local w2v-BERT 2.0 directory: the given one, or a snapshot in the local HF cache.

    Never downloads. A missing directory or file is a FileNotFoundError that says what to provide.
    """
    if path_or_none is not None:
        path = Path(path_or_none).expanduser()
        if not _is_model_dir(path):
            raise FileNotFoundError(
                f"w2v-BERT directory {path} must contain config.json and model.safetensors "
                f"(a local copy of {hub_id})"
            )
        return path

    repo = hf_hub_cache_dir() / hub_repo_dir(hub_id)
    candidates = []
    ref = repo / "refs" / "main"
    if ref.is_file():
        candidates.append(repo / "snapshots" / ref.read_text().strip())
    # Then any other snapshot, newest first, in case refs/main is absent or stale.
    others = sorted((repo / "snapshots").glob("*/"), key=lambda p: p.stat().st_mtime, reverse=True)
    candidates += [p for p in others if p not in candidates]
    for snapshot in candidates:
        if _is_model_dir(snapshot):
            return snapshot
    raise FileNotFoundError(
        f"{hub_id} not found in the local Hugging Face cache ({repo}/snapshots/*/ "
        "with config.json and model.safetensors); nothing is downloaded at run time"
    )


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the key."""


class UntrustedCheckpoint(CheckpointError):
    """The checkpoint pickles objects beyond tensors; loading it would need the full unpickler."""


CODEC_FILE = "semantic_codec/model.safetensors"


class MissingModelFile(FileNotFoundError):
    """A model file is missing. `role` names which one (a ModelPaths field), so a caller can
    say how to provide it; the message says what was looked for and where."""

    def __init__(self, role: str, message: str):
        super().__init__(message)
        self.role = role


def load_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MissingModelFile("config", f"IndexTTS2 config.yaml {path} not found")
    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    if not isinstance(cfg, dict) or "gpt" not in cfg:
        raise ValueError(f"{path} is not an IndexTTS2 config.yaml (no 'gpt' section)")
    return cfg


def _codec_from_cache(hub_id: str) -> Path:
    snapshots = hf_hub_cache_dir() / hub_repo_dir(hub_id) / "snapshots"
    found = sorted(snapshots.glob(f"*/{CODEC_FILE}")) if snapshots.is_dir() else []
    if not found:
        raise MissingModelFile(
            "semantic_codec", f"no {hub_id} semantic codec in the local Hugging Face cache "
                              f"({snapshots}/*/{CODEC_FILE}); nothing is downloaded at run time")
    return found[-1]


@dataclass
class ModelPaths:
    config: Path
    gpt_checkpoint: Path
    w2v_stats: Path
    w2v_bert: Path
    semantic_codec: Path

    @classmethod
    def resolve(cls, config, gpt_checkpoint=None, w2v_stats=None, w2v_bert=None,
                semantic_codec=None, w2v_bert_hub_id: str = "facebook/w2v-bert-2.0",
                semantic_codec_hub_id: str = "amphion/MaskGCT") -> "ModelPaths":
        """Fill unset paths the way the reference does: gpt_checkpoint and w2v_stat relative to
        the config's directory; w2v-BERT and the codec from the local HF cache. Never downloads."""
        config = Path(config)
        cfg = load_config(config)
        here = config.parent

        def beside(value, key, role):
            if value is not None:
                p = Path(value)
            elif cfg.get(key):
                p = here / cfg[key]
            else:
                raise MissingModelFile(role, f"{config} has no '{key}'")
            if not p.is_file():
                raise MissingModelFile(role, f"{role} file {p} not found")
            return p

        gpt = beside(gpt_checkpoint, "gpt_checkpoint", "gpt_checkpoint")
        stats = beside(w2v_stats, "w2v_stat", "w2v_stats")
        try:
            w2v = resolve_w2v_bert_dir(w2v_bert, w2v_bert_hub_id)
        except FileNotFoundError as e:
            raise MissingModelFile("w2v_bert", str(e)) from None
        codec = Path(semantic_codec) if semantic_codec is not None else _codec_from_cache(semantic_codec_hub_id)
        if not codec.is_file():
            raise MissingModelFile("semantic_codec", f"semantic codec {codec} not found")
        return cls(config, gpt, stats, w2v, codec)

    def files(self) -> dict[str, Path]:
        """Every file whose bytes decide the outputs (for hashing)."""
        out = {"config": self.config, "gpt_checkpoint": self.gpt_checkpoint,
               "w2v_stats": self.w2v_stats, "semantic_codec": self.semantic_codec,
               "w2v_bert_config": self.w2v_bert / "config.json"}
        for p in sorted(self.w2v_bert.glob("*.safetensors")):
            out[f"w2v_bert/{p.name}"] = p
        return out


