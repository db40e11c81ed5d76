import json

import pytest
import torch
from safetensors.torch import save_file

from preprocess.models.codec import SemanticCodec, SemanticCodecConfig, WeightNormConv1d

TINY = SemanticCodecConfig(
    codebook_size=64,
    hidden_size=16,
    codebook_dim=4,
    vocos_dim=8,
    vocos_intermediate_dim=24,
    vocos_num_layers=12,
)


@pytest.fixture(scope="module")
def reference_keys(reference_keys_dir):
    with open(reference_keys_dir / "semantic_codec_keys.json") as f:
        return {name: tuple(v["shape"]) for name, v in json.load(f)["keys"].items()}


def random_codec(config=TINY, seed=0):
    # Weights far from the official init (which makes every block ~identity) so that the
    # convolutions mix neighbouring frames strongly and codes vary.
    torch.manual_seed(seed)
    codec = SemanticCodec(config).eval()
    with torch.no_grad():
        for name, p in codec.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.5)
            elif name.endswith("weight_g"):
                p.fill_(1.0)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.1))
    return codec


def full_state_dict(codec, config):
    # An official-format file: our keys plus the (unused) decoder keys.
    state = {k: v.contiguous() for k, v in codec.state_dict().items()}
    for name, shape in SemanticCodec.decoder_key_shapes(config).items():
        state[name] = torch.randn(shape)
    return state


def test_official_config_has_exactly_the_official_keys(reference_keys):
    with torch.device("meta"):
        codec = SemanticCodec(SemanticCodecConfig())
    ours = {k: tuple(v.shape) for k, v in codec.state_dict().items()}
    assert ours == {k: v for k, v in reference_keys.items() if not k.startswith("decoder.")}
    assert len(reference_keys) == 239


def test_decoder_key_shapes_match_official(reference_keys):
    decoder = SemanticCodec.decoder_key_shapes(SemanticCodecConfig())
    assert decoder == {k: v for k, v in reference_keys.items() if k.startswith("decoder.")}


def test_config_from_dict():
    cfg = SemanticCodecConfig.from_dict({"codebook_size": 64, "vocos_dim": 8, "something_else": 3})
    assert cfg.codebook_size == 64 and cfg.vocos_dim == 8 and cfg.hidden_size == 1024
    assert SemanticCodecConfig.from_dict(None) == SemanticCodecConfig()
    with pytest.raises(ValueError, match="num_quantizers"):
        SemanticCodecConfig.from_dict({"num_quantizers": 2})


def test_init_is_deterministic_under_seed():
    torch.manual_seed(3)
    a = SemanticCodec(TINY).state_dict()
    torch.manual_seed(3)
    b = SemanticCodec(TINY).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_round_trip_through_file(tmp_path):
    codec = random_codec()
    path = tmp_path / "model.safetensors"
    save_file(full_state_dict(codec, TINY), str(path))
    loaded = SemanticCodec.from_file(path, TINY)
    assert not loaded.training
    for k, v in codec.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(2, 50, TINY.hidden_size)
    first = loaded.quantize(x, [50, 37])
    again = loaded.quantize(x, [50, 37])
    original = codec.quantize(x, [50, 37])
    assert [c.shape for c in first] == [(50,), (37,)]
    assert all(c.dtype == torch.long for c in first)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(first, again, original))
    assert len(torch.cat(first).unique()) > 5  # the test data actually exercises the codebook


def test_load_errors_name_key_and_file(tmp_path):
    codec = random_codec()
    state = full_state_dict(codec, TINY)

    missing = dict(state)
    del missing["encoder.0.convnext.3.gamma"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(KeyError, match=r"encoder\.0\.convnext\.3\.gamma.*missing\.safetensors"):
        SemanticCodec.from_file(tmp_path / "missing.safetensors", TINY)

    wrong = dict(state)
    wrong["quantizer.quantizers.0.codebook.weight"] = torch.randn(65, 4)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError, match=r"quantizer\.quantizers\.0\.codebook\.weight.*wrong\.safetensors"):
        SemanticCodec.from_file(tmp_path / "wrong.safetensors", TINY)

    extra = dict(state)
    extra["encoder.0.adanorm.weight"] = torch.randn(3)
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ValueError, match=r"encoder\.0\.adanorm\.weight.*extra\.safetensors"):
        SemanticCodec.from_file(tmp_path / "extra.safetensors", TINY)

    # decoder keys are skipped, not checked: a file without them loads
    encoder_only = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    save_file(encoder_only, str(tmp_path / "encoder_only.safetensors"))
    SemanticCodec.from_file(tmp_path / "encoder_only.safetensors", TINY)


def test_batched_quantize_equals_single():
    codec = random_codec(seed=1)
    frames = [25, 1000, 1]
    g = torch.Generator().manual_seed(0)
    # Padding filled with large junk, like the standardised outputs of padding frames.
    x = 3.0 * torch.randn(len(frames), max(frames), TINY.hidden_size, generator=g)
    batched = codec.quantize(x, frames)
    with torch.no_grad():
        encoded = codec.encode(x, frames)
    for i, t in enumerate(frames):
        single = codec.quantize(x[i : i + 1, :t], [t])[0]
        assert batched[i].shape == (t,)
        assert torch.equal(batched[i], single), f"item {i}"
        with torch.no_grad():
            torch.testing.assert_close(encoded[i, :t], codec.encode(x[i : i + 1, :t])[0], rtol=0, atol=1e-5)
    assert len(batched[1].unique()) > 5
    # The masking is what makes this hold: without it the padding leaks into item 0's last frames.
    with torch.no_grad():
        leaky = codec.encode(x)[0, :25]
        alone = codec.encode(x[:1, :25])[0]
    assert (leaky - alone).abs().amax() > 1e-2


