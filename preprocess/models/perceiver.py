"""Perceiver resampler of IndexTTS2's UnifiedVoice (contract §7.3).

A fixed set of learned latents cross-attends to [latents || context] (the latents see
themselves as well as the context), then a GEGLU feed-forward; two such layers and a final
RMS-style norm. Names follow the checkpoint keys (`layers.{l}.0.to_q`, `layers.{l}.1.0`, ...).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LatentAttention(nn.Module):
    """Multi-head attention of the latents over [latents || context]; no biases, no pre-norm."""

    def __init__(self, dim: int, heads: int, head_dim: int = 64):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, latents, context, key_mask):
        # latents [B, n, dim], context [B, N, dim], key_mask [B, n + N] bool or None
        batch, n, _ = latents.shape
        k, v = self.to_kv(torch.cat([latents, context], dim=1)).chunk(2, dim=-1)
        q, k, v = (self._split_heads(t) for t in (self.to_q(latents), k, v))  # [B, h, *, hd]
        scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # [B, h, n, n + N]
        if key_mask is not None:
            # -max rather than -inf: masked weights still underflow to exactly 0 after softmax
            scores = scores.masked_fill(~key_mask[:, None, None, :], -torch.finfo(scores.dtype).max)
        out = scores.softmax(dim=-1) @ v  # [B, h, n, hd]
        return self.to_out(out.transpose(1, 2).reshape(batch, n, -1))

    def _split_heads(self, t):
        # channels are head-major: channel h * head_dim + d
        batch, n, _ = t.shape
        return t.view(batch, n, self.heads, self.head_dim).transpose(1, 2)


class GEGLU(nn.Module):
    def forward(self, x):
        value, gate = x.chunk(2, dim=-1)
        return value * F.gelu(gate)  # exact (erf) GELU


class RMSNorm(nn.Module):
    """x / max(||x||, 1e-12) * sqrt(dim) * gamma."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class PerceiverResampler(nn.Module):
    def __init__(
        self,
        dim: int,
        dim_context: int | None = None,
        num_latents: int = 32,
        heads: int = 8,
        head_dim: int = 64,
        depth: int = 2,
        ff_mult: float = 4,
    ):
        super().__init__()
        dim_context = dim if dim_context is None else dim_context
        self.num_latents = num_latents
        # N(0, 0.02) drawn on the CPU, then moved to the default device: random ops on the meta
        # device (where the checkpoint loader builds) cost seconds of one-time imports.
        latents = torch.randn(num_latents, dim, device="cpu") * 0.02
        self.latents = nn.Parameter(latents.to(torch.empty(0).device))
        # The official module has no projection (Identity) when the context already has `dim`.
        self.proj_context = nn.Linear(dim_context, dim) if dim_context != dim else nn.Identity()
        ff_inner = int(dim * ff_mult * 2 / 3)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    LatentAttention(dim, heads, head_dim),
                    nn.Sequential(nn.Linear(dim, 2 * ff_inner), GEGLU(), nn.Linear(ff_inner, dim)),
                ]
            )
            for _ in range(depth)
        )
        self.norm = RMSNorm(dim)

    def forward(self, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """context [B, N, Dc], mask [B, N] bool (True = valid) -> [B, num_latents, dim].

        The latents themselves are always valid keys: the key mask is [True * n || mask].
        """
        batch = context.shape[0]
        context = self.proj_context(context)
        latents = self.latents.expand(batch, -1, -1)
        key_mask = None
        if mask is not None:
            always = torch.ones(batch, self.num_latents, dtype=torch.bool, device=mask.device)
            key_mask = torch.cat([always, mask.bool()], dim=1)
        for attention, feed_forward in self.layers:
            latents = attention(latents, context, key_mask) + latents
            latents = feed_forward(latents) + latents
        return self.norm(latents)
