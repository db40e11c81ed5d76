"""Decoding, mono mix, torchaudio-exact resampling and the 16 kHz chain (contract §4)."""

import math
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from preprocess.audio import AudioError, load_audio, probe_duration, resample, resampled_length, to_16k

SOURCE_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)
RATE_PAIRS = [(s, t) for s in SOURCE_RATES for t in (24000, 16000)] + [(24000, 16000)]


def direct_sum_resample(x: np.ndarray, orig: int, new: int, width_zeros: int = 6, rolloff: float = 0.99):
    """torchaudio's resampling formula evaluated term by term in float64, on unreduced rates:
    y[j] = sum_i x[i] * (base/orig) * sinc(t) * cos(pi t / 12)^2, t = base (i/orig - j/new), |t| <= 6."""
    base = min(orig, new) * rolloff
    out_len = math.ceil(len(x) * new / orig)
    t = base * (np.arange(len(x))[None, :] / orig - np.arange(out_len)[:, None] / new)  # [out, in]
    taps = np.where(np.abs(t) <= width_zeros, np.sinc(t) * np.cos(np.pi * t / (2 * width_zeros)) ** 2, 0.0)
    return (taps * (base / orig)) @ x.astype(np.float64)


@pytest.mark.parametrize("orig,new", RATE_PAIRS)
def test_resample_matches_direct_summation(orig, new):
    rng = np.random.default_rng(orig + new)
    g = math.gcd(orig, new)
    # float32 waveforms get a float32 kernel, as in torchaudio; its phase t = base * (k/orig - p/new)
    # carries float32 rounding that grows with the reduced rates: up to ~2e-5 for 441 -> 320/640
    # (11.025/22.05 kHz -> 16 kHz, direct mode only), below 1e-5 for every other pair
    atol32 = 4e-5 if orig // g >= 441 else 1e-5
    for n in (501, 320):  # odd and even lengths
        x = (rng.standard_normal(n) * 0.3).astype(np.float32)
        y = resample(torch.from_numpy(x), orig, new)
        assert y.dtype == torch.float32
        assert y.shape == (math.ceil(n * new / orig),)
        if orig == new:
            assert torch.equal(y, torch.from_numpy(x))
            continue
        expected = direct_sum_resample(x, orig, new)
        np.testing.assert_allclose(y.numpy(), expected, rtol=0, atol=atol32)
        # in float64 the kernel is the formula itself: agreement is at rounding level
        y64 = resample(torch.from_numpy(x.astype(np.float64)), orig, new)
        np.testing.assert_allclose(y64.numpy(), expected, rtol=0, atol=1e-10)


def test_resample_keeps_leading_dims_and_float64():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((2, 3, 777)))
    y = resample(x, 44100, 24000)
    assert y.shape == (2, 3, math.ceil(777 * 24000 / 44100)) and y.dtype == torch.float64
    np.testing.assert_allclose(y[1, 2].numpy(), direct_sum_resample(x[1, 2].numpy(), 44100, 24000), atol=1e-12)
    for i in range(2):
        for j in range(3):
            assert torch.equal(y[i, j], resample(x[i, j], 44100, 24000))


