"""UnifiedVoice conditioning/emotion heads: checkpoint layout, loading, exact batching."""

import argparse
import json
import math
import pathlib
import warnings

import pytest
import torch

from preprocess.models.conformer import ConformerConfig, ConformerEncoder
from preprocess.models.perceiver import PerceiverResampler
from preprocess.models.unifiedvoice import (
    CheckpointError,
    ConditioningConfig,
    UnifiedVoiceConditioning,
    UntrustedCheckpoint,
)

# The `gpt` section of the official IndexTTS2 config.yaml (contract §7.4), conditioning part.
OFFICIAL_GPT = {
    "model_dim": 1280,
    "heads": 20,
    "layers": 24,
    "number_text_tokens": 12000,
    "condition_type": "conformer_perceiver",
    "condition_module": {
        "output_size": 512,
        "linear_units": 2048,
        "attention_heads": 8,
        "num_blocks": 6,
        "input_layer": "conv2d2",
        "perceiver_mult": 2,
    },
    "emo_condition_module": {
        "output_size": 512,
        "linear_units": 1024,
        "attention_heads": 4,
        "num_blocks": 4,
        "input_layer": "conv2d2",
        "perceiver_mult": 2,
    },
}

TINY_MODULE = {
    "output_size": 32,
    "linear_units": 64,
    "attention_heads": 2,
    "num_blocks": 2,
    "input_layer": "conv2d2",
    "perceiver_mult": 2,
}


def tiny_config() -> ConditioningConfig:
    gpt = {
        "model_dim": 64,
        "condition_module": TINY_MODULE,
        "emo_condition_module": dict(TINY_MODULE, linear_units=48),
    }
    config = ConditioningConfig.from_gpt_section(gpt, input_size=48)
    config.emotion_dim = 40  # 1024 in the official model; small here to keep the test fast
    return config


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return UnifiedVoiceConditioning(tiny_config()).eval()


# --- layout -------------------------------------------------------------------------------


def test_official_config_matches_checkpoint_key_list(reference_keys_dir):
    with open(reference_keys_dir / "gpt_conditioning_keys.json") as f:
        reference = json.load(f)
    config = ConditioningConfig.from_gpt_section(OFFICIAL_GPT)
    assert config.num_latents == 32  # condition_num_latent absent -> 32
    with torch.device("meta"):
        model = UnifiedVoiceConditioning(config)
    state = model.state_dict()

    got = [(k, list(v.shape)) for k, v in state.items()]
    expected = [(k, v["shape"]) for k, v in reference["keys"].items()]
    assert got == expected  # same keys, same shapes, same order

    # The JSON's "parameters" counts every stored tensor, the two `pe` buffers included.
    assert sum(v.numel() for v in state.values()) == reference["parameters"] == 344_017_404
    buffers = [k for k, _ in model.named_buffers()]
    assert buffers == [
        "conditioning_encoder.embed.pos_enc.pe",
        "emo_conditioning_encoder.embed.pos_enc.pe",
    ]
    assert sum(p.numel() for p in model.parameters()) == 338_897_404  # contract §7.5 total


def test_config_rejects_what_is_not_implemented():
    with pytest.raises(ValueError, match="condition_type"):
        ConditioningConfig.from_gpt_section(dict(OFFICIAL_GPT, condition_type="perceiver"))
    bad_layer = dict(OFFICIAL_GPT["condition_module"], input_layer="conv2d")
    with pytest.raises(ValueError, match="conv2d2"):
        ConditioningConfig.from_gpt_section(dict(OFFICIAL_GPT, condition_module=bad_layer))
    no_mult = {k: v for k, v in OFFICIAL_GPT["emo_condition_module"].items() if k != "perceiver_mult"}
    with pytest.raises(ValueError, match="perceiver_mult"):
        ConditioningConfig.from_gpt_section(dict(OFFICIAL_GPT, emo_condition_module=no_mult))


def test_positions_are_the_standard_sinusoid():
    enc = ConformerEncoder(ConformerConfig(input_size=8, output_size=16, num_blocks=0))
    pe = enc.embed.pos_enc.pe
    assert pe.shape == (1, 5000, 16)
    p, i = 37, 3
    assert pe[0, p, 2 * i].item() == pytest.approx(math.sin(p * 10000 ** (-2 * i / 16)), abs=1e-5)
    assert pe[0, p, 2 * i + 1].item() == pytest.approx(math.cos(p * 10000 ** (-2 * i / 16)), abs=1e-5)
    assert "embed.pos_enc.pe" in enc.state_dict()  # persistent: it is in the checkpoint


