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
from .w2vbert import FeatureStandardizer, SemanticEncoder, hf_hub_cache_dir, resolve_w2v_bert_dir

CODEC_REPO_DIR = "models--amphion--MaskGCT"
CODEC_FILE = "semantic_codec/model.safetensors"


class MissingModelFile(FileNotFoundError):
    """A model file is missing; the message names the flag that provides it."""


def load_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MissingModelFile(f"config {path} not found (pass the IndexTTS2 config.yaml with --config)")
    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    if not isinstance(cfg, dict) or "gpt" not in cfg:
        raise ValueError(f"{path} is not an IndexTTS2 config.yaml (no 'gpt' section)")
    return cfg


def _codec_from_cache() -> Path:
    snapshots = hf_hub_cache_dir() / CODEC_REPO_DIR / "snapshots"
    found = sorted(snapshots.glob(f"*/{CODEC_FILE}")) if snapshots.is_dir() else []
    if not found:
        raise MissingModelFile(
            f"no semantic codec in the local Hugging Face cache ({snapshots}/*/{CODEC_FILE}); "
            "pass the MaskGCT semantic_codec/model.safetensors with --semantic-codec")
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
                semantic_codec=None) -> "ModelPaths":
        """Fill unset paths the way the reference does: gpt_checkpoint and w2v_stat relative to
        the config's directory; w2v-BERT and the codec from the local HF cache. Never downloads."""
        config = Path(config)
        cfg = load_config(config)
        here = config.parent

        def beside(value, key, flag):
            if value is not None:
                p = Path(value)
            elif cfg.get(key):
                p = here / cfg[key]
            else:
                raise MissingModelFile(f"{config} has no '{key}'; pass the file with {flag}")
            if not p.is_file():
                raise MissingModelFile(f"{p} not found; pass the file with {flag}")
            return p

        gpt = beside(gpt_checkpoint, "gpt_checkpoint", "--gpt-checkpoint")
        stats = beside(w2v_stats, "w2v_stat", "--w2v-stats")
        try:
            w2v = resolve_w2v_bert_dir(w2v_bert)
        except FileNotFoundError as e:
            raise MissingModelFile(str(e)) from None
        codec = Path(semantic_codec) if semantic_codec is not None else _codec_from_cache()
        if not codec.is_file():
            raise MissingModelFile(f"{codec} not found; pass the file with --semantic-codec")
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
    def load(cls, paths: ModelPaths, layer: int = 17) -> "ModelBundle":
        cfg = load_config(paths.config)
        encoder = SemanticEncoder.from_pretrained(paths.w2v_bert, layer=layer)
        standardizer = FeatureStandardizer.from_file(paths.w2v_stats)
        codec = SemanticCodec.from_file(paths.semantic_codec,
                                        SemanticCodecConfig.from_dict(cfg.get("semantic_codec")))
        width = standardizer.mean.numel()
        heads = UnifiedVoiceConditioning.from_checkpoint(
            paths.gpt_checkpoint, ConditioningConfig.from_gpt_section(cfg["gpt"], input_size=width))
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


def probe_batch_budget(bundle: ModelBundle, device: torch.device, max_frames: int,
                       fraction: float = 0.9) -> float:
    """Largest batch cost (batching.batch_cost) that fits `fraction` of device memory, measured
    by running synthetic worst-case batches (every item `max_frames` long) through the models."""
    from ..batching import batch_cost

    total = torch.cuda.get_device_properties(device).total_memory
    limit = fraction * total

    def peak(n: int) -> int:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        feats = torch.randn(n, max_frames, 160, device=device)
        frames = torch.full((n,), max_frames, device=device)
        bundle.run(feats, frames, frames)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)

    base = peak(1)
    per_item = max(peak(2) - base, 1)
    n = max(1, int((limit - base) / per_item) + 1)
    while n > 1:  # confirm the extrapolation on the real models; back off if it was optimistic
        try:
            if peak(n) <= limit:
                break
        except torch.OutOfMemoryError:
            pass
        n = int(n * 0.8)
    torch.cuda.empty_cache()
    return batch_cost(n, max_frames)
