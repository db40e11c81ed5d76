"""Audio decoding, mono mixing and resampling to 16 kHz (contract §4).

The reference loads with torchaudio, mixes to mono with the mean over channels, resamples
native -> 24 kHz, then 24 kHz -> 16 kHz, both with `torchaudio.functional.resample` defaults.
Semantic codes are very sensitive to the resampling filter, so `resample` below reproduces
torchaudio's windowed-sinc resampler operation for operation (torchaudio is not a dependency):

    gcd-reduce the rates to (orig, new); base = min(orig, new) * rolloff
    width = ceil(lowpass_filter_width * orig / base)
    kernel[p, k] = (base / orig) * sinc(pi * t) * cos(pi * t / (2 * lowpass_filter_width)) ** 2
        t = clamp(base * ((k - width) / orig - p / new), -lowpass_filter_width, lowpass_filter_width)
        p in [0, new), k in [0, 2 * width + orig)
    y = conv1d(pad(x, (width, width + orig)), kernel, stride=orig), phases interleaved,
        cut to ceil(float32(new * N / orig)) samples

Facts checked in torchaudio/functional/functional.py (`_get_sinc_resample_kernel`,
`_apply_sinc_resample_kernel`):
- `functional.resample` passes the waveform's dtype to the kernel builder, so for float32 audio
  the kernel is computed in float32 throughout (the float64-then-cast path only applies to
  `transforms.Resample` built without a dtype). We do the same.
- The output length is `ceil(torch.as_tensor(new * N / orig))`: the quotient is rounded to float32
  before the ceil. For orig = 147 after reduction (11.025/22.05/44.1 kHz sources) and outputs of
  2**17 samples or more, a quotient just above an integer rounds down to it and the output is one
  sample shorter than the exact ceil(N * new / orig). We reproduce that too.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99
REFERENCE_INTERMEDIATE_SR = 24000
TARGET_SR = 16000
MODES = ("reference", "direct")


class AudioError(Exception):
    """A file that cannot become a waveform. The message names the file and the cause."""


def decode(path) -> tuple[np.ndarray, int]:
    """Decode `path` (wav/flac/ogg/mp3, whatever libsndfile reads) -> (float32 [N, C], native rate)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(f"{path}: file not found")
    if not os.path.isfile(path):
        raise AudioError(f"{path}: not a regular file")
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)  # [N, C]
    except (RuntimeError, OSError, ValueError, TypeError) as e:  # LibsndfileError is a RuntimeError
        raise AudioError(f"{path}: cannot decode audio ({e})") from e
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: audio contains NaN or Inf samples")
    return data, int(sr)


def mix_to_mono(data: np.ndarray) -> np.ndarray:
    """float32 [N, C] -> float32 mono [N]: the channel mean, exactly as the reference computes it."""
    if data.shape[1] == 1:
        return np.ascontiguousarray(data[:, 0])
    # the reference averages a channels-first float32 tensor; doing the same reduction on the
    # same layout keeps multi-channel mixes bit-identical to it
    channels_first = torch.from_numpy(np.ascontiguousarray(data.T))  # [C, N]
    return channels_first.mean(dim=0).numpy()


def load_audio(path) -> tuple[np.ndarray, int]:
    """Decode `path` -> (float32 mono [N], native rate): `decode` then `mix_to_mono`."""
    data, sr = decode(path)
    return mix_to_mono(data), sr


def probe_duration(path) -> float:
    """Duration in seconds from the file header only (no decode)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(f"{path}: file not found")
    try:
        info = sf.info(path)
    except (RuntimeError, OSError, ValueError, TypeError) as e:
        raise AudioError(f"{path}: cannot read audio header ({e})") from e
    if info.samplerate <= 0:
        raise AudioError(f"{path}: header has no valid sample rate")
    return info.frames / info.samplerate


@functools.lru_cache(maxsize=64)
def _sinc_kernel(orig: int, new: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, int]:
    """Hann-windowed sinc kernel [new, 1, 2*width + orig] for gcd-reduced rates, and width.

    Same operations in the same order and dtype as torchaudio, so float32 kernels agree bitwise.
    """
    base = min(orig, new) * ROLLOFF
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig / base)
    taps = torch.arange(-width, width + orig, dtype=dtype, device=device)[None, None] / orig  # [1,1,K]
    phases = torch.arange(0, -new, -1, dtype=dtype, device=device)[:, None, None] / new  # [new,1,1]
    t = phases + taps  # [new,1,K], in input-sample periods
    t *= base
    t = t.clamp_(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    window = torch.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
    t *= math.pi
    kernel = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernel *= window * (base / orig)
    return kernel, width


def resampled_length(num_samples: int, orig_sr: int, new_sr: int) -> int:
    """torchaudio's output length: ceil of new*N/orig after rounding the quotient to float32."""
    if orig_sr == new_sr:
        return num_samples
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    return math.ceil(float(np.float32(new * num_samples / orig)))


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """[..., N] -> [..., resampled_length(N)]; torchaudio.functional.resample with its defaults.

    The reference resamples on the CPU; on CUDA, cuDNN may run the float32 conv1d in TF32
    (torch.backends.cudnn.allow_tf32), which is far from exact.
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if not wave.is_floating_point():
        raise TypeError(f"resample needs a floating point waveform, got {wave.dtype}")
    if orig_sr == new_sr:
        return wave
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    kernel, width = _sinc_kernel(orig, new, wave.dtype, wave.device)

    shape = wave.shape
    x = wave.reshape(-1, shape[-1])  # [B, N]
    num_samples = x.shape[-1]
    x = F.pad(x, (width, width + orig))
    # one output phase per kernel row; the kernel repeats every `orig` input samples, hence the stride
    y = F.conv1d(x[:, None], kernel, stride=orig)  # [B, new, blocks]
    y = y.transpose(1, 2).reshape(x.shape[0], -1)  # [B, blocks*new], phases interleaved
    y = y[:, : resampled_length(num_samples, orig, new)]
    return y.reshape(shape[:-1] + y.shape[-1:])


def to_16k(wave: np.ndarray, sr: int, mode: str = "reference") -> np.ndarray:
    """Mono float32 [N] at `sr` -> float32 [N16] at 16 kHz.

    "reference": native -> 24 kHz (skipped only for 24 kHz input) -> 16 kHz, as the reference does,
                 so 16 kHz sources make the 16 -> 24 -> 16 round trip.
    "direct":    one resample native -> 16 kHz; 16 kHz input is returned unchanged.
    """
    if mode not in MODES:
        raise ValueError(f"unknown resampling mode {mode!r}; expected one of {MODES}")
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None]  # [1, N], as torchaudio loads
    if mode == "reference":
        x = resample(x, sr, REFERENCE_INTERMEDIATE_SR)
        x = resample(x, REFERENCE_INTERMEDIATE_SR, TARGET_SR)
    else:
        x = resample(x, sr, TARGET_SR)
    return x[0].numpy()
