"""w2v-BERT 2.0 semantic encoder, truncated at one layer, and its feature standardiser.

IndexTTS2 takes `hidden_states[17]` of `facebook/w2v-bert-2.0` (contract §5.2): the output of
the 17th Conformer layer. Layers 18..24 are never used, so they are neither built nor loaded.
The layers themselves are the transformers 4.52.1 modules, so the math is the reference's by
construction; this file only decides what to build, what to load and what to return.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from transformers import Wav2Vec2BertConfig
from transformers.models.wav2vec2_bert.modeling_wav2vec2_bert import (
    Wav2Vec2BertEncoder,
    Wav2Vec2BertFeatureProjection,
)

# Head models (e.g. ...ForCTC) save the base model under this prefix; accept both layouts.
BASE_MODEL_PREFIX = "wav2vec2_bert."


def _safetensors_files(model_dir: Path) -> list[Path]:
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / name for name in shards]
    raise FileNotFoundError(f"no model.safetensors in {model_dir}")


class SemanticEncoder(nn.Module):
    """Wav2Vec2BertModel up to layer `layer`: features [B,T,160] -> hidden_states[layer] [B,T,H].

    Submodule names equal the checkpoint's (`feature_projection.*`, `encoder.layers.{i}.*`), so
    the state dict is the checkpoint's restricted to what is used.
    """

    def __init__(self, config: Wav2Vec2BertConfig, layer: int = 17):
        super().__init__()
        if not 0 <= layer <= config.num_hidden_layers:
            raise ValueError(
                f"layer {layer} out of range: the model has {config.num_hidden_layers} layers"
            )
        self.layer = layer
        self.config = config  # the full model's config, for the record
        truncated = copy.deepcopy(config)
        truncated.num_hidden_layers = layer
        # The reference ran eager attention (transformers 4.x's only path here); transformers 5
        # would pick another kernel and move codes (measured: 19 % differ), so say it.
        truncated._attn_implementation = "eager"
        self.feature_projection = Wav2Vec2BertFeatureProjection(truncated)
        # The HF encoder has no op after its last layer (no final norm): its output is exactly
        # the last entry of hidden_states, i.e. hidden_states[layer] of the full model. The
        # full model's intermediate_ffn/adapter act on last_hidden_state only, never here.
        self.encoder = Wav2Vec2BertEncoder(truncated)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, layer: int = 17) -> "SemanticEncoder":
        """Load from a local directory (config.json + model.safetensors); never downloads."""
        model_dir = Path(path).expanduser()
        config_file = model_dir / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found (a local w2v-BERT 2.0 directory)")
        config = Wav2Vec2BertConfig.from_json_file(str(config_file))
        files = _safetensors_files(model_dir)

        # Build without allocating or initialising weights; they come from the checkpoint.
        with torch.device("meta"):
            model = cls(config, layer)
        wanted = {name: tuple(t.shape) for name, t in model.state_dict().items()}

        tensors: dict[str, torch.Tensor] = {}
        seen: dict[str, Path] = {}
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for stored in f.keys():
                    name = stored[len(BASE_MODEL_PREFIX):] if stored.startswith(BASE_MODEL_PREFIX) else stored
                    if name in wanted:
                        tensors[name] = f.get_tensor(stored)
                        seen[name] = file
                    elif _within_loaded_part(name, layer):
                        raise ValueError(
                            f"unexpected key {stored!r} in {file}: the config in {config_file} "
                            "does not describe this checkpoint"
                        )
        file_names = ", ".join(str(f) for f in files)
        for name, shape in wanted.items():
            if name not in tensors:
                raise KeyError(f"missing key {name!r} in {file_names} (needed for layer {layer})")
            if tuple(tensors[name].shape) != shape:
                raise ValueError(
                    f"key {name!r} in {seen[name]} has shape {tuple(tensors[name].shape)}, "
                    f"expected {shape} from {config_file}"
                )
            if tensors[name].is_floating_point():
                tensors[name] = tensors[name].float()
        model.load_state_dict(tensors, strict=True, assign=True)

        # Position tables that are plain attributes or non-persistent buffers ("relative",
        # "rotary" types) were built on meta; rebuild them for real. relative_key has none.
        if model.encoder.embed_positions is not None:
            model.encoder.embed_positions = type(model.encoder.embed_positions)(model.encoder.config)
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.is_meta:
                raise RuntimeError(f"{name} was not loaded from {file_names}")
        return model.eval().requires_grad_(False)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # features [B,T,160], mask [B,T] (1/True = valid) -> [B,T,H]
        hidden, _ = self.feature_projection(features)
        return self.encoder(hidden, attention_mask=mask, return_dict=True).last_hidden_state


def _within_loaded_part(name: str, layer: int) -> bool:
    """Whether a checkpoint key belongs to the part we build (feature projection, layers < layer)."""
    if name.startswith("feature_projection."):
        return True
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "encoder" and parts[1] == "layers" and parts[2].isdigit():
        return int(parts[2]) < layer
    return False


class FeatureStandardizer(nn.Module):
    """Per-channel standardisation of the layer-17 features (contract §5.3): (h - mean) / sqrt(var).

    No epsilon, in float32 whatever the input dtype, as the reference does.
    """

    def __init__(self, mean: torch.Tensor, var: torch.Tensor):
        super().__init__()
        if mean.ndim != 1 or mean.shape != var.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and var {tuple(var.shape)} must be [H]")
        self.register_buffer("mean", mean.float())
        self.register_buffer("var", var.float())

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "FeatureStandardizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"w2v-BERT stats file {path} not found")
        stats = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(stats, dict) or "mean" not in stats or "var" not in stats:
            raise ValueError(f"{path} must hold a dict with 'mean' and 'var'")
        return cls(stats["mean"], stats["var"])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # h [..., H] -> float32 [..., H]; .float() keeps the stats exact even if the module was cast
        return (h.float() - self.mean.float()) / torch.sqrt(self.var.float())
