"""Differential check and speed of the exact TN fast path against WeTextProcessing itself.

    python tools/check_text_fast_path.py --language en --count 50000 [--seed 1] [--out report.json]

For every sentence of `tools/text_sentences.py` the text is prepared as the pipeline's branch
prepares it for the normaliser (English: contractions expanded; Chinese: contractions expanded,
right-stripped, pinyin and names behind placeholders), then given to both
`tn.<language>.normalizer.Normalizer.normalize` (the reference) and our `FastNormalizer.normalize`
(the exact search of preprocess/text_search.py, and for Chinese the copying of text_fast.py),
which must return the same string, or raise when the reference raises. Timing is interleaved: each
sentence is timed on both sides in turn (the order alternating), so the machine's load touches
both alike; the figures are per character of prepared text. Our side is timed twice: as it runs in
a worker (its memo of pieces kept across sentences) and with the memo emptied before every
sentence (no repeated pieces at all). Differences are printed and written to the report.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tools"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def prepare(text: str, language: str) -> str:
    """The string the pipeline's branch hands to the normaliser (see TextNormalizer)."""
    from preprocess.text import CHINESE_NAME, PINYIN_TONE, _protect, expand_contractions

    text = expand_contractions(text)
    if language == "zh":
        text = text.rstrip()
        text, _ = _protect(PINYIN_TONE, text, "pinyin")
        text, _ = _protect(CHINESE_NAME, text, "n")
    return text


def _run(fn, text):
    try:
        return fn(text), None
    except Exception as e:  # noqa: BLE001 - the reference's failure is part of its behaviour
        return None, type(e).__name__


def _digit_pattern(language: str) -> re.Pattern:
    """Texts with a number: the classes of `by_class`."""
    from preprocess.text_fast import DIGITS_ZH

    return re.compile(f"[{DIGITS_ZH}]" if language == "zh" else "[0-9]")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def check(language: str, count: int, seed: int, time_every: int = 1, progress: int = 0,
          part: tuple[int, int] = (0, 1), file: Path | None = None) -> dict:
    from text_sentences import sentences

    from preprocess.text import get_normaliser, get_tn
    from preprocess.text_fast import FastNormalizer

    reference = get_tn(language)
    fast = get_normaliser(language)
    if not fast.searched:
        raise SystemExit("the exact search is off (see the warning above); nothing to check")
    # the same normaliser with a private memo, emptied before each sentence, for the cold timing
    cold = FastNormalizer(reference, language, {language: _facts(language)} if fast.path else None)

    k, n = part  # sentences k, k+n, k+2n, ... of the generated list (parallel runs split one list)
    source = (file.read_text(encoding="utf-8").splitlines() if file else sentences(language, count, seed))
    texts = [prepare(s, language) for i, s in enumerate(source) if i % n == k]
    load_before = load_average()
    spent = {"reference": 0.0, "ours_memo": 0.0, "ours_no_memo": 0.0}
    # the same, split by whether the text holds a digit (Chinese: such texts are searched whole)
    by_class = {c: {"sentences": 0, "characters": 0, "reference": 0.0, "ours_memo": 0.0}
                for c in ("with_digit", "without_digit")}
    digit = _digit_pattern(language)
    timed_chars, chars = 0, 0
    differences, failures_agreed = [], 0
    t_start = time.time()
    for i, text in enumerate(texts):
        chars += len(text)
        timed = time_every and i % time_every == 0
        order = ("ref", "ours") if i % 2 == 0 else ("ours", "ref")
        results = {}
        for side in order:
            t0 = time.perf_counter()
            results[side] = _run(reference.normalize if side == "ref" else fast.normalize, text)
            dt = time.perf_counter() - t0
            if timed:
                spent["reference" if side == "ref" else "ours_memo"] += dt
                cls = by_class["with_digit" if digit.search(text) else "without_digit"]
                cls["reference" if side == "ref" else "ours_memo"] += dt
        if timed:
            cold.memo.table.clear()
            t0 = time.perf_counter()
            results["cold"] = _run(cold.normalize, text)
            spent["ours_no_memo"] += time.perf_counter() - t0
            timed_chars += len(text)
            cls["sentences"] += 1
            cls["characters"] += len(text)
        ref = results["ref"]
        for side in ("ours", "cold"):
            if side in results and results[side] != ref:
                differences.append({"index": i, "side": side, "text": text, "reference": ref, "ours": results[side]})
                if progress:
                    print("DIFF", json.dumps(differences[-1], ensure_ascii=False), flush=True)
        if ref[1] is not None:
            failures_agreed += 1
        if progress and (i + 1) % progress == 0:
            print(f"{language}: {i + 1}/{len(texts)} compared, {len(differences)} differ, "
                  f"{time.time() - t_start:.0f} s, load {load_average()}", flush=True)
    per_char_ms = {k: (v / timed_chars * 1e3 if timed_chars else None) for k, v in spent.items()}
    return {
        "language": language, "sentences": len(texts), "characters": chars, "seed": seed,
        "part": f"{k}/{n}",
        "differences": len(differences), "difference_examples": differences[:50],
        "reference_failures_reproduced": failures_agreed,
        "timed_sentences": sum(1 for i in range(len(texts)) if time_every and i % time_every == 0),
        "timed_characters": timed_chars,
        "seconds": {k: round(v, 3) for k, v in spent.items()},
        "ms_per_char": {k: (round(v, 5) if v is not None else None) for k, v in per_char_ms.items()},
        "speedup": {k: round(spent["reference"] / spent[k], 1) if spent[k] else None
                    for k in ("ours_memo", "ours_no_memo")},
        "by_class": {c: {**v, "reference": round(v["reference"], 3), "ours_memo": round(v["ours_memo"], 3),
                         "speedup": round(v["reference"] / v["ours_memo"], 1) if v["ours_memo"] else None}
                     for c, v in by_class.items()},
        "memo": fast.memo_stats(),
        "search_fallbacks": fast.engine.fallbacks,  # texts the reference normalised instead
        "load_average_before": load_before, "load_average_after": load_average(),
        "wall_seconds": round(time.time() - t_start, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _facts(language: str) -> dict:
    from preprocess.text_fast import load_facts

    return load_facts()[language]  # only Chinese has facts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--language", choices=("en", "zh"), required=True)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--time-every", type=int, default=1, help="time every k-th sentence (0: none)")
    ap.add_argument("--progress", type=int, default=0, help="print a line every N sentences")
    ap.add_argument("--part", default="0/1", help="K/N: check only sentences K, K+N, ... (runs in parallel)")
    ap.add_argument("--file", type=Path, help="sentences from this file, one per line, instead of generated ones")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    k, n = map(int, args.part.split("/"))
    if not 0 <= k < n:
        ap.error("--part K/N needs 0 <= K < N")
    report = check(args.language, args.count, args.seed, args.time_every, args.progress, (k, n), args.file)
    if not args.progress:
        for d in report["difference_examples"][:10]:
            print("DIFF", json.dumps(d, ensure_ascii=False))
    summary = {k: v for k, v in report.items() if k != "difference_examples"}
    print(json.dumps(summary, ensure_ascii=False, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return 1 if report["differences"] else 0


if __name__ == "__main__":
    sys.exit(main())
