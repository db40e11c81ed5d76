"""Fbank front end compatible with transformers' SeamlessM4TFeatureExtractor (contract §5.1).

Per utterance (16 kHz float32 waveform, N16 samples):
    x = wave * 2**15, framed 400/160 without centring -> F = 1 + (N16 - 400) // 160 frames
    per frame (float64): subtract the frame mean; pre-emphasis 0.97 (first sample * 0.03);
        Povey window (symmetric Hann ** 0.85); zero-pad to 512; rfft -> 257 bins
    the reference stores the spectrum as complex64 before |X|**2 -- we round the same way
    mel: Kaldi-scale triangles [257, 80] (20..8000 Hz, triangles in the mel domain, no area norm)
    log(max(E, 1.1920929e-07)) -> float32, then per-bin (x - mean) / sqrt(var_ddof1 + 1e-7)
      over the utterance's own F frames (before any padding, so batch-independent)
Stacking pairs frames 2j and 2j+1 into one 160-dim frame at 50 Hz: T = ceil(F/2) stacked frames,
of which L = floor(F/2) are valid; with odd F the last stacked frame is half padding (1.0).

Batching contract: `collate(stacked, lengths)` takes the L of every item next to its stacked
array, because L cannot be recovered from T alone (T = 5 may be F = 9 or F = 10).
`frame_counts(N16)` gives (F, T, L) from the sample count; `stack_frames` returns the array only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

SAMPLE_RATE = 16000
FRAME_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
FFT_LENGTH = 512
NUM_FREQ_BINS = FFT_LENGTH // 2 + 1  # 257
NUM_MEL_BINS = 80
MEL_LOW_HZ = 20.0
MEL_HIGH_HZ = SAMPLE_RATE / 2
PREEMPHASIS = 0.97
MEL_FLOOR = 1.192092955078125e-07  # float32 machine epsilon
NORM_EPS = 1e-7
STRIDE = 2
STACKED_DIM = NUM_MEL_BINS * STRIDE  # 160
PADDING_VALUE = 1.0  # hub preprocessor_config.json; masked positions never reach the outputs
MIN_SAMPLES = FRAME_LENGTH + HOP_LENGTH  # 2 frames: the ddof=1 variance needs at least two


def _kaldi_mel(hz):
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_filters() -> np.ndarray:
    """[257, 80] float64 triangles on the Kaldi mel scale, formed in the mel domain."""
    edges = np.linspace(_kaldi_mel(MEL_LOW_HZ), _kaldi_mel(MEL_HIGH_HZ), NUM_MEL_BINS + 2)  # [82]
    bin_mel = _kaldi_mel(SAMPLE_RATE / FFT_LENGTH * np.arange(NUM_FREQ_BINS))[:, None]  # [257,1]
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]  # [80] each
    rising = (bin_mel - left) / (centre - left)
    falling = (right - bin_mel) / (right - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


MEL_FILTERS = _mel_filters()  # [257, 80]
POVEY_WINDOW = np.power(np.hanning(FRAME_LENGTH), 0.85)  # [400], symmetric


def _num_frames(num_samples: int) -> int:
    return 0 if num_samples < FRAME_LENGTH else 1 + (num_samples - FRAME_LENGTH) // HOP_LENGTH


def frame_counts(num_samples_16k: int) -> tuple[int, int, int]:
    """(F, T, L): fbank frames, stacked frames ceil(F/2), valid stacked frames floor(F/2)."""
    f = _num_frames(int(num_samples_16k))
    return f, (f + 1) // 2, f // 2


def _check_length(num_samples: int) -> int:
    f = _num_frames(num_samples)
    if f < 2:
        raise ValueError(
            f"audio too short for fbank: {num_samples} samples at 16 kHz give {f} frame(s); "
            f"at least {MIN_SAMPLES} samples (2 frames of 400, hop 160) are needed "
            "(the reference raises below 240 samples, returns no frames below 400 and "
            "NaN features for a single frame)"
        )
    return f


def fbank(wave16k: np.ndarray) -> np.ndarray:
    """16 kHz mono waveform [N16] -> normalised log-mel [F, 80] float32."""
    wave = np.asarray(wave16k, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"fbank expects a 1-D waveform, got shape {wave.shape}")
    num_frames = _check_length(wave.shape[0])
    x = (wave * 2**15).astype(np.float64)  # Kaldi works on 16-bit integer amplitudes
    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME_LENGTH)[::HOP_LENGTH][:num_frames]  # [F,400]
    frames = frames - frames.mean(axis=1, keepdims=True)
    emphasised = np.empty_like(frames)
    emphasised[:, 1:] = frames[:, 1:] - PREEMPHASIS * frames[:, :-1]
    emphasised[:, 0] = frames[:, 0] * (1 - PREEMPHASIS)
    emphasised *= POVEY_WINDOW
    spectrum = np.fft.rfft(emphasised, n=FFT_LENGTH, axis=-1).astype(np.complex64)  # [F,257]
    power = np.abs(spectrum, dtype=np.float64) ** 2
    # same layouts as the reference ([80,F] product, float32 log-mel read through a transpose),
    # so the float32 statistics below are summed in the same order
    mel = np.maximum(MEL_FLOOR, np.dot(MEL_FILTERS.T, power.T))  # [80,F]
    logmel = np.log(mel).astype(np.float32).T  # [F,80]
    mean = logmel.mean(0)[None]
    std = np.sqrt(logmel.var(0, ddof=1)[None] + NORM_EPS)
    return np.ascontiguousarray((logmel - mean) / std)


def stack_frames(fb: np.ndarray) -> np.ndarray:
    """[F, 80] -> [ceil(F/2), 160]: frame j = [fb[2j] | fb[2j+1]]; odd F padded with 1.0 first."""
    if fb.ndim != 2 or fb.shape[1] != NUM_MEL_BINS:
        raise ValueError(f"stack_frames expects [F, {NUM_MEL_BINS}], got {fb.shape}")
    if fb.shape[0] % STRIDE:
        fb = np.concatenate([fb, np.full((1, NUM_MEL_BINS), PADDING_VALUE, dtype=fb.dtype)])
    return fb.reshape(-1, STACKED_DIM)


def collate(
    stacked: list[np.ndarray], lengths: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stacked features [T_i, 160] and their valid lengths L_i (= floor(F_i/2), see frame_counts)
    -> feats [B, Tmax, 160] float32 padded with 1.0, frames T [B] long, lengths L [B] long."""
    if len(stacked) != len(lengths):
        raise ValueError(f"collate got {len(stacked)} feature arrays but {len(lengths)} lengths")
    if not stacked:
        raise ValueError("collate got an empty batch")
    frames = [s.shape[0] for s in stacked]
    for s, t, l in zip(stacked, frames, lengths):
        if s.ndim != 2 or s.shape[1] != STACKED_DIM:
            raise ValueError(f"collate expects [T, {STACKED_DIM}] arrays, got {s.shape}")
        if not t - 1 <= l <= t:  # L = floor(F/2), T = ceil(F/2)
            raise ValueError(f"length {l} is inconsistent with {t} stacked frames")
    feats = torch.full((len(stacked), max(frames), STACKED_DIM), PADDING_VALUE, dtype=torch.float32)
    for i, s in enumerate(stacked):
        feats[i, : s.shape[0]] = torch.from_numpy(np.asarray(s, dtype=np.float32))
    return feats, torch.tensor(frames, dtype=torch.long), torch.tensor(list(lengths), dtype=torch.long)


