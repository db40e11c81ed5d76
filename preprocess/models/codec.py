"""MaskGCT semantic codec (RepCodec), encoder and quantizer only: features -> semantic codes.

Contract §6. The decoder of the official checkpoint is never used by preprocessing, so it is not
built; its keys are skipped at load. Parameter names equal the checkpoint's, old-style weight-norm
names (`weight_g`, `weight_v`) included.

Exact batching (contract §8): the encoder is a stack of 13 non-causal k7 convolutions (±39 frames),
so padding frames of a batch would leak into the last valid frames of shorter items. We zero the
positions >= T_i before every convolution: each item then sees the same zero padding at its end
as when run alone on x[i, :T_i].
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open

# Distance matrices are built in row chunks of at most this many elements (float32: 256 MiB).
MAX_DISTANCE_ELEMENTS = 1 << 26


@dataclass
class SemanticCodecConfig:
    codebook_size: int = 8192
    hidden_size: int = 1024
    codebook_dim: int = 8
    vocos_dim: int = 384
    vocos_intermediate_dim: int = 2048
    vocos_num_layers: int = 12

    @classmethod
    def from_dict(cls, d: dict | None) -> "SemanticCodecConfig":
        """From the `semantic_codec` section of config.yaml; unknown keys are ignored."""
        d = dict(d or {})
        # The official class also takes these; only their default values are implemented here.
        if d.get("num_quantizers", 1) != 1:
            raise ValueError(f"semantic_codec.num_quantizers={d['num_quantizers']} unsupported (only 1)")
        if d.get("downsample_scale", 1) not in (1, None):
            raise ValueError(f"semantic_codec.downsample_scale={d['downsample_scale']} unsupported (only 1)")
        names = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in d.items() if k in names})


class ConvNeXtBlock(nn.Module):
    """Vocos ConvNeXt block: depthwise k7 conv -> LN -> Linear -> GELU -> Linear -> *gamma, residual."""

    def __init__(self, dim: int, intermediate_dim: int, layer_scale: float):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        # x [B,C,T]; pad [B,1,T] True at positions >= T_i (None: no padding in the batch)
        h = x if pad is None else x.masked_fill(pad, 0.0)
        h = self.dwconv(h).transpose(1, 2)  # [B,T,C]
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class ConvNeXtBackbone(nn.Module):
    """Vocos backbone without adaptive norm: [B,C_in,T] -> [B,T,dim]."""

    def __init__(self, input_channels: int, dim: int, intermediate_dim: int, num_layers: int):
        super().__init__()
        self.embed = nn.Conv1d(input_channels, dim, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.convnext = nn.ModuleList(
            ConvNeXtBlock(dim, intermediate_dim, layer_scale=1.0 / num_layers) for _ in range(num_layers)
        )
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        x = self.embed(x if pad is None else x.masked_fill(pad, 0.0))  # [B,dim,T]
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        for block in self.convnext:
            x = block(x, pad)
        return self.final_layer_norm(x.transpose(1, 2))  # [B,T,dim]


class WeightNormConv1d(nn.Module):
    """Conv1d (no padding) whose weight is W = g * v / ||v||, the norm per output channel over (in, k).

    Keeps the checkpoint's old-style `weight_g` [out,1,1] / `weight_v` [out,in,k] parameters and
    computes W on the fly (tiny here), always in float32.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1):
        super().__init__()
        self.weight_g = nn.Parameter(torch.empty(out_channels, 1, 1))
        self.weight_v = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        # As the official model ends up after init: v as nn.Conv1d, g = ||v|| (so W = v), bias 0.
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
        with torch.no_grad():
            self.weight_g.copy_(self.weight_v.norm(dim=(1, 2), keepdim=True))
        nn.init.zeros_(self.bias)

    def weight(self) -> torch.Tensor:
        v, g = self.weight_v.float(), self.weight_g.float()
        return v * (g / v.norm(dim=(1, 2), keepdim=True))  # the same order of ops as torch._weight_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [B,in,T] -> float32 [B,out,T']
        return F.conv1d(x.float(), self.weight(), self.bias.float())