def test_weight_norm_formula():
    torch.manual_seed(0)
    ours = WeightNormConv1d(6, 3)
    with torch.no_grad():
        ours.weight_g.copy_(torch.rand(3, 1, 1) + 0.5)  # g != ||v||, so the formula matters
    ref = torch.nn.Conv1d(6, 3, kernel_size=1)
    with torch.no_grad():
        ref.weight.copy_(ours.weight_v)
        ref.bias.copy_(ours.bias)
    ref = torch.nn.utils.parametrizations.weight_norm(ref, dim=0)
    with torch.no_grad():
        ref.parametrizations.weight.original0.copy_(ours.weight_g)
        ref.parametrizations.weight.original1.copy_(ours.weight_v)
    torch.testing.assert_close(ours.weight(), ref.weight, rtol=1e-6, atol=0)
    by_hand = ours.weight_v[1] * ours.weight_g[1, 0, 0] / ours.weight_v[1].pow(2).sum().sqrt()
    torch.testing.assert_close(ours.weight()[1], by_hand, rtol=1e-6, atol=0)
    x = torch.randn(2, 6, 5)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-6, atol=1e-6)


def test_distances_and_codes_in_float32_under_bf16():
    codec = random_codec(seed=2)
    x = torch.randn(2, 30, TINY.hidden_size)
    codec_bf16 = random_codec(seed=2).to(torch.bfloat16)
    latent = codec_bf16.vq.project(codec_bf16.encode(x))
    assert latent.dtype == torch.float32
    d = codec_bf16.vq.distances(latent.flatten(0, 1))
    assert d.dtype == torch.float32 and d.shape == (60, TINY.codebook_size)
    codes = codec_bf16.quantize(x, [30, 12])
    assert [c.dtype for c in codes] == [torch.long, torch.long]
    # reduced precision changes only a minority of the codes
    ref = codec.quantize(x, [30, 12])
    agree = torch.cat([a == b for a, b in zip(codes, ref)]).float().mean()
    assert agree > 0.5
    # codes are argmin of the distances, i.e. argmax cosine
    e = torch.nn.functional.normalize(codec.vq.project(codec.encode(x[:1]).squeeze(0).detach()), dim=1)
    c = torch.nn.functional.normalize(codec.vq.codebook.weight.detach(), dim=1)
    assert torch.equal((e @ c.t()).argmax(1), ref[0])


def contract_quantize(state, config, x):
    """Contract §6 transcribed op by op for one unpadded item x [T,H] -> (latent [T,d], codes [T])."""
    F = torch.nn.functional
    s = {k: v.float() for k, v in state.items()}
    C = (config.vocos_dim,)

    def conv(h, p, **kw):  # h [T,C_in] -> [T,C_out], zero padding 3 at this item's own edges
        return F.conv1d(h.t()[None], s[p + "weight"], s[p + "bias"], padding=3, **kw)[0].t()

    def norm(h, p):
        return F.layer_norm(h, C, s[p + "weight"], s[p + "bias"], 1e-6)

    h = norm(conv(x, "encoder.0.embed."), "encoder.0.norm.")  # [T,C]
    for i in range(config.vocos_num_layers):
        p = f"encoder.0.convnext.{i}."
        y = norm(conv(h, p + "dwconv.", groups=config.vocos_dim), p + "norm.")
        y = F.gelu(F.linear(y, s[p + "pwconv1.weight"], s[p + "pwconv1.bias"]))
        y = F.linear(y, s[p + "pwconv2.weight"], s[p + "pwconv2.bias"])
        h = h + s[p + "gamma"] * y
    h = norm(h, "encoder.0.final_layer_norm.")
    h = F.linear(h, s["encoder.1.weight"], s["encoder.1.bias"])
    q = "quantizer.quantizers.0."
    v, g = s[q + "in_project.weight_v"], s[q + "in_project.weight_g"]
    w = torch._weight_norm(v, g, 0)
    latent = F.conv1d(h.t()[None], w, s[q + "in_project.bias"])[0].t()
    e = F.normalize(latent, dim=1)
    c = F.normalize(s[q + "codebook.weight"], dim=1)
    d = e.pow(2).sum(1, keepdim=True) - 2 * e @ c.t() + c.pow(2).sum(1, keepdim=True).t()
    return latent, (-d).max(1)[1]


def test_quantize_follows_the_contract_math():
    codec = random_codec(seed=4)
    x = torch.randn(1, 120, TINY.hidden_size)
    ours = codec.quantize(x, [120])[0]
    latent, codes = contract_quantize(codec.state_dict(), TINY, x[0])
    assert torch.equal(ours, codes)
    with torch.no_grad():
        torch.testing.assert_close(codec.vq.project(codec.encode(x)[0]), latent, rtol=0, atol=1e-5)
    assert len(ours.unique()) > 5
