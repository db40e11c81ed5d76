"""A small multilingual sample corpus: audio files of several rates and formats + a manifest.

    python tools/make_sample.py OUT [--count 24] [--seed 0]

Speech comes from Debian's `espeak-ng` when it is installed; otherwise from a deterministic
synthetic voice (harmonic source with moving pitch and formant-like envelopes), so the sample
can always be made. Writes OUT/manifest.jsonl with relative audio paths.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

# (language, espeak voice, text)
SENTENCES = [
    ("en", "en", "The quick brown fox jumps over the lazy dog."),
    ("en", "en", "Please call me at three thirty in the afternoon."),
    ("en", "en", "She sells sea shells by the sea shore on the 2nd of March 2024."),
    ("en", "en", "Author of the danger trail, Philip Steels, etc."),
    ("zh", "cmn", "今天天气很好，我们一起去公园散步吧。"),
    ("zh", "cmn", "这是一个用于测试的中文句子，包含数字123。"),
    ("zh", "cmn", "人工智能正在改变我们的生活方式。"),
    ("ja", "ja", "こんにちは、今日はいい天気ですね。"),
    ("ja", "ja", "私は毎朝コーヒーを飲みます。"),
    ("ko", "ko", "안녕하세요, 반갑습니다."),
    ("fr", "fr", "Bonjour tout le monde, comment allez-vous aujourd'hui?"),
    ("de", "de", "Guten Morgen, wie geht es Ihnen heute?"),
]
# (sample rate, file extension, soundfile format, subtype)
ENCODINGS = [
    (16000, "wav", "WAV", "PCM_16"),
    (22050, "flac", "FLAC", "PCM_16"),
    (24000, "wav", "WAV", "FLOAT"),
    (44100, "ogg", "OGG", "VORBIS"),
    (48000, "flac", "FLAC", "PCM_24"),
    (8000, "wav", "WAV", "PCM_16"),
    (32000, "mp3", "MP3", "MPEG_LAYER_III"),
]


def espeak(voice: str, text: str) -> tuple[np.ndarray, int] | None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        r = subprocess.run([exe, "-v", voice, "-w", str(wav), text], capture_output=True)
        if r.returncode != 0 or not wav.exists():
            return None
        audio, sr = sf.read(wav, dtype="float32")
    return audio, sr


def synthetic_voice(text: str, seed: int, sr: int = 22050) -> np.ndarray:
    """Roughly 80 ms per character of pitched, amplitude-modulated sound with pauses."""
    rng = np.random.default_rng(seed)
    seconds = min(12.0, 0.5 + 0.08 * len(text))
    t = np.arange(int(seconds * sr)) / sr
    f0 = 110 + 40 * rng.random() + 25 * np.sin(2 * np.pi * (0.3 + rng.random()) * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    source = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * (3 + 2 * rng.random()) * t), 0, None) ** 0.5
    formant = 0.6 + 0.4 * np.sin(2 * np.pi * (1.5 + rng.random()) * t + rng.random())
    audio = 0.3 * source * syllables * formant + 0.003 * rng.standard_normal(t.size)
    return audio.astype(np.float32) / max(1e-6, np.abs(audio).max()) * 0.7


def resample_linear(audio: np.ndarray, sr: int, new_sr: int) -> np.ndarray:
    if sr == new_sr:
        return audio
    n = int(round(len(audio) * new_sr / sr))
    return np.interp(np.arange(n) * sr / new_sr, np.arange(len(audio)), audio).astype(np.float32)


def make_sample(out: str | Path, count: int = 24, seed: int = 0) -> Path:
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    source = "synthetic"
    for i in range(count):
        lang, voice, text = SENTENCES[i % len(SENTENCES)]
        spoken = espeak(voice, text)
        if spoken is not None:
            audio, sr = spoken
            source = "espeak-ng"
        else:
            audio, sr = synthetic_voice(text, seed * 1000 + i), 22050
        rate, ext, fmt, subtype = ENCODINGS[i % len(ENCODINGS)]
        audio = resample_linear(audio, sr, rate)
        if i % 5 == 4:  # some stereo files: the pipeline mixes them to mono
            audio = np.stack([audio, 0.5 * audio], axis=1)
        speaker = f"{lang}_spk{i % 2}"
        name = f"audio/{speaker}_{i:04d}.{ext}"
        sf.write(out / name, audio, rate, format=fmt, subtype=subtype)
        lines.append({"id": f"{speaker}_{i:04d}", "text": text, "audio": name, "speaker": speaker,
                      "language": lang, "duration": round(len(audio) / rate, 3)})
    with open(out / "manifest.jsonl", "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    (out / "SOURCE").write_text(source + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = make_sample(args.out, args.count, args.seed)
    print(f"wrote {args.count} utterances ({(out / 'SOURCE').read_text().strip()} speech) to {out}/manifest.jsonl")


if __name__ == "__main__":
    main()
