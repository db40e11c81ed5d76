"""The whole model set of preprocessing, loaded once: encoder -> standardiser -> codec + heads.

    features [B,T,160] --w2v-BERT (17 layers)--> [B,T,1024] --standardise--> h
    h --semantic codec--> codes, T_i per item
    h --speaker Conformer + perceiver--> condition [B,32,1280]
    h --emotion Conformer + perceiver + emovec_layer + emo_layer--> emo_vec [B,1280]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .codec import SemanticCodec, SemanticCodecConfig
from .unifiedvoice import ConditioningConfig, UnifiedVoiceConditioning
from .files import ModelPaths, load_config
from .w2vbert import FeatureStandardizer, SemanticEncoder


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