def test_resample_length_rounds_quotient_to_float32_like_torchaudio():
    # torchaudio cuts to ceil(torch.as_tensor(new*N/orig)), a float32 quotient: for 44.1k -> 24k
    # (147 -> 80) with 80*N = 147*k + 1 and k >= 2**17, k + 1/147 rounds down to k.
    n = next(n for n in range(2**17 * 147 // 80, 2**18 * 147 // 80) if (80 * n) % 147 == 1)
    exact_ceil = math.ceil(n * 80 / 147)
    assert resampled_length(n, 44100, 24000) == exact_ceil - 1
    x = torch.zeros(n)
    assert resample(x, 44100, 24000).shape[-1] == exact_ceil - 1
    # neighbours with a larger fraction keep the plain ceil
    assert resampled_length(n + 1, 44100, 24000) == math.ceil((n + 1) * 80 / 147)


def test_resample_rejects_bad_input():
    with pytest.raises(ValueError):
        resample(torch.zeros(10), 0, 16000)
    with pytest.raises(TypeError):
        resample(torch.zeros(10, dtype=torch.int16), 8000, 16000)


def test_to_16k_reference_and_direct_lengths():
    rng = np.random.default_rng(2)
    odd16 = (rng.standard_normal(16001) * 0.1).astype(np.float32)
    even16 = odd16[:16000].copy()
    # 16k -> 24k -> 16k: odd lengths gain one sample, even lengths do not
    assert to_16k(odd16, 16000).shape == (16002,)
    assert to_16k(even16, 16000).shape == (16000,)
    # the round trip is a real filter, not an identity
    assert np.abs(to_16k(even16, 16000) - even16).max() > 1e-3
    # direct leaves 16 kHz alone
    np.testing.assert_array_equal(to_16k(odd16, 16000, mode="direct"), odd16)
    # 24 kHz sources take a single step in both modes
    x24 = (rng.standard_normal(24001) * 0.1).astype(np.float32)
    np.testing.assert_array_equal(to_16k(x24, 24000), to_16k(x24, 24000, mode="direct"))
    assert to_16k(x24, 24000).dtype == np.float32
    with pytest.raises(ValueError, match="mode"):
        to_16k(x24, 24000, mode="soxr")


@pytest.mark.parametrize(
    "sr,extra_fraction",
    [(8000, 0.0), (11025, 0.17), (16000, 0.5), (22050, 0.17), (32000, 0.25), (44100, 0.17), (48000, 0.17)],
)
def test_reference_chain_extra_sample_fraction(sr, extra_fraction):
    # contract §4 "Length": the two-step chain gives one extra sample for about 17 % of lengths
    # (22.05/44.1/48 kHz), 25 % (32 kHz) and every odd-length 16 kHz file; never fewer.
    lengths = range(200_000, 200_000 + 147 * 48)
    extra = np.array(
        [
            resampled_length(resampled_length(n, sr, 24000), 24000, 16000) - resampled_length(n, sr, 16000)
            for n in lengths
        ]
    )
    assert set(np.unique(extra)) <= {0, 1}
    assert abs(extra.mean() - extra_fraction) < 0.01


def test_to_16k_lengths_match_resampled_length_for_real_signal():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(44100 + 37) * 0.1).astype(np.float32)
    n24 = resampled_length(len(x), 44100, 24000)
    assert to_16k(x, 44100).shape == (resampled_length(n24, 24000, 16000),)
    assert to_16k(x, 44100, mode="direct").shape == (resampled_length(len(x), 44100, 16000),)


def test_load_real_wav(arctic_dir):
    path = arctic_dir / "arctic_a0007.wav"
    wave, sr = load_audio(path)
    pcm, _ = sf.read(path, dtype="int16")
    assert sr == 16000 and wave.dtype == np.float32 and wave.shape == pcm.shape == (64000,)
    np.testing.assert_array_equal(wave, pcm.astype(np.float32) / 32768)
    assert probe_duration(path) == pytest.approx(4.0)


def test_load_stereo_flac_is_channel_mean(tmp_path):
    rng = np.random.default_rng(4)
    pcm = rng.integers(-20000, 20000, size=(2000, 2), dtype=np.int16)
    path = tmp_path / "stereo.flac"
    sf.write(path, pcm, 22050, subtype="PCM_16")
    wave, sr = load_audio(path)
    assert sr == 22050 and wave.shape == (2000,) and wave.dtype == np.float32
    channels = pcm.astype(np.float32) / 32768
    np.testing.assert_array_equal(wave, (channels[:, 0] + channels[:, 1]) / 2)
    assert probe_duration(path) == pytest.approx(2000 / 22050)


@pytest.mark.parametrize("fmt,subtype", [("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")])
def test_load_lossy_formats(tmp_path, fmt, subtype):
    sr = 16000
    t = np.arange(sr) / sr
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(path, np.stack([tone, tone], axis=1), sr, format=fmt, subtype=subtype)
    wave, got_sr = load_audio(path)
    assert got_sr == sr and wave.ndim == 1 and wave.dtype == np.float32
    assert abs(len(wave) - len(tone)) <= 1152  # at most one MP3 frame of encoder delay/padding
    n = min(len(wave), len(tone))
    # lossy but the same tone: strongly correlated at zero lag (gapless decode)
    assert np.corrcoef(wave[:n], tone[:n])[0, 1] > 0.95


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="nope.wav.*not found"):
        load_audio(missing)
    with pytest.raises(AudioError, match="nope.wav"):
        probe_duration(missing)

    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + os.urandom(200))
    with pytest.raises(AudioError, match="corrupt.wav.*cannot decode"):
        load_audio(corrupt)
    with pytest.raises(AudioError, match="corrupt.wav"):
        probe_duration(corrupt)

    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav.*empty"):
        load_audio(empty)

    nan = tmp_path / "nan.wav"
    samples = np.zeros(100, dtype=np.float32)
    samples[50] = np.nan
    sf.write(nan, samples, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav.*NaN"):
        load_audio(nan)

    with pytest.raises(AudioError, match="not a regular file"):
        load_audio(tmp_path)


def test_decode_and_mix_to_mono_make_load_audio(tmp_path):
    """load_audio = mix_to_mono(decode(path)); the parts are timed separately by the CPU-stage bench."""
    from preprocess.audio import decode, mix_to_mono

    rng = np.random.default_rng(7)
    stereo = (rng.standard_normal((4410, 2)) * 0.2).astype(np.float32)
    path = tmp_path / "s.wav"
    sf.write(path, stereo, 44100, subtype="FLOAT")
    data, sr = decode(path)
    assert data.shape == (4410, 2) and data.dtype == np.float32 and sr == 44100
    mono = mix_to_mono(data)
    wave, sr2 = load_audio(path)
    assert sr2 == sr and np.array_equal(mono, wave)
    assert np.array_equal(mono, torch.from_numpy(np.ascontiguousarray(stereo.T)).mean(dim=0).numpy())
    one = mix_to_mono(data[:, :1])
    assert one.flags["C_CONTIGUOUS"] and np.array_equal(one, stereo[:, 0])
