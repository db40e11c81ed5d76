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
import io
import math
import os
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from .manifest import AudioRef

if TYPE_CHECKING:
    import torch

# torch is imported by the functions that compute with it: the planner reads audio headers
# through this module before the job has started its CPU workers, which should not wait for it
# (executors/inprocess.py).

LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99
REFERENCE_INTERMEDIATE_SR = 24000
TARGET_SR = 16000
MODES = ("reference", "direct")


class AudioError(Exception):
    """A file that cannot become a waveform. The message names the file and the cause."""


# A segment may end this much past its recording's end (a duration rounded up when it was
# written, as Lhotse tolerates); it is then cut at the end. Further is an error.
SEGMENT_END_TOLERANCE = 0.025  # seconds
# Formats whose decoder seeks to an exact sample; others (MPEG, Ogg) are decoded from the start
# and cut, so a segment's samples are those of the whole decode, wherever it starts.
_EXACT_SEEK = {"WAV", "WAVEX", "FLAC", "AIFF", "CAF", "W64", "RF64", "AU", "RAW"}
_DECODE_ERRORS = (RuntimeError, OSError, ValueError, TypeError)  # LibsndfileError is a RuntimeError


class ByteRange(io.RawIOBase):
    """A read-only, seekable view of bytes [offset, offset + size) of an open binary file, so
    libsndfile reads a tar member in place (only what it asks for: a header probe reads little)."""

    def __init__(self, f, offset: int, size: int):
        super().__init__()
        self._f, self._offset, self._size, self._pos = f, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._offset + self._pos)
        got = self._f.readinto(memoryview(buffer)[:n])
        self._pos += got
        return got


