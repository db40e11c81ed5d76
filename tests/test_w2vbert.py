import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Wav2Vec2BertConfig, Wav2Vec2BertModel

from preprocess.models.files import resolve_w2v_bert_dir
from preprocess.models.w2vbert import FeatureStandardizer, SemanticEncoder

LAYER = 17


def tiny_config() -> Wav2Vec2BertConfig:
    # The official architecture (relative_key 64/8, causal depthwise k31, 160-dim input) at toy width.
    return Wav2Vec2BertConfig(
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        output_hidden_size=32,
        num_hidden_layers=19,
        feature_projection_input_dim=160,
        conv_depthwise_kernel_size=31,
        position_embeddings_type="relative_key",
        left_max_position_embeddings=64,
        right_max_position_embeddings=8,
        layerdrop=0.1,
        mask_time_prob=0.05,
    )


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(0)
    model = Wav2Vec2BertModel(tiny_config()).eval()
    # Non-trivial LayerNorm parameters so that a misplaced or missing norm shows up.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("w2v") / "model"
    model.save_pretrained(path, safe_serialization=True)
    return model, path


def padded_batch(lengths, frames, seed=0):
    # frontend layout: features padded with 1.0, mask 1 for positions < L
    g = torch.Generator().manual_seed(seed)
    tmax = max(frames)
    feats = torch.ones(len(frames), tmax, 160)
    mask = torch.zeros(len(frames), tmax, dtype=torch.long)
    for i, (length, t) in enumerate(zip(lengths, frames)):
        feats[i, :t] = torch.randn(t, 160, generator=g)
        mask[i, :length] = 1
    return feats, mask


def test_output_equals_hidden_states_of_full_model(saved_model):
    full, path = saved_model
    ours = SemanticEncoder.from_pretrained(path, layer=LAYER)
    feats, mask = padded_batch([40, 29], [40, 30])
    with torch.no_grad():
        ref = full(feats, attention_mask=mask, output_hidden_states=True).hidden_states
        out = ours(feats, mask)
    assert out.shape == (2, 40, 32)
    torch.testing.assert_close(out, ref[LAYER], rtol=0, atol=1e-5)
    # hidden_states[17] is the output of the 17th layer, not its input nor the 18th's output
    assert not torch.allclose(out, ref[LAYER - 1], atol=1e-3)
    assert not torch.allclose(out, ref[LAYER + 1], atol=1e-3)


def test_only_the_used_layers_are_built_and_loaded(saved_model):
    _, path = saved_model
    ours = SemanticEncoder.from_pretrained(path, layer=LAYER)
    assert len(ours.encoder.layers) == LAYER
    keys = set(ours.state_dict())
    assert any(k.startswith(f"encoder.layers.{LAYER - 1}.") for k in keys)
    assert not any(k.startswith(f"encoder.layers.{LAYER}.") for k in keys)
    assert all(k.startswith(("feature_projection.", "encoder.layers.")) for k in keys)
    assert not ours.training
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in ours.parameters())
    assert not any(t.is_meta for t in ours.state_dict().values())


def test_batched_equals_single(saved_model):
    _, path = saved_model
    ours = SemanticEncoder.from_pretrained(path, layer=LAYER)
    lengths, frames = [11, 300], [12, 300]  # item 0 has a masked half frame
    feats, mask = padded_batch(lengths, frames, seed=1)
    with torch.no_grad():
        batched = ours(feats, mask)
        for i, t in enumerate(frames):
            single = ours(feats[i : i + 1, :t], mask[i : i + 1, :t])
            torch.testing.assert_close(batched[i : i + 1, :t], single, rtol=0, atol=1e-5)


def test_missing_key_names_key_and_file(saved_model, tmp_path):
    _, path = saved_model
    tensors = load_file(str(path / "model.safetensors"))
    dropped = "encoder.layers.16.conv_module.depthwise_conv.weight"
    del tensors[dropped]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((path / "config.json").read_text())
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(KeyError, match=r"encoder\.layers\.16\.conv_module.*model\.safetensors"):
        SemanticEncoder.from_pretrained(broken, layer=LAYER)
    # the same file is fine when layer 16 is not needed
    assert len(SemanticEncoder.from_pretrained(broken, layer=16).encoder.layers) == 16


def test_layer_beyond_model_is_refused(saved_model):
    _, path = saved_model
    with pytest.raises(ValueError, match="layer 20"):
        SemanticEncoder.from_pretrained(path, layer=20)


def test_resolve_dir_from_cache(tmp_path, monkeypatch, saved_model):
    _, model_dir = saved_model
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="w2v-bert-2.0"):
        resolve_w2v_bert_dir(None)
    snapshot = tmp_path / "hub" / "models--facebook--w2v-bert-2.0" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="w2v-bert-2.0"):  # empty snapshot
        resolve_w2v_bert_dir(None)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).symlink_to(model_dir / name)
    assert resolve_w2v_bert_dir(None) == snapshot
    assert resolve_w2v_bert_dir(model_dir) == model_dir
    with pytest.raises(FileNotFoundError, match="w2v-bert-2.0"):
        resolve_w2v_bert_dir(tmp_path / "nowhere")


def test_standardizer(tmp_path):
    mean = torch.randn(32)
    var = torch.rand(32) + 0.5
    path = tmp_path / "wav2vec2bert_stats.pt"
    torch.save({"mean": mean, "var": var}, str(path))
    std = FeatureStandardizer.from_file(path)
    assert set(dict(std.named_buffers())) == {"mean", "var"}
    h = torch.randn(2, 5, 32)
    out = std(h)
    assert out.dtype == torch.float32
    assert torch.equal(out, (h - mean) / torch.sqrt(var))
    assert std(h.bfloat16()).dtype == torch.float32
