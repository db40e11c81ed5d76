"""Fbank front end against transformers' SeamlessM4TFeatureExtractor (contract §5.1)."""

import numpy as np
import pytest
import torch
from transformers import SeamlessM4TFeatureExtractor

from preprocess.audio import load_audio, to_16k
from preprocess.frontend import (
    MEL_FILTERS,
    POVEY_WINDOW,
    DeviceFbank,
    collate,
    fbank,
    frame_counts,
    stack_frames,
)


@pytest.fixture(scope="module")
def extractor():
    # the hub preprocessor_config.json values (contract §5.1)
    return SeamlessM4TFeatureExtractor(
        feature_size=80, num_mel_bins=80, sampling_rate=16000, stride=2, padding_value=1.0
    )


def hf_call(extractor, waves):
    """Exactly the reference call: list of 1-D float32 arrays, sampling_rate, padding=True, pt."""
    out = extractor(waves, sampling_rate=16000, padding=True, return_tensors="pt")
    return out["input_features"], out["attention_mask"]


def ours(waves):
    stacked, lengths = [], []
    for w in waves:
        stacked.append(stack_frames(fbank(w)))
        lengths.append(frame_counts(len(w))[2])
    return collate(stacked, lengths)


@pytest.fixture(scope="module")
def arctic16k(arctic_dir):
    paths = sorted(arctic_dir.glob("*.wav"))
    assert len(paths) == 2, "the arctic recordings are missing from tests/data"
    return [to_16k(*load_audio(p)) for p in paths]


def noise(n, seed, scale=0.1):
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def test_constants_match_extractor(extractor):
    np.testing.assert_allclose(MEL_FILTERS, extractor.mel_filters, rtol=0, atol=1e-12)
    np.testing.assert_allclose(POVEY_WINDOW, extractor.window, rtol=0, atol=1e-15)
    assert MEL_FILTERS.shape == (257, 80)


@pytest.mark.parametrize(
    "n16,expected",
    [(160_000, (998, 499, 499)), (160_160, (999, 500, 499)), (56_320, (350, 175, 175)), (399, (0, 0, 0)),
     (400, (1, 1, 0)), (560, (2, 1, 1))],
)
def test_frame_counts(n16, expected):
    assert frame_counts(n16) == expected


def test_arctic_matches_extractor(extractor, arctic16k):
    for wave in arctic16k:
        ref_feats, ref_mask = hf_call(extractor, [wave])
        feats, frames, lengths = ours([wave])
        f, t, l = frame_counts(len(wave))
        fb = fbank(wave)
        assert fb.shape == (f, 80) and fb.dtype == np.float32
        assert feats.shape == ref_feats.shape == (1, t, 160)
        assert frames.tolist() == [t] and lengths.tolist() == [l]
        assert int(ref_mask.sum()) == l
        torch.testing.assert_close(feats, ref_feats, rtol=0, atol=1e-5)


def test_batch_of_two_with_odd_frame_count(extractor, arctic16k):
    short = noise(16000 * 1 + 160 * 3, seed=1)  # F = 1 + (16480 - 400) // 160 = 101, odd
    long = arctic16k[0]
    assert frame_counts(len(short))[0] % 2 == 1
    batch = [short, long]
    ref_feats, ref_mask = hf_call(extractor, batch)
    feats, frames, lengths = ours(batch)
    assert feats.shape == ref_feats.shape
    torch.testing.assert_close(feats, ref_feats, rtol=0, atol=1e-5)
    mask = (torch.arange(feats.shape[1])[None] < lengths[:, None]).to(ref_mask.dtype)
    assert torch.equal(mask, ref_mask)
    # odd F: the last stacked frame of the short item is [real frame | padding 1.0]
    t_short = frames[0]
    assert torch.all(feats[0, t_short - 1, 80:] == 1.0) and not torch.all(feats[0, t_short - 1, :80] == 1.0)
    assert torch.all(feats[0, t_short:] == 1.0)


