"""CPU stage per component and per core: decode, mono, resample chain, fbank, text ids.

    python tools/bench_cpu_stage.py --language en --count 200 [--min-seconds 5 --max-seconds 15]
        [--tokenizer bpe.model] [--rates 16000,22050,24000,44100,48000] [--stereo-every 5]
        [--out report.json]

Self-contained: it writes a synthetic corpus to a temporary directory (a pitched, syllabic
synthetic voice from tools/make_sample.py; WAV PCM-16 and FLAC at the given source rates, every
k-th file stereo), with text of the language from tools/text_sentences.py grown to the
utterance's length (about 15 characters per second for English, 5 for Chinese, as read speech),
and a small SentencePiece model trained on that text when no --tokenizer is given.

Per utterance, on one thread (torch.set_num_threads(1)) and with freed memory kept in the heap
(preprocess.heap), as in a CPU worker, it times:

    decode    preprocess.audio.decode: the file -> float32 [N, C] at the native rate
    mono      preprocess.audio.mix_to_mono (channel mean, as the reference; a copy for mono)
    resample  preprocess.audio.to_16k(..., "reference"): native -> 24 kHz -> 16 kHz
    fbank     preprocess.frontend.fbank + stack_frames
    text      TextTokenizer.encode(clean_text(text), language), the exact fast path on
    text_reference   the same with the fast path off (WeTextProcessing alone), timed in the
              same loop, alternating which of the two goes first; its ids must equal ours
    text_prepared    what a CPU worker does instead of `text` with --prepared-text: read the
              record's line from a prepared-text file (written from the ids above, as
              `preprocess prepare-text` writes it) and check it was made from the same text

Each component's CPU seconds (time.process_time: every thread of the process) and wall seconds are summed; the report gives
audio seconds per CPU second for each component and for the stage (decode + mono + resample +
fbank + text), the stage again with `text_prepared` in place of `text` (the job's CPU stage
with a prepared-text file; the text pass itself costs about `text`, on other machines or
beforehand), and the load average before and after. The first utterance is run once untimed
(grammar and kernel caches, as a worker's first item); then the fast path's memo is emptied,
so every text is new to it (the texts of the corpus are all different).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# One BLAS thread, as a CPU worker should run: numpy's OpenBLAS otherwise starts a thread per core
# for the fbank's mel product, which on a shared machine costs CPU time without changing a bit
# (tests/test_frontend.py). Set before numpy is imported; export OPENBLAS_NUM_THREADS to override.
# (tools/bench.py --mode cpu-stage sets the same before it imports torch.)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tools"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np
import soundfile as sf

CHARS_PER_SECOND = {"en": 15.0, "zh": 5.0}
COMPONENTS = ("decode", "mono", "resample", "fbank", "text")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def utterance_texts(language: str, durations, seed: int) -> list[str]:
    """Texts whose length follows each duration (sentences joined with a space, or none for zh)."""
    from text_sentences import sentences

    pool = sentences(language, 4 * len(durations) + 50, seed)
    joiner = " " if language == "en" else ""
    out, k = [], 0
    for seconds in durations:
        target = CHARS_PER_SECOND[language] * seconds
        parts, length = [], 0
        while length < target:
            s = pool[k % len(pool)].strip()
            k += 1
            if not s:
                continue
            parts.append(s)
            length += len(s) + len(joiner)
        out.append(joiner.join(parts))
    return out


def make_corpus(out: Path, language: str, count: int, min_s: float, max_s: float, rates, stereo_every: int,
                seed: int) -> list[dict]:
    from make_sample import synthetic_voice

    rng = np.random.default_rng(seed)
    durations = rng.uniform(min_s, max_s, count)
    texts = utterance_texts(language, durations, seed)
    voice = {}
    items = []
    for i, (seconds, text) in enumerate(zip(durations, texts)):
        rate = rates[i % len(rates)]
        if rate not in voice:
            voice[rate] = synthetic_voice("x" * 150, seed * 7919 + rate, rate)  # 12 s, tiled
        n = round(seconds * rate)
        audio = np.resize(voice[rate], n)
        if stereo_every and i % stereo_every == stereo_every - 1:
            audio = np.stack([audio, 0.5 * audio], axis=1)
        ext, subtype = ("flac", "PCM_16") if i % 2 else ("wav", "PCM_16")
        path = out / f"utt_{i:05d}.{ext}"
        sf.write(path, audio, rate, subtype=subtype)
        items.append({"path": path, "text": text, "language": language, "seconds": n / rate, "rate": rate})
    return items


def train_tokenizer(out: Path, texts: list[str]) -> Path:
    import sentencepiece as spm

    from preprocess.text import TextTokenizer

    # the pre-tokenised form (upper-cased, CJK split) is what the model must cover
    pre = TextTokenizer.__new__(TextTokenizer)
    from preprocess.text import TextNormalizer

    pre.normalizer = TextNormalizer()
    lines = [pre.pre_tokenize(t, "auto") for t in texts[:200]]
    corpus = out / "spm_corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(out / "bench_bpe"), vocab_size=500, model_type="bpe",
        character_coverage=1.0, bos_id=0, eos_id=1, unk_id=2, pad_id=-1, hard_vocab_limit=False,
        minloglevel=2)
    return out / "bench_bpe.model"


class Clock:
    """Summed CPU (this process, all threads) and wall seconds per component."""

    def __init__(self):
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}

    def time(self, key, fn, *args):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn(*args)
        self.cpu[key] = self.cpu.get(key, 0.0) + time.process_time() - c0
        self.wall[key] = self.wall.get(key, 0.0) + time.perf_counter() - w0
        return out


def time_prepared_text(items: list[dict], ids: list[list[int]], workdir: Path, clock: Clock) -> int:
    """Times each record's lookup in a prepared-text file holding `ids`, as a CPU worker reads
    it; returns how many lookups gave back other ids than `ids` (0 expected)."""
    from preprocess import text as T
    from preprocess.text_cache import FORMAT_VERSION, PreparedTextReader, entry_line, line_offsets, made_by

    path = workdir / "prepared_text.jsonl"
    header = {"prepared_text": FORMAT_VERSION, "made_by": made_by("bench", None), "about": {}}
    with open(path, "wb") as f:
        f.write((json.dumps(header) + "\n").encode())
        for i, (item, item_ids) in enumerate(zip(items, ids)):
            f.write(entry_line(f"utt_{i:05d}", item["language"], T.clean_text(item["text"]), item_ids))
    offsets = line_offsets(path)
    reader = PreparedTextReader(path)
    wrong = 0
    try:
        for i, (item, item_ids) in enumerate(zip(items, ids)):
            text = T.clean_text(item["text"])
            entry = clock.time("text_prepared", reader.lookup, offsets[f"utt_{i:05d}"], f"utt_{i:05d}",
                               text, item["language"])
            wrong += entry is None or entry["ids"] != item_ids
    finally:
        reader.close()
    return wrong


def run(items: list[dict], tokenizer_path: Path, compare_reference: bool = True,
        workdir: Path | None = None) -> dict:
    import torch

    from preprocess import text as T
    from preprocess.audio import decode, mix_to_mono, to_16k
    from preprocess.frontend import fbank, stack_frames
    from preprocess.heap import keep_freed_memory

    torch.set_num_threads(1)
    keep_freed_memory()  # as a CPU worker (preprocess.prepare.init_worker)
    tokenizer = T.TextTokenizer(tokenizer_path)
    tokenizer.normalizer.load(*{T.normaliser_hint(it["language"]) for it in items} & {"en", "zh"})
    fast = {lang: T.get_normaliser(lang) for lang in ("en", "zh")}

    reference_only = {lang: type(n)(n.reference, lang, None, enabled=False) for lang, n in fast.items()}

    class ReferenceOnly(T.TextNormalizer):
        """The same branches with the reference normaliser alone (no search, no memo)."""

        def normalize(self, text, hint=None):
            saved = dict(T._fast_loaded)
            try:
                T._fast_loaded.update(reference_only)
                return super().normalize(text, hint)
            finally:
                T._fast_loaded.update(saved)

    reference_tokenizer = T.TextTokenizer(tokenizer_path, normalizer=ReferenceOnly())

    def one(item, clock, i):
        data, sr = clock.time("decode", decode, item["path"])
        wave = clock.time("mono", mix_to_mono, data)
        wave16 = clock.time("resample", to_16k, wave, sr, "reference")
        clock.time("fbank", lambda w: stack_frames(fbank(w)), wave16)
        text = T.clean_text(item["text"])
        if not compare_reference:
            return clock.time("text", tokenizer.encode, text, item["language"]), None
        order = ("text", "text_reference") if i % 2 == 0 else ("text_reference", "text")
        ids = {}
        for key in order:
            tok = tokenizer if key == "text" else reference_tokenizer
            ids[key] = clock.time(key, tok.encode, text, item["language"])
        return ids["text"], ids["text_reference"]

    one(items[0], Clock(), 0)  # untimed warm-up: grammar load, kernels
    for n in fast.values():  # what the tokenizer training or the warm-up saw is not reused
        if n.path is not None:
            n.path.memo.clear()
    clock = Clock()
    load_before = load_average()
    t0 = time.perf_counter()
    mismatches = 0
    made = []
    for i, item in enumerate(items):
        ours, ref = one(item, clock, i)
        made.append(ours)
        mismatches += ref is not None and ours != ref
    wall = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(dir=workdir, prefix="prepared_") as tmp:
        prepared_wrong = time_prepared_text(items, made, Path(tmp), clock)
    audio = sum(it["seconds"] for it in items)
    chars = sum(len(T.clean_text(it["text"])) for it in items)
    stage_cpu = sum(clock.cpu[k] for k in COMPONENTS)
    per = lambda k: round(audio / clock.cpu[k], 1) if clock.cpu.get(k) else None
    report = {
        "utterances": len(items), "audio_seconds": round(audio, 1), "text_characters": chars,
        "cpu_seconds": {k: round(v, 3) for k, v in clock.cpu.items()},
        "wall_seconds": {k: round(v, 3) for k, v in clock.wall.items()},
        "audio_seconds_per_cpu_second": {k: per(k) for k in clock.cpu},
        "stage_audio_seconds_per_cpu_second": round(audio / stage_cpu, 1),
        "stage_with_prepared_text": round(audio / (stage_cpu - clock.cpu["text"] + clock.cpu["text_prepared"]), 1),
        "prepared_text_saving": round(stage_cpu / (stage_cpu - clock.cpu["text"] + clock.cpu["text_prepared"]), 1),
        "text_ms_per_utterance": {k: round(clock.cpu[k] / len(items) * 1e3, 4)
                                  for k in ("text", "text_reference", "text_prepared") if k in clock.cpu},
        "prepared_text_wrong_ids": prepared_wrong,
        "stage_with_reference_text": (round(audio / (stage_cpu - clock.cpu["text"] + clock.cpu["text_reference"]), 1)
                                      if "text_reference" in clock.cpu else None),
        "text_ms_per_char": {k: round(clock.cpu[k] / chars * 1e3, 4) for k in ("text", "text_reference")
                             if k in clock.cpu},
        "text_speedup": (round(clock.cpu["text_reference"] / clock.cpu["text"], 1)
                         if "text_reference" in clock.cpu else None),
        "text_id_mismatches": mismatches if compare_reference else None,
        "memo": {lang: n.memo_stats() for lang, n in fast.items()},
        "loop_wall_seconds": round(wall, 1),
        "blas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS"),
        "load_average_before": load_before, "load_average_after": load_average(),
    }
    return report


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--language", choices=("en", "zh"), default="en")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--min-seconds", type=float, default=5.0)
    ap.add_argument("--max-seconds", type=float, default=15.0)
    ap.add_argument("--rates", default="16000,22050,24000,44100,48000")
    ap.add_argument("--stereo-every", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", type=Path, help="SentencePiece model (default: train a small one)")
    ap.add_argument("--no-reference", action="store_true", help="skip timing the reference text path")
    ap.add_argument("--out", type=Path, help="write the JSON report here")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rates = [int(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_cpu_stage_") as tmp:
        tmp = Path(tmp)
        items = make_corpus(tmp, args.language, args.count, args.min_seconds, args.max_seconds, rates,
                            args.stereo_every, args.seed)
        tokenizer = args.tokenizer or train_tokenizer(tmp, [it["text"] for it in items])
        report = run(items, tokenizer, compare_reference=not args.no_reference, workdir=tmp)
    report.update(language=args.language, rates=rates, seconds_range=[args.min_seconds, args.max_seconds],
                  command="python tools/bench_cpu_stage.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  machine={"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                           "cores": os.cpu_count()},
                  date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    text = json.dumps(report, ensure_ascii=False, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
