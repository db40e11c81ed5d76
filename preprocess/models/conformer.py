"""The WeNet-derived Conformer of IndexTTS2's UnifiedVoice (speaker and emotion encoders).

Contract §7.2 gives the math and §8 the batching rule. Module and parameter names follow the
official checkpoint keys (`embed.conv.0`, `encoders.{i}.self_attn.linear_pos`, ...), so a
state dict slice of `gpt.pth` loads as is.

Lengths. An item is `frames` T stacked feature frames, of which the first `lengths` L are valid
(for odd fbank counts the last frame is half padding: L = T - 1). The conv2d2 front end turns
T frames into T' = floor((T-1)/2) and the valid mask m into m'[i] = m[2i+2].

Exact batching (§8). The reference runs one item per call, so every convolution zero-pads at
the item's own extent. Only the conv module can leak across padding: masked positions are zeroed
*before* the biased pointwise_conv1, so after the GLU they hold GLU(bias) != 0, and the +-7 frame
depthwise conv blends that into the last valid frames. Within the item's extent [L', T') the
reference sees exactly that GLU(bias) too, so it is kept; from T' on the reference sees zero
padding, so it is zeroed. Everything else (conv2d2, masked attention keys, absolute position
term) is batch-independent by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ConformerConfig:
    input_size: int = 1024  # semantic feature dim
    output_size: int = 512
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 6
    cnn_module_kernel: int = 15
    layer_norm_eps: float = 1e-5
    max_positions: int = 5000  # rows of the stored sinusoid `embed.pos_enc.pe`

    @classmethod
    def from_module_section(cls, section: dict, input_size: int = 1024) -> ConformerConfig:
        """From a `condition_module` / `emo_condition_module` dict of config.yaml."""
        input_layer = section.get("input_layer", "conv2d2")
        if input_layer != "conv2d2":
            raise ValueError(f"only input_layer 'conv2d2' is implemented, got {input_layer!r}")
        for key in ("output_size", "linear_units", "attention_heads", "num_blocks"):
            if key not in section:
                raise ValueError(f"conformer config section lacks {key!r}: {section}")
        return cls(
            input_size=int(input_size),
            output_size=int(section["output_size"]),
            attention_heads=int(section["attention_heads"]),
            linear_units=int(section["linear_units"]),
            num_blocks=int(section["num_blocks"]),
            cnn_module_kernel=int(section.get("cnn_module_kernel", 15)),
        )


def subsampled_length(n):
    """T' = floor((T-1)/2) frames after conv2d2 (3x3, stride 2, no padding); 0 below 3."""
    if isinstance(n, torch.Tensor):
        return ((n - 1) // 2).clamp(min=0)
    return max((n - 1) // 2, 0)


def sinusoid_table(max_len: int, dim: int) -> torch.Tensor:
    """[1, max_len, dim]: even channels sin(p * 10000^(-2i/dim)), odd channels cos (float32).

    Always computed on the CPU: under the meta-device context the checkpoint loader builds in,
    these ops would cost seconds of one-time imports.
    """
    cpu = torch.device("cpu")
    position = torch.arange(max_len, dtype=torch.float32, device=cpu)[:, None]
    inv_freq = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=cpu) * (-math.log(10000.0) / dim)
    )
    table = torch.zeros(max_len, dim, device=cpu)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table[None]


class SinusoidalPositions(nn.Module):
    def __init__(self, dim: int, max_len: int):
        super().__init__()
        # Persistent: the official checkpoint stores it (`embed.pos_enc.pe`).
        self.register_buffer("pe", sinusoid_table(max_len, dim).to(torch.empty(0).device))