def test_perceiver_without_projection_when_dims_agree():
    # as the official module: Identity, so no `proj_context` key
    assert not any(k.startswith("proj_context") for k in PerceiverResampler(64, 64, heads=1).state_dict())
    assert "proj_context.weight" in PerceiverResampler(64, 32, heads=1).state_dict()


# --- checkpoint loading -------------------------------------------------------------------


def save_checkpoint(path, model, nest: bool, extra: dict | None = None):
    state = dict(model.state_dict())
    state["text_embedding.weight"] = torch.randn(7, 5)  # other UnifiedVoice keys are ignored
    state["gpt.h.0.attn.c_attn.weight"] = torch.randn(3, 3)
    state.update(extra or {})
    torch.save({"model": state, "step": 12} if nest else state, path)


@pytest.mark.parametrize("nest", [False, True], ids=["top-level", "under-model"])
def test_checkpoint_round_trip(tmp_path, tiny_model, nest):
    path = tmp_path / "gpt.pth"
    save_checkpoint(path, tiny_model, nest)
    loaded = UnifiedVoiceConditioning.from_checkpoint(path, tiny_config())
    assert not loaded.training
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in loaded.state_dict().values())
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    x, lengths, frames = torch.randn(1, 40, 48), torch.tensor([39]), torch.tensor([40])
    with torch.no_grad():
        assert torch.equal(
            loaded.get_conditioning(x, lengths, frames), tiny_model.get_conditioning(x, lengths, frames)
        )
        assert torch.equal(loaded.get_emovec(x, lengths, frames), tiny_model.get_emovec(x, lengths, frames))


def test_checkpoint_errors_name_key_and_file(tmp_path, tiny_model):
    good = dict(tiny_model.state_dict())

    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in good.items() if k != "emo_layer.bias"}, missing)
    with pytest.raises(CheckpointError, match="emo_layer.bias") as err:
        UnifiedVoiceConditioning.from_checkpoint(missing, tiny_config())
    assert str(missing) in str(err.value)

    key = "perceiver_encoder.layers.1.0.to_kv.weight"
    wrong = tmp_path / "wrong_shape.pth"
    torch.save({"model": dict(good, **{key: torch.zeros(3, 4)})}, wrong)
    with pytest.raises(CheckpointError, match=key) as err:
        UnifiedVoiceConditioning.from_checkpoint(wrong, tiny_config())
    assert str(wrong) in str(err.value) and "[3, 4]" in str(err.value)

    extra = tmp_path / "extra_block.pth"
    stray = "conditioning_encoder.encoders.2.norm_ff.weight"  # a third block the config lacks
    torch.save(dict(good, **{stray: torch.ones(32)}), extra)
    with pytest.raises(CheckpointError, match=stray) as err:
        UnifiedVoiceConditioning.from_checkpoint(extra, tiny_config())
    assert str(extra) in str(err.value)

    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        UnifiedVoiceConditioning.from_checkpoint(tmp_path / "nothere.pth", tiny_config())


def test_pickled_trainer_checkpoint_is_refused_unless_trusted(tmp_path, tiny_model):
    path = tmp_path / "trainer.pth"
    save_checkpoint(path, tiny_model, nest=True, extra={})
    ckpt = torch.load(path, weights_only=True)
    ckpt["args"] = argparse.Namespace(lr=1e-4)  # not allowed by the weights-only unpickler
    torch.save(ckpt, path)

    with pytest.raises(UntrustedCheckpoint, match="argparse.Namespace"):
        UnifiedVoiceConditioning.from_checkpoint(path, tiny_config())
    with pytest.warns(UserWarning, match="argparse.Namespace"):
        loaded = UnifiedVoiceConditioning.from_checkpoint(path, tiny_config(), allow_pickle=True)
    assert torch.equal(loaded.emo_layer.weight, tiny_model.emo_layer.weight)


