"""The whole model set of preprocessing, loaded once: encoder -> standardiser -> codec + heads.

    features [B,T,160] --w2v-BERT (17 layers)--> [B,T,1024] --standardise--> h
    h --semantic codec--> codes, T_i per item
    h --speaker Conformer + perceiver--> condition [B,32,1280]
    h --emotion Conformer + perceiver + emovec_layer + emo_layer--> emo_vec [B,1280]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from .codec import SemanticCodec, SemanticCodecConfig
from .unifiedvoice import ConditioningConfig, UnifiedVoiceConditioning
from .w2vbert import FeatureStandardizer, SemanticEncoder, hf_hub_cache_dir, hub_repo_dir, resolve_w2v_bert_dir

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


@dataclass
class BundleOutput:
    codes: list[np.ndarray]    # per item, int64 [T_i]
    condition: np.ndarray      # [B, 32, model_dim] float32
    emo_vec: np.ndarray        # [B, model_dim] float32


class ModelBundle:
    def __init__(self, encoder: SemanticEncoder, standardizer: FeatureStandardizer,
                 codec: SemanticCodec, heads: UnifiedVoiceConditioning):
        self.encoder, self.standardizer, self.codec, self.heads = encoder, standardizer, codec, heads
        self.device, self.dtype = torch.device("cpu"), torch.float32

    @classmethod
    def load(cls, paths: ModelPaths, layer: int = 17, trust_checkpoint: bool = False) -> "ModelBundle":
        """`trust_checkpoint`: allow gpt.pth's full unpickler (it can run code in the file)."""
        cfg = load_config(paths.config)
        encoder = SemanticEncoder.from_pretrained(paths.w2v_bert, layer=layer)
        standardizer = FeatureStandardizer.from_file(paths.w2v_stats)
        codec = SemanticCodec.from_file(paths.semantic_codec,
                                        SemanticCodecConfig.from_dict(cfg.get("semantic_codec")))
        width = standardizer.mean.numel()
        heads = UnifiedVoiceConditioning.from_checkpoint(
            paths.gpt_checkpoint, ConditioningConfig.from_gpt_section(cfg["gpt"], input_size=width),
            allow_pickle=trust_checkpoint)
        return cls(encoder, standardizer, codec, heads)

    def modules(self):
        return (self.encoder, self.standardizer, self.codec, self.heads)

    def parameter_count(self) -> int:
        return sum(p.numel() for m in self.modules() for p in m.parameters())

    def to(self, device, dtype=torch.float32) -> "ModelBundle":
        self.device, self.dtype = torch.device(device), dtype
        for m in self.modules():
            m.to(self.device)
        # The standardiser and the quantizer (codebook, projections) stay float32: rounding
        # them would flip more codes than reduced precision in the networks does.
        for m in (self.encoder, self.codec.encoder, self.heads):
            m.to(dtype)
        return self

    @torch.inference_mode()
    def run(self, features: torch.Tensor, frames: torch.Tensor, lengths: torch.Tensor) -> BundleOutput:
        """features [B,T,160] (padding anywhere past L_i), frames T_i [B], lengths L_i [B]."""
        B, T, _ = features.shape
        features = features.to(self.device, self.dtype)
        frames, lengths = frames.to(self.device), lengths.to(self.device)
        mask = torch.arange(T, device=self.device)[None, :] < lengths[:, None]   # [B,T]
        h = self.encoder(features, mask)                                          # [B,T,H]
        h = self.standardizer(h.float()).to(self.dtype)
        codes = self.codec.quantize(h, frames)
        condition = self.heads.get_conditioning(h, lengths, frames)               # [B,32,D]
        emo_vec = self.heads.get_emovec(h, lengths, frames)                       # [B,D]
        sizes = [c.numel() for c in codes]
        flat = torch.cat(codes).cpu().numpy()  # one device sync instead of one per item
        return BundleOutput(list(np.split(flat, np.cumsum(sizes)[:-1])),
                            condition.float().cpu().numpy(), emo_vec.float().cpu().numpy())
