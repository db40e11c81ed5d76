"""The conditioning and emotion heads of IndexTTS2's UnifiedVoice (contract §7).

Only six prefixes of `gpt.pth` are needed to make training features; the GPT-2 stack, the text
and mel embeddings and heads are neither built nor loaded (contract §7.5):

    conditioning_encoder      speaker Conformer          [B, T, C] -> [B, T', 512]
    perceiver_encoder         speaker perceiver          -> condition [B, 32, model_dim]
    emo_conditioning_encoder  emotion Conformer          [B, T, C] -> [B, T', 512]
    emo_perceiver_encoder     emotion perceiver (1 latent, dim 1024) -> [B, 1024]
    emovec_layer, emo_layer   Linear 1024 -> model_dim, Linear model_dim -> model_dim
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .conformer import ConformerConfig, ConformerEncoder
from .files import CheckpointError, UntrustedCheckpoint
from .perceiver import PerceiverResampler

PREFIXES = (
    "conditioning_encoder.",
    "perceiver_encoder.",
    "emo_conditioning_encoder.",
    "emo_perceiver_encoder.",
    "emovec_layer.",
    "emo_layer.",
)


@dataclass
class ConditioningConfig:
    """Defaults are the official IndexTTS2 `gpt` section (contract §7.4)."""

    speaker_encoder: ConformerConfig = field(
        default_factory=lambda: ConformerConfig(attention_heads=8, linear_units=2048, num_blocks=6)
    )
    emotion_encoder: ConformerConfig = field(
        default_factory=lambda: ConformerConfig(attention_heads=4, linear_units=1024, num_blocks=4)
    )
    model_dim: int = 1280
    num_latents: int = 32  # `condition_num_latent`
    speaker_perceiver_mult: float = 2
    emotion_perceiver_mult: float = 2
    # Hard-coded in the official model (emo perceiver dim and emovec_layer input), not in config.
    emotion_dim: int = 1024

    def __post_init__(self):
        if self.speaker_encoder.input_size != self.emotion_encoder.input_size:
            raise ValueError("speaker and emotion encoders must read the same features")

    @property
    def input_size(self) -> int:
        return self.speaker_encoder.input_size

    @classmethod
    def from_gpt_section(cls, gpt: dict, input_size: int = 1024) -> ConditioningConfig:
        """From the `gpt` section of config.yaml; input_size = semantic feature dim (1024)."""
        condition_type = gpt.get("condition_type", "conformer_perceiver")
        if condition_type != "conformer_perceiver":
            raise ValueError(
                f"condition_type {condition_type!r} is not supported (IndexTTS2 uses "
                "'conformer_perceiver')"
            )
        for key in ("model_dim", "condition_module", "emo_condition_module"):
            if key not in gpt:
                raise ValueError(f"the gpt section of config.yaml lacks {key!r}")
        speaker, emotion = gpt["condition_module"], gpt["emo_condition_module"]
        for name, section in (("condition_module", speaker), ("emo_condition_module", emotion)):
            if "perceiver_mult" not in section:
                raise ValueError(f"gpt.{name} lacks 'perceiver_mult'")
        return cls(
            speaker_encoder=ConformerConfig.from_module_section(speaker, input_size),
            emotion_encoder=ConformerConfig.from_module_section(emotion, input_size),
            model_dim=int(gpt["model_dim"]),
            num_latents=int(gpt.get("condition_num_latent", 32)),
            speaker_perceiver_mult=speaker["perceiver_mult"],
            emotion_perceiver_mult=emotion["perceiver_mult"],
        )


class UnifiedVoiceConditioning(nn.Module):
    def __init__(self, config: ConditioningConfig):
        super().__init__()
        self.config = config
        spk, emo = config.speaker_encoder, config.emotion_encoder
        # registration order = the checkpoint's key order
        self.conditioning_encoder = ConformerEncoder(spk)
        self.perceiver_encoder = PerceiverResampler(
            config.model_dim,
            dim_context=spk.output_size,
            num_latents=config.num_latents,
            heads=spk.attention_heads,
            ff_mult=config.speaker_perceiver_mult,
        )
        self.emo_conditioning_encoder = ConformerEncoder(emo)
        self.emo_perceiver_encoder = PerceiverResampler(
            config.emotion_dim,
            dim_context=emo.output_size,
            num_latents=1,
            heads=emo.attention_heads,
            ff_mult=config.emotion_perceiver_mult,
        )
        self.emo_layer = nn.Linear(config.model_dim, config.model_dim)
        self.emovec_layer = nn.Linear(config.emotion_dim, config.model_dim)

    # The official get_conditioning takes [B, 1024, T] and transposes; get_emovec takes
    # [B, T, 1024]. Here both take [B, T, C], the layout the features come in.
    def get_conditioning(self, x: torch.Tensor, lengths: torch.Tensor, frames: torch.Tensor):
        """x [B, T, C], lengths L [B], frames T [B] -> speaker latents [B, num_latents, model_dim]."""
        h, mask = self.conditioning_encoder(x, lengths, frames)
        return self.perceiver_encoder(h, mask)

    def get_emovec(self, x: torch.Tensor, lengths: torch.Tensor, frames: torch.Tensor):
        """x [B, T, C], lengths L [B], frames T [B] -> emotion vector [B, model_dim]."""
        h, mask = self.emo_conditioning_encoder(x, lengths, frames)
        emo = self.emo_perceiver_encoder(h, mask).squeeze(1)  # [B, emotion_dim]
        return self.emo_layer(self.emovec_layer(emo))

    @classmethod
    def from_checkpoint(
        cls, gpt_path, config: ConditioningConfig, allow_pickle: bool = False
    ) -> UnifiedVoiceConditioning:
        """Load the six prefixes of a `gpt.pth` (base file or trainer checkpoint).

        Keys outside the six prefixes are ignored; a missing key, an unknown key inside them or
        a wrong shape is a CheckpointError naming the key and the file. Tensors stay memory-mapped
        where the file format allows, so only what is used is read. Returned in eval mode, fp32.
        """
        path = os.fspath(gpt_path)
        state = load_gpt_state(path, allow_pickle=allow_pickle)
        with torch.device("meta"):
            model = cls(config)
        expected = model.state_dict()
        selected = {k: v for k, v in state.items() if isinstance(k, str) and k.startswith(PREFIXES)}

        missing = [k for k in expected if k not in selected]
        if missing:
            raise CheckpointError(
                f"{path}: missing key {missing[0]!r}"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                + " (is this an IndexTTS2 gpt.pth for this config?)"
            )
        unexpected = [k for k in selected if k not in expected]
        if unexpected:
            raise CheckpointError(
                f"{path}: unexpected key {unexpected[0]!r}"
                + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else "")
                + " (config.yaml gpt section does not match the checkpoint?)"
            )
        for key, ref in expected.items():
            value = selected[key]
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{path}: {key!r} is a {type(value).__name__}, not a tensor")
            if tuple(value.shape) != tuple(ref.shape):
                raise CheckpointError(
                    f"{path}: {key!r} has shape {list(value.shape)}, expected {list(ref.shape)}"
                )
            if value.dtype != torch.float32:
                selected[key] = value.float()  # the reference runs fp32
        model.load_state_dict(selected, strict=True, assign=True)
        return model.eval()


def load_gpt_state(path: str, allow_pickle: bool = False) -> dict:
    """The state dict in a gpt.pth: `ckpt["model"]` if present, else the top level.

    Loaded with the weights-only unpickler: a file from elsewhere cannot run code. A checkpoint
    that also pickles other objects (a trainer's argparse.Namespace, say) is refused with the
    name of the object, unless `allow_pickle` (the owner trusts the file): then the full
    unpickler loads it, with a warning that names the object.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"gpt checkpoint not found: {path}")

    def load(weights_only: bool):
        try:
            return torch.load(path, map_location="cpu", mmap=True, weights_only=weights_only)
        except RuntimeError as err:
            if "mmap can only be used" not in str(err):
                raise
            # legacy (non-zip) torch.save format: cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=weights_only)

    try:
        try:
            ckpt = load(weights_only=True)
        except pickle.UnpicklingError as err:
            if "Unsupported global" not in str(err):
                raise  # not a refused class: a damaged file
            reason = unpickler_reason(err)
            if not allow_pickle:
                raise UntrustedCheckpoint(
                    f"{path}: not loadable with the weights-only unpickler ({reason}); the full "
                    "unpickler can run code stored in the file, so it is used only for a "
                    "checkpoint you trust"
                ) from err
            warnings.warn(
                f"{path}: the weights-only unpickler refused it ({reason}); loading with the full "
                "unpickler, which can run code stored in the file. Use only checkpoints you trust.",
                stacklevel=3,
            )
            ckpt = load(weights_only=False)
    except CheckpointError:
        raise
    except Exception as err:  # any failure to decode the file is a bad checkpoint
        raise CheckpointError(f"{path}: cannot read the checkpoint ({unpickler_reason(err)})") from err

    if isinstance(ckpt, dict) and "model" in ckpt:
        ckpt = ckpt["model"]
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(ckpt).__name__}")
    return ckpt


def unpickler_reason(err: Exception) -> str:
    """The specific cause inside torch's long weights-only error message, else the message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    marker = "WeightsUnpickler error:"
    for i, line in enumerate(lines):
        if marker in line:
            cause = line.split(marker, 1)[1].strip()
            if not cause and i + 1 < len(lines):
                cause = lines[i + 1]
            return cause.split(". ")[0]
    return lines[0] if lines else type(err).__name__