def test_batch_with_odd_maximum(extractor):
    # the batch maximum F is odd: the extractor pads it to even (pad_to_multiple_of=2)
    a, b = noise(16000 + 160 * 3, seed=2), noise(8000, seed=3)  # F = 101 and 48
    ref_feats, ref_mask = hf_call(extractor, [a, b])
    feats, frames, lengths = ours([a, b])
    assert feats.shape == ref_feats.shape == (2, 51, 160)
    torch.testing.assert_close(feats, ref_feats, rtol=0, atol=1e-5)
    assert torch.equal((torch.arange(51)[None] < lengths[:, None]).to(ref_mask.dtype), ref_mask)


def test_too_short_raises():
    with pytest.raises(ValueError, match="too short"):
        fbank(np.zeros(399, dtype=np.float32))
    with pytest.raises(ValueError, match="too short"):
        fbank(np.zeros(559, dtype=np.float32))  # a single frame: ddof=1 variance undefined
    assert fbank(noise(560, seed=4)).shape == (2, 80)
    with pytest.raises(ValueError, match="too short"):
        DeviceFbank("cpu")([torch.zeros(1000), torch.zeros(300)])


def test_stack_frames_and_collate_shapes():
    fb = np.arange(5 * 80, dtype=np.float32).reshape(5, 80)
    st = stack_frames(fb)
    assert st.shape == (3, 160)
    np.testing.assert_array_equal(st[1], np.concatenate([fb[2], fb[3]]))
    np.testing.assert_array_equal(st[2, 80:], np.ones(80))
    feats, frames, lengths = collate([st, stack_frames(fb[:2])], [2, 1])
    assert feats.shape == (2, 3, 160) and feats.dtype == torch.float32
    assert frames.tolist() == [3, 1] and lengths.tolist() == [2, 1]
    assert frames.dtype == lengths.dtype == torch.long
    assert torch.all(feats[1, 1:] == 1.0)
    with pytest.raises(ValueError, match="inconsistent"):
        collate([st], [1])
    with pytest.raises(ValueError):
        collate([st], [2, 2])


def test_device_fbank_matches_numpy_path(arctic16k):
    # float64 spectrum (default): measured max |diff| ~1e-6 on speech and noise (normalisation
    # statistics are summed in a different order than numpy's float32 ones)
    waves = [arctic16k[0], noise(16480, seed=5), arctic16k[-1], noise(8000, seed=6)]
    ref = ours(waves)
    got = DeviceFbank("cpu")([torch.from_numpy(w) for w in waves])
    assert got[0].shape == ref[0].shape and got[0].dtype == torch.float32
    assert torch.equal(got[1], ref[1]) and torch.equal(got[2], ref[2])
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=2e-5)
    # batch independence: an item alone gives the same features as inside the batch
    alone = DeviceFbank("cpu")([torch.from_numpy(waves[1])])[0][0]
    torch.testing.assert_close(got[0][1, : alone.shape[0]], alone, rtol=0, atol=1e-6)


def test_device_fbank_float32_compute_tolerance(arctic16k):
    # float32 spectrum: measured max |diff| ~1e-4 on speech (low-energy bins), mean ~1e-6
    waves = [arctic16k[0], noise(16480, seed=7)]
    ref = ours(waves)[0]
    got = DeviceFbank("cpu", compute_dtype=torch.float32)([torch.from_numpy(w) for w in waves])[0]
    diff = (got - ref).abs()
    assert diff.max() < 5e-4 and diff.mean() < 1e-5


def test_device_fbank_output_dtype():
    feats, frames, lengths = DeviceFbank("cpu", dtype=torch.bfloat16)([torch.from_numpy(noise(4000, seed=8))])
    assert feats.dtype == torch.bfloat16 and frames.tolist() == [12] and lengths.tolist() == [11]


def test_fbank_bits_do_not_depend_on_blas_threads():
    """The mel product is the one BLAS call; CPU workers may run it on one BLAS thread (much less
    CPU time on a shared machine) only because the result is the same to the bit."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import hashlib, numpy as np; from preprocess.frontend import fbank;"
            "w = (np.random.default_rng(3).standard_normal(16000 * 7 + 123) * 0.2).astype(np.float32);"
            "print(hashlib.sha256(fbank(w).tobytes()).hexdigest())")
    digests = set()
    for threads in ("1", "2", "4"):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], env=env,
                             capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1