class Conv2dSubsampling2(nn.Module):
    """[B, T, C] -> [B, T', D]: one 3x3 stride-2 conv over (time, feature), then a Linear."""

    # Elements of the [B, D, rows, (C-1)//2] conv activation materialised at once. The full
    # activation is ~1 MB per output frame for the official sizes, so long batches are done in
    # slices of output frames; each frame is computed from the same inputs either way.
    chunk_elements: int = 1 << 27

    def __init__(self, input_size: int, dim: int, max_positions: int):
        super().__init__()
        self.dim = dim
        self.conv = nn.Sequential(nn.Conv2d(1, dim, kernel_size=3, stride=2), nn.ReLU())
        self.out = nn.Sequential(nn.Linear(dim * ((input_size - 1) // 2), dim))
        self.pos_enc = SinusoidalPositions(dim, max_positions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, channels = x.shape
        n_out = subsampled_length(frames)
        per_row = batch * self.dim * ((channels - 1) // 2)
        rows = max(1, self.chunk_elements // per_row)
        pieces = []
        for start in range(0, n_out, rows):
            stop = min(n_out, start + rows)
            # output frame i reads input frames 2i, 2i+1, 2i+2
            h = self.conv(x[:, None, 2 * start : 2 * stop + 1])  # [B, D, stop-start, F']
            # flatten channel-major (index c * F' + f), as the checkpoint's Linear expects
            pieces.append(self.out(h.transpose(1, 2).flatten(2)))  # [B, stop-start, D]
        return torch.cat(pieces, dim=1) * math.sqrt(self.dim)


class RelPositionAttention(nn.Module):
    """WeNet rel-pos multi-head self-attention *without* the relative shift (contract §7.2).

    score[i, j] = ((q_i + u) . k_j + (q_i + v) . p_j) / sqrt(d_k), with p_j = linear_pos(pe[j]):
    the position term depends on the absolute key index j.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        assert dim % heads == 0, (dim, heads)
        self.heads, self.head_dim = heads, dim // heads
        # parameters first so state-dict order matches the checkpoint
        self.pos_bias_u = nn.Parameter(torch.empty(heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.empty(heads, self.head_dim))
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        # x [B, N, D], pos [1, N, D], key_mask [B, N] (True = valid)
        batch, n, dim = x.shape
        h, dk = self.heads, self.head_dim
        q = self.linear_q(x).view(batch, n, h, dk)  # time-major so the [h, dk] biases broadcast
        k = self.linear_k(x).view(batch, n, h, dk).transpose(1, 2)  # [B, h, N, dk]
        v = self.linear_v(x).view(batch, n, h, dk).transpose(1, 2)
        p = self.linear_pos(pos).view(1, n, h, dk).transpose(1, 2)  # [1, h, N, dk]
        content = (q + self.pos_bias_u).transpose(1, 2) @ k.transpose(-2, -1)  # [B, h, N, N]
        position = (q + self.pos_bias_v).transpose(1, 2) @ p.transpose(-2, -1)
        scores = (content + position) / math.sqrt(dk)
        masked = ~key_mask[:, None, None, :]
        probs = scores.masked_fill(masked, float("-inf")).softmax(dim=-1).masked_fill(masked, 0.0)
        out = (probs @ v).transpose(1, 2).reshape(batch, n, dim)
        return self.linear_out(out)


class ConvModule(nn.Module):
    def __init__(self, dim: int, kernel_size: int, eps: float):
        super().__init__()
        assert kernel_size % 2 == 1, kernel_size
        self.pointwise_conv1 = nn.Conv1d(dim, 2 * dim, kernel_size=1)
        self.depthwise_conv = nn.Conv1d(
            dim, dim, kernel_size, padding=(kernel_size - 1) // 2, groups=dim
        )
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.pointwise_conv2 = nn.Conv1d(dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
        # x [B, N, D]; valid [B, N] = m'; extent [B, N] = position < the item's own T'
        x = x.masked_fill(~valid[..., None], 0.0).transpose(1, 2)  # [B, D, N]
        x = F.glu(self.pointwise_conv1(x), dim=1)
        # Masked positions now hold GLU(bias). The one-item reference has them only inside the
        # item's extent; past it, its depthwise conv sees zero padding (contract §8).
        x = x.masked_fill(~extent[:, None, :], 0.0)
        x = self.depthwise_conv(x)
        x = F.silu(self.norm(x.transpose(1, 2))).transpose(1, 2)
        x = self.pointwise_conv2(x).transpose(1, 2)  # [B, N, D]
        return x.masked_fill(~valid[..., None], 0.0)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerBlock(nn.Module):
    """Pre-norm block without macaron FFN: attention, conv module, FFN, then a final norm."""

    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        d, eps = cfg.output_size, cfg.layer_norm_eps
        self.self_attn = RelPositionAttention(d, cfg.attention_heads)
        self.feed_forward = FeedForward(d, cfg.linear_units)
        self.conv_module = ConvModule(d, cfg.cnn_module_kernel, eps)
        self.norm_ff = nn.LayerNorm(d, eps=eps)
        self.norm_mha = nn.LayerNorm(d, eps=eps)
        self.norm_conv = nn.LayerNorm(d, eps=eps)
        self.norm_final = nn.LayerNorm(d, eps=eps)

    def forward(self, x, pos, valid, extent):
        x = x + self.self_attn(self.norm_mha(x), pos, valid)
        x = x + self.conv_module(self.norm_conv(x), valid, extent)
        x = x + self.feed_forward(self.norm_ff(x))
        return self.norm_final(x)


class ConformerEncoder(nn.Module):
    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Conv2dSubsampling2(cfg.input_size, cfg.output_size, cfg.max_positions)
        self.after_norm = nn.LayerNorm(cfg.output_size, eps=cfg.layer_norm_eps)
        self.encoders = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.num_blocks))

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, frames: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, C], lengths L [B], frames T [B] -> (y [B, T', D], valid mask m' [B, T'] bool).

        Each item's result equals running it alone on x[i, :T_i] with length L_i (up to float
        reduction order). Passing the batch's full width as every item's frames gives the
        reference's own batched behaviour instead, leak included. Lengths above T_i count as
        T_i, as in the reference.
        """
        lengths, frames = check_lengths(x, lengths, frames, self.cfg.max_positions)
        x = x[:, : int(frames.max())]
        t = torch.arange(x.shape[1], device=x.device)
        # Nothing past an item's extent reaches its outputs; zero it anyway so that non-finite
        # padding cannot become NaN through a zero attention weight times a NaN value.
        x = x.masked_fill((t[None, :] >= frames[:, None])[..., None], 0.0)

        x = self.embed(x)  # [B, T', D]
        n = x.shape[1]
        valid = (t[None, :] < lengths[:, None])[:, 2::2]  # m'[i] = m[2i+2]
        extent = torch.arange(n, device=x.device)[None, :] < subsampled_length(frames)[:, None]
        pos = self.embed.pos_enc.pe[:, :n].to(x.dtype)
        for block in self.encoders:
            x = block(x, pos, valid, extent)
        return self.after_norm(x), valid


def check_lengths(x: torch.Tensor, lengths: torch.Tensor, frames: torch.Tensor, max_positions: int):
    """Validate per-item lengths; returns (min(L, T), T) as int64 tensors on x's device."""
    if x.dim() != 3:
        raise ValueError(f"expected features [B, T, C], got shape {tuple(x.shape)}")
    lengths = torch.as_tensor(lengths, device=x.device).long().reshape(-1)
    frames = torch.as_tensor(frames, device=x.device).long().reshape(-1)
    if lengths.numel() != x.shape[0] or frames.numel() != x.shape[0]:
        raise ValueError(
            f"batch of {x.shape[0]} items but {lengths.numel()} lengths and {frames.numel()} frames"
        )
    lengths = torch.minimum(lengths, frames)
    frames_cpu, lengths_cpu = frames.tolist(), lengths.tolist()
    for i, (t_i, l_i) in enumerate(zip(frames_cpu, lengths_cpu)):
        if not 1 <= t_i <= x.shape[1]:
            raise ValueError(f"item {i}: frames {t_i} outside [1, {x.shape[1]}] (tensor extent)")
        if subsampled_length(l_i) < 1:
            raise ValueError(
                f"item {i}: {l_i} valid frames leave no valid Conformer frame; at least 3 are "
                "needed (>= 1200 samples at 16 kHz, 75 ms of audio)"
            )
        if subsampled_length(t_i) >= max_positions:
            raise ValueError(
                f"item {i}: {t_i} frames give {subsampled_length(t_i)} Conformer frames; "
                f"the position table allows fewer than {max_positions}"
            )
    return lengths, frames