class DeviceFbank:
    """The same front end in torch, batched on `device`: __call__(list of 16 kHz [N_i]) -> collate's triple.

    The spectrum is computed in `compute_dtype` (float64 by default, like the reference; float32 is
    faster but loses the low-energy mel bins, see tests) and rounded through complex64 as the
    reference does. Statistics are taken over each item's own frames only; the output is `dtype`.
    """

    def __init__(self, device="cpu", dtype: torch.dtype = torch.float32, compute_dtype: torch.dtype = torch.float64):
        self.device = torch.device(device)
        self.dtype = dtype
        self.compute_dtype = compute_dtype
        self.window = torch.from_numpy(POVEY_WINDOW).to(self.device, compute_dtype)  # [400]
        self.mel_filters = torch.from_numpy(MEL_FILTERS).to(self.device, compute_dtype)  # [257,80]

    @torch.no_grad()
    def __call__(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not waves:
            raise ValueError("DeviceFbank got an empty batch")
        cd = self.compute_dtype
        num_frames = [_check_length(int(w.shape[-1])) for w in waves]
        f_max = max(num_frames)
        batch = torch.zeros(len(waves), (f_max - 1) * HOP_LENGTH + FRAME_LENGTH, dtype=cd, device=self.device)
        for i, w in enumerate(waves):
            if w.ndim != 1:
                raise ValueError(f"DeviceFbank expects 1-D waveforms, got shape {tuple(w.shape)}")
            n = min(w.shape[0], batch.shape[1])  # samples past the last full frame are never used
            # float32 * 2**15 is exact, so scaling after the cast equals the reference's order
            batch[i, :n] = w[:n].to(self.device, torch.float32).to(cd) * 2**15

        frames = batch.unfold(-1, FRAME_LENGTH, HOP_LENGTH)  # [B,F,400]
        frames = frames - frames.mean(-1, keepdim=True)
        emphasised = torch.cat(
            [frames[..., :1] * (1 - PREEMPHASIS), frames[..., 1:] - PREEMPHASIS * frames[..., :-1]], dim=-1
        )
        emphasised = emphasised * self.window
        spectrum = torch.fft.rfft(emphasised, n=FFT_LENGTH).to(torch.complex64)  # [B,F,257]
        re_im = torch.view_as_real(spectrum).to(cd)  # [B,F,257,2]
        power = re_im.square().sum(-1)
        logmel = (power @ self.mel_filters).clamp_min(MEL_FLOOR).log()  # [B,F,80]
        # the reference keeps log-mel in float32; bins that barely vary over an utterance have a
        # tiny std, so even that rounding shows after normalisation -- round the same way
        logmel = logmel.to(torch.float32).to(cd)

        counts = torch.tensor(num_frames, device=self.device)
        valid = torch.arange(f_max, device=self.device)[None] < counts[:, None]  # [B,F]
        mask = valid[..., None].to(cd)
        n = counts.to(cd)[:, None, None]
        mean = (logmel * mask).sum(1, keepdim=True) / n
        var = ((logmel - mean).square() * mask).sum(1, keepdim=True) / (n - 1)
        normed = (logmel - mean) / torch.sqrt(var + NORM_EPS)
        normed = torch.where(valid[..., None], normed, torch.full_like(normed, PADDING_VALUE))

        if f_max % STRIDE:
            pad = torch.full_like(normed[:, :1], PADDING_VALUE)
            normed = torch.cat([normed, pad], dim=1)
        feats = normed.reshape(len(waves), -1, STACKED_DIM).to(self.dtype)  # [B,Tmax,160]
        frames_t = (counts + 1) // 2
        lengths = counts // 2
        return feats, frames_t.long(), lengths.long()