class FactorizedVectorQuantizer(nn.Module):
    """Factorized VQ: project to codebook_dim, nearest L2-normalised codebook row (cosine)."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.in_project = WeightNormConv1d(input_dim, codebook_dim)
        # Unused by quantize (it maps a code back to input_dim); kept for the checkpoint's keys.
        self.out_project = WeightNormConv1d(codebook_dim, input_dim)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        # z [N, input_dim] -> latent float32 [N, codebook_dim]; the 1x1 conv as a matmul on rows
        return F.linear(z.float(), self.in_project.weight().squeeze(-1), self.in_project.bias.float())

    def distances(self, latent: torch.Tensor) -> torch.Tensor:
        """Squared distances of L2-normalised latents [N,d] to L2-normalised codes: float32 [N,K].

        The reference's formula ||e||^2 - 2 e.c + ||c||^2, term for term, so that its rounding
        (which decides near-ties) is the reference's.
        """
        e = F.normalize(latent.float(), dim=1)
        c = F.normalize(self.codebook.weight.float(), dim=1)
        return e.pow(2).sum(1, keepdim=True) - 2 * e @ c.t() + c.pow(2).sum(1, keepdim=True).t()

    def nearest_codes(self, latent: torch.Tensor) -> torch.Tensor:
        # latent [N,d] -> codes long [N]; chunked so N x K never exceeds MAX_DISTANCE_ELEMENTS
        rows = max(1, MAX_DISTANCE_ELEMENTS // self.codebook.num_embeddings)
        codes = [self.distances(chunk).argmin(dim=1) for chunk in latent.split(rows)]
        return torch.cat(codes) if codes else latent.new_zeros(0, dtype=torch.long)


class SemanticCodec(nn.Module):
    """RepCodec encoder + quantizer. State-dict keys = the official checkpoint's minus decoder.*."""

    def __init__(self, config: SemanticCodecConfig | None = None):
        super().__init__()
        config = config or SemanticCodecConfig()
        self.config = config
        self.encoder = nn.ModuleList(
            [
                ConvNeXtBackbone(
                    config.hidden_size,
                    config.vocos_dim,
                    config.vocos_intermediate_dim,
                    config.vocos_num_layers,
                ),
                nn.Linear(config.vocos_dim, config.hidden_size),
            ]
        )
        # One residual stage (num_quantizers 1): the codes are stage 0's.
        self.quantizer = nn.ModuleDict(
            {
                "quantizers": nn.ModuleList(
                    [FactorizedVectorQuantizer(config.hidden_size, config.codebook_size, config.codebook_dim)]
                )
            }
        )
        # The official initialisation (deterministic under torch.manual_seed).
        for m in self.encoder.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def vq(self) -> FactorizedVectorQuantizer:
        return self.quantizer["quantizers"][0]

    @staticmethod
    def decoder_key_shapes(config: SemanticCodecConfig | None = None) -> dict[str, tuple[int, ...]]:
        """Shapes of the unused `decoder.*` keys of an official-format checkpoint of this config.

        The official decoder is a copy of the encoder's architecture (backbone + Linear).
        """
        with torch.device("meta"):
            encoder_keys = SemanticCodec(config).encoder.state_dict()
        return {f"decoder.{name}": tuple(t.shape) for name, t in encoder_keys.items()}

    @classmethod
    def from_file(cls, path: str | os.PathLike, config: SemanticCodecConfig | None = None) -> "SemanticCodec":
        """Load `model.safetensors` strictly (decoder.* skipped); errors name the key and file."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"semantic codec checkpoint {path} not found")
        with torch.device("meta"):
            model = cls(config)
        wanted = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        tensors = {}
        with safe_open(path, framework="pt") as f:
            stored = [k for k in f.keys() if not k.startswith("decoder.")]
            for name in stored:
                if name not in wanted:
                    raise ValueError(f"unexpected key {name!r} in {path}")
                shape = tuple(f.get_slice(name).get_shape())
                if shape != wanted[name]:
                    raise ValueError(
                        f"key {name!r} in {path} has shape {shape}, "
                        f"expected {wanted[name]} for {model.config}"
                    )
                tensors[name] = f.get_tensor(name).float()
        for name in wanted:
            if name not in tensors:
                raise KeyError(f"missing key {name!r} in {path}")
        model.load_state_dict(tensors, strict=True, assign=True)
        return model.eval().requires_grad_(False)

    def encode(self, x: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output [B,T,H] (model dtype) for x [B,T,H]; positions >= frames[i] are junk."""
        B, T, _ = x.shape
        pad = None
        if frames is not None:
            frames = torch.as_tensor(frames, device=x.device).view(B, 1, 1)
            if bool((frames < T).any()):
                pad = torch.arange(T, device=x.device).view(1, 1, T) >= frames  # [B,1,T]
        dtype = self.encoder[1].weight.dtype
        h = self.encoder[0](x.to(dtype).transpose(1, 2), pad)  # [B,T,vocos_dim]
        return self.encoder[1](h)

    @torch.no_grad()
    def quantize(self, x: torch.Tensor, frames) -> list[torch.Tensor]:
        """x [B,T,H], frames [B] (T_i) -> per item codes long [T_i], as if x[i,:T_i] ran alone."""
        B, T, _ = x.shape
        lengths = [int(t) for t in torch.as_tensor(frames).tolist()]
        if len(lengths) != B or any(not 0 <= t <= T for t in lengths):
            raise ValueError(f"frames {lengths} do not fit a batch of shape {tuple(x.shape)}")
        h = self.encode(x, torch.tensor(lengths))
        valid = torch.arange(T, device=x.device)[None, :] < torch.tensor(lengths, device=x.device)[:, None]
        # Only the valid rows are projected and quantized, in float32, row-major (item, frame).
        codes = self.vq.nearest_codes(self.vq.project(h[valid]))
        return list(codes.split(lengths))
