"""Derive the facts behind the Chinese copying of the exact TN fast path from WeTextProcessing.

    python tools/derive_tn_fast_path.py [--out preprocess/text_tn_facts.json]

Rebuilds every token grammar of `tn.chinese` from the installed package and writes what
`preprocess/text_fast.py` relies on (`zh.excluded`, `zh.excluded_with_digit`): every token
other than `char` (one character) is built from the package's tables and literals. For each
such token grammar we collect the characters of its input language after the
traditional->simplified pre-processor (so a traditional form of a listed character counts):
those of inputs without a digit go to `excluded`, with the ideographs the pre-processor or the
post-processor (full->half width) change; those seen only in inputs with a digit (team names
before a score, units after a number; ASCII or full-width digits) go to `excluded_with_digit`.
A CJK ideograph outside `excluded` can only be read by `char`, as itself, in a text without
digits; outside both sets, in any text.

The output also records the package versions and the SHA-256 of the compiled grammars the
fast path runs next to; the copying switches itself off when they differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "preprocess" / "text_tn_facts.json"
DIGITS_ZH = "0123456789０１２３４５６７８９"  # keep equal to preprocess.text_fast.DIGITS_ZH


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def utf8_chars(acceptor) -> set[str]:
    """Every complete UTF-8 character read on some path of an epsilon-free byte acceptor."""
    chars: set[str] = set()
    arcs = {s: [(a.ilabel, a.nextstate) for a in acceptor.arcs(s)] for s in acceptor.states()}

    def follow(state, prefix: bytes, need: int):
        for label, nxt in arcs[state]:
            if not 0x80 <= label < 0xC0:
                continue
            if need == 1:
                chars.add((prefix + bytes([label])).decode("utf-8", "replace"))
            else:
                follow(nxt, prefix + bytes([label]), need - 1)

    for out in arcs.values():
        for label, nxt in out:
            if label == 0:
                raise ValueError("acceptor has epsilon arcs; rmepsilon first")
            if label < 0x80:
                chars.add(chr(label))
            elif label >= 0xF0:
                follow(nxt, bytes([label]), 3)
            elif label >= 0xE0:
                follow(nxt, bytes([label]), 2)
            elif label >= 0xC0:
                follow(nxt, bytes([label]), 1)
    return chars


def chinese_facts() -> dict:
    import pynini
    from pynini.lib import byte
    from tn.chinese.rules.cardinal import Cardinal
    from tn.chinese.rules.date import Date
    from tn.chinese.rules.fraction import Fraction
    from tn.chinese.rules.math import Math
    from tn.chinese.rules.measure import Measure
    from tn.chinese.rules.money import Money
    from tn.chinese.rules.postprocessor import PostProcessor
    from tn.chinese.rules.preprocessor import PreProcessor
    from tn.chinese.rules.sport import Sport
    from tn.chinese.rules.time import Time
    from tn.chinese.rules.whitelist import Whitelist

    from preprocess.text import ZH_TN_OPTIONS

    o = ZH_TN_OPTIONS
    pre = PreProcessor(traditional_to_simple=o["traditional_to_simple"]).processor
    post = PostProcessor(remove_interjections=o["remove_interjections"], remove_puncts=o["remove_puncts"],
                         full_to_half=o["full_to_half"], tag_oov=o["tag_oov"]).processor
    cardinal = Cardinal()
    grammars = {
        "date": Date(), "whitelist": Whitelist(remove_erhua=o["remove_erhua"]),
        "sport": Sport(cardinal=cardinal), "fraction": Fraction(cardinal=cardinal),
        "measure": Measure(cardinal=cardinal), "money": Money(cardinal=cardinal), "time": Time(),
        "cardinal": cardinal, "math": Math(cardinal=cardinal),
    }
    # ASCII and full-width digits: the Chinese number grammar reads both
    digit = pynini.union(*DIGITS_ZH).optimize()
    sigma = pynini.closure(byte.BYTE).optimize()
    with_digit = (sigma + digit + sigma).optimize()
    without_digit = pynini.difference(sigma, with_digit).optimize()
    excluded: set[str] = set()  # read by some token without any digit
    near_digit: set[str] = set()  # read by tokens only together with a digit
    report = {}
    for name, grammar in grammars.items():
        inputs = pynini.project(pynini.compose(pre, grammar.tagger), "input").rmepsilon().optimize()
        free_chars = utf8_chars(pynini.intersect(inputs, without_digit).optimize())
        digit_chars = utf8_chars(pynini.intersect(inputs, with_digit).optimize()) - free_chars
        report[name] = {"chars_without_digit": len(free_chars), "chars_only_with_digit": len(digit_chars)}
        excluded |= free_chars
        near_digit |= digit_chars
    # ideographs the pre-processor (traditional -> simplified) or the post-processor change
    for code in range(0x4E00, 0xA000):
        ch = chr(code)
        if ch in excluded:
            continue
        for fst in (pre, post):
            if pynini.shortestpath(pynini.accep(ch) @ fst).string() != ch:
                excluded.add(ch)
                break
    ideograph = lambda c: 0x4E00 <= ord(c) < 0xA000
    return {"ideograph_range": [0x4E00, 0x9FFF],
            "excluded": "".join(sorted(filter(ideograph, excluded))),
            "excluded_with_digit": "".join(sorted(filter(ideograph, near_digit - excluded))),
            "digits": DIGITS_ZH,
            "grammars": report}


def derive() -> dict:
    from preprocess.text import tn_cache_dir

    t0 = time.perf_counter()
    facts = {
        "package": "WeTextProcessing", "version": metadata.version("WeTextProcessing"),
        "pynini": metadata.version("pynini"),
        "zh_tagger_sha256": _sha256(tn_cache_dir() / "zh_tn_tagger.fst"),
        "zh_verbalizer_sha256": _sha256(tn_cache_dir() / "zh_tn_verbalizer.fst"),
        "zh": chinese_facts(),
    }
    facts["derive_seconds"] = round(time.perf_counter() - t0, 1)
    return facts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    facts = derive()
    args.out.write_text(json.dumps(facts, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(facts['zh']['excluded'])} excluded ideographs, "
          f"{facts['derive_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