def seconds_to_samples(seconds: float, sr: int) -> int:
    """round(seconds * sr), half up, on the decimal value the float prints as (so 1.0005 s at
    1 kHz is 1001 samples, not 1000 from the float's binary value)."""
    return int((Decimal(repr(float(seconds))) * sr).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def segment_bounds(ref: AudioRef, frames: int, sr: int) -> tuple[int, int]:
    """(first sample, sample count) of the segment `ref` in audio of `frames` samples at `sr`.
    A start at or past the end, or an end more than SEGMENT_END_TOLERANCE past it, is an
    AudioError; an end within the tolerance is cut to the end."""
    where = ref.describe()
    if ref.start < 0 or not ref.duration or ref.duration <= 0:
        raise AudioError(f"{where}: segment needs start >= 0 and duration > 0")
    first, count = seconds_to_samples(ref.start, sr), seconds_to_samples(ref.duration, sr)
    length = frames / sr
    if first >= frames:
        raise AudioError(f"{where}: segment starts at {ref.start:g} s, past the end of its "
                         f"recording ({length:.3f} s)")
    if first + count - frames > round(SEGMENT_END_TOLERANCE * sr):
        raise AudioError(f"{where}: segment ends at {ref.start + ref.duration:g} s, past the end "
                         f"of its recording ({length:.3f} s)")
    return first, min(count, frames - first)


def _check_channels(ref: AudioRef, channels: int) -> None:
    bad = [c for c in ref.channels if not 0 <= c < channels]
    if bad:
        raise AudioError(f"{ref.describe()}: channel(s) {bad} not in the audio ({channels} channels)")


def _row_bytes(ref: AudioRef) -> bytes:
    from .sources.tables import TableError, row_bytes

    try:
        return row_bytes(ref.path, ref.row, ref.column)
    except TableError as e:
        raise AudioError(f"{ref.describe()}: {e}") from e


def _open_ref(ref: AudioRef, whole: bool):
    """A path or file-like object for libsndfile, and the file to close after. `whole`: the
    caller reads everything, so a member is read in one call rather than through ByteRange."""
    if ref.kind == "row":
        return io.BytesIO(_row_bytes(ref)), None
    if not os.path.exists(ref.path):
        raise AudioError(f"{ref.path}: file not found")
    if not os.path.isfile(ref.path):
        raise AudioError(f"{ref.path}: not a regular file")
    if ref.kind == "file":
        return ref.path, None
    try:
        f = open(ref.path, "rb")
        if whole:
            f.seek(ref.offset)
            data = f.read(ref.size)
            f.close()
            if len(data) != ref.size:
                raise AudioError(f"{ref.describe()}: member truncated ({len(data)} of "
                                 f"{ref.size} bytes in the archive)")
            return io.BytesIO(data), None
        return ByteRange(f, ref.offset, ref.size), f
    except OSError as e:
        raise AudioError(f"{ref.describe()}: cannot read ({e})") from e


def _as_ref(src) -> AudioRef:
    return src if isinstance(src, AudioRef) else AudioRef(os.fspath(src))


def decode(src) -> tuple[np.ndarray, int]:
    """Decode a path, an `AudioRef` (file, tar member, table row, any of them cut to a segment)
    or audio bytes (wav/flac/ogg/opus/mp3, whatever libsndfile reads) -> (float32 [N, C],
    native rate). Bytes decode to the same samples as the same bytes in a file."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        where, source, extra, ref = "<bytes>", io.BytesIO(bytes(src)), None, AudioRef("<bytes>")
    else:
        ref = _as_ref(src)
        where = ref.describe()
        source, extra = _open_ref(ref, whole=True)
    try:
        with sf.SoundFile(source) as f:
            if ref.is_segment:
                first, count = segment_bounds(ref, f.frames, f.samplerate)
                if f.format in _EXACT_SEEK:
                    f.seek(first)
                    data = f.read(count, dtype="float32", always_2d=True)
                else:
                    data = f.read(dtype="float32", always_2d=True)[first:first + count]
            else:
                data = f.read(dtype="float32", always_2d=True)  # [N, C]
            sr = f.samplerate
    except _DECODE_ERRORS as e:
        raise AudioError(f"{where}: cannot decode audio ({e})") from e
    finally:
        if extra is not None:
            extra.close()
    if ref.channels:
        _check_channels(ref, data.shape[1])
        data = data[:, list(ref.channels)]
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(f"{where}: empty audio (0 samples)")
    if not np.isfinite(data).all():
        raise AudioError(f"{where}: audio contains NaN or Inf samples")
    return data, int(sr)


def mix_to_mono(data: np.ndarray) -> np.ndarray:
    """float32 [N, C] -> float32 mono [N]: the channel mean, exactly as the reference computes it."""
    if data.shape[1] == 1:
        return np.ascontiguousarray(data[:, 0])
    # the reference averages a channels-first float32 tensor; doing the same reduction on the
    # same layout keeps multi-channel mixes bit-identical to it
    import torch

    channels_first = torch.from_numpy(np.ascontiguousarray(data.T))  # [C, N]
    return channels_first.mean(dim=0).numpy()


def load_audio(src) -> tuple[np.ndarray, int]:
    """Decode `src` (as `decode` takes it) -> (float32 mono [N], native rate): `decode` then
    `mix_to_mono`."""
    data, sr = decode(src)
    return mix_to_mono(data), sr


def probe_duration(src) -> float:
    """Duration in seconds from the header only (no decode) of a path or an `AudioRef`; a
    segment's own length, checked against the header (`segment_bounds`). A tar member's header
    is read in place; a table row's bytes are fetched, then only their header is parsed."""
    ref = _as_ref(src)
    source, extra = _open_ref(ref, whole=False)
    try:
        info = sf.info(source)
    except _DECODE_ERRORS as e:
        raise AudioError(f"{ref.describe()}: cannot read audio header ({e})") from e
    finally:
        if extra is not None:
            extra.close()
    if info.samplerate <= 0:
        raise AudioError(f"{ref.describe()}: header has no valid sample rate")
    if ref.channels:
        _check_channels(ref, info.channels)
    if ref.is_segment:
        return segment_bounds(ref, info.frames, info.samplerate)[1] / info.samplerate
    return info.frames / info.samplerate


@functools.lru_cache(maxsize=64)
def _sinc_kernel(orig: int, new: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, int]:
    """Hann-windowed sinc kernel [new, 1, 2*width + orig] for gcd-reduced rates, and width.

    Same operations in the same order and dtype as torchaudio, so float32 kernels agree bitwise.
    """
    import torch

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
    import torch.nn.functional as F

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
    import torch

    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None]  # [1, N], as torchaudio loads
    if mode == "reference":
        x = resample(x, sr, REFERENCE_INTERMEDIATE_SR)
        x = resample(x, REFERENCE_INTERMEDIATE_SR, TARGET_SR)
    else:
        x = resample(x, sr, TARGET_SR)
    return x[0].numpy()