class _RunsCode:
    """What a hostile checkpoint can carry: unpickling it calls a function of its choosing."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_by_default(tmp_path, tiny_model):
    path, marker = tmp_path / "hostile.pth", tmp_path / "code_ran"
    save_checkpoint(path, tiny_model, nest=True, extra={})
    ckpt = torch.load(path, weights_only=True)
    ckpt["payload"] = _RunsCode(marker)
    torch.save(ckpt, path)
    assert not marker.exists()
    with pytest.raises(UntrustedCheckpoint, match="hostile.pth"):
        UnifiedVoiceConditioning.from_checkpoint(path, tiny_config())
    assert not marker.exists()  # refused before anything in the file ran


def test_damaged_file_is_an_error_not_a_pickle_fallback(tmp_path, tiny_model):
    path = tmp_path / "damaged.pth"
    path.write_bytes(b"not a checkpoint")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "loading with the full unpickler" for junk
        with pytest.raises(CheckpointError, match="damaged.pth"):
            UnifiedVoiceConditioning.from_checkpoint(path, tiny_config())


# --- exact batching (contract §8) ----------------------------------------------------------

# (T, L): long; odd F -> half frame (T' > L'); the same with T' = 50; short; the minimum.
ITEMS = [(1000, 1000), (27, 26), (101, 100), (26, 26), (3, 3)]


def run_items(model, x, lengths, frames):
    with torch.no_grad():
        return model.get_conditioning(x, lengths, frames), model.get_emovec(x, lengths, frames)


@pytest.fixture(scope="module")
def batch_results(tiny_model):
    torch.manual_seed(1)
    frames = torch.tensor([t for t, _ in ITEMS])
    lengths = torch.tensor([n for _, n in ITEMS])
    x = torch.randn(len(ITEMS), int(frames.max()), 48)
    for i, t in enumerate(frames.tolist()):
        x[i, t:] = float("nan")  # padding content must never matter
    single = [
        run_items(tiny_model, x[i : i + 1, :t], lengths[i : i + 1], frames[i : i + 1])
        for i, t in enumerate(frames.tolist())
    ]
    return x, lengths, frames, single


def test_batched_equals_single_items(tiny_model, batch_results):
    x, lengths, frames, single = batch_results
    condition, emo_vec = run_items(tiny_model, x, lengths, frames)
    assert condition.shape == (len(ITEMS), 32, 64) and emo_vec.shape == (len(ITEMS), 64)
    for i, (cond_i, emo_i) in enumerate(single):
        assert torch.isfinite(cond_i).all() and torch.isfinite(emo_i).all()
        assert (condition[i] - cond_i[0]).abs().max().item() < 1e-4, i
        assert (emo_vec[i] - emo_i[0]).abs().max().item() < 1e-4, i


def test_the_leak_is_real_without_extent_zeroing(tiny_model, batch_results):
    # frames = the batch extent for every item is the reference's own batched behaviour: the
    # GLU(bias) of padded positions reaches valid frames through the depthwise conv.
    x, lengths, frames, single = batch_results
    x = torch.nan_to_num(x)  # the reference would turn NaN padding into NaN outputs
    full = torch.full_like(frames, int(frames.max()))
    condition, emo_vec = run_items(tiny_model, x, lengths, full)
    for i, (cond_i, emo_i) in enumerate(single):
        cond_gap = (condition[i] - cond_i[0]).abs().max().item()
        emo_gap = (emo_vec[i] - emo_i[0]).abs().max().item()
        if frames[i] == full[i]:
            assert cond_gap < 1e-4 and emo_gap < 1e-4  # the longest item has no padding
        else:
            assert cond_gap > 1e-3 and emo_gap > 1e-3, (i, cond_gap, emo_gap)


def test_half_frame_counts_as_in_the_reference(tiny_model):
    # T = 27, L = 26: one masked-but-present Conformer frame; its GLU(bias) is part of the
    # single-item result, so it differs from feeding only the L valid frames.
    torch.manual_seed(2)
    x = torch.randn(1, 27, 48)
    with_half, _ = run_items(tiny_model, x, torch.tensor([26]), torch.tensor([27]))
    valid_only, _ = run_items(tiny_model, x[:, :26], torch.tensor([26]), torch.tensor([26]))
    assert (with_half - valid_only).abs().max().item() > 1e-4


def test_lengths_beyond_frames_mean_all_valid(tiny_model):
    x = torch.randn(1, 30, 48)
    a = run_items(tiny_model, x, torch.tensor([30]), torch.tensor([30]))
    b = run_items(tiny_model, x, torch.tensor([1024]), torch.tensor([30]))  # official inference passes 1024
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("frames,length", [(3, 2), (2, 2), (40, 1)])
def test_too_short_items_are_refused(tiny_model, frames, length):
    x = torch.randn(2, 50, 48)
    with pytest.raises(ValueError, match="item 1"):
        run_items(tiny_model, x, torch.tensor([50, length]), torch.tensor([50, frames]))


def test_frames_beyond_the_tensor_are_refused(tiny_model):
    with pytest.raises(ValueError, match="frames 60"):
        run_items(tiny_model, torch.randn(1, 50, 48), torch.tensor([50]), torch.tensor([60]))


def test_subsampling_in_slices_equals_in_one_go(tiny_model):
    embed = tiny_model.conditioning_encoder.embed
    x = torch.randn(2, 61, 48)
    with torch.no_grad():
        whole = embed(x)
        embed.chunk_elements = 2 * 32 * 23 * 7  # 7 output frames per slice, ragged last slice
        try:
            sliced = embed(x)
        finally:
            del embed.chunk_elements
    assert whole.shape == sliced.shape == (2, 30, 32)
    assert (whole - sliced).abs().max().item() < 1e-5
