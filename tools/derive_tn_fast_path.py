"""Derive the facts behind the exact TN fast path from WeTextProcessing's own grammars.

    python tools/derive_tn_fast_path.py [--out preprocess/text_tn_facts.json]

Rebuilds every token grammar of `tn.english` and `tn.chinese` from the installed package (about
a minute) and writes what `preprocess/text_fast.py` relies on:

English (`en.span_pairs`): the tagger reads a sentence as a sequence of tokens (word,
punctuation, whitelist, date, time, measure, money, ...). A run of spaces between two letter-only
words can only be crossed by a token whose *input* contains letter, spaces, letter. For every
token grammar we intersect its input language with  Σ* [A-Za-z] " "+ [A-Za-z] Σ*  and, for the
occurrences not preceded within the token by an ASCII digit, list the letter run before and after
the spaces as a pair "left|right". The set is finite (checked: the intersection is acyclic);
occurrences after a digit (addresses "12 Baker Street, any city, CA 95051", "5 sq ft") are
infinite and are excluded at run time by never splitting to the right of the sentence's first
digit. The word grammar (no spaces) and the punctuation grammar (spaces only next to a
punctuation mark) cannot cross such a run; they are checked too.

English (`en.not_word_letter_strings`, `en.plain_word_check`): the letter-only strings that a
token other than `word` reads whole (the whitelist's: "TV", "Mr", ...; the set is finite,
checked). A word of ASCII letters that is not a concatenation of them is a *plain word*; on the
compiled tagger itself (`check_plain_words`) we prove that every plain word is tagged
`w { v: "<the word>" }` at weight exactly 100 and that every other tagging weighs at least 101,
so the fast path writes a plain word out without running the grammar.

Chinese (`zh.excluded`, `zh.excluded_with_digit`): every token other than `char` (one
character) is built from the package's tables and literals. For each such token grammar we
collect the characters of its input language after the traditional->simplified pre-processor
(so a traditional form of a listed character counts): those of inputs without a digit go
to `excluded`, with the ideographs the pre-processor or the post-processor (full->half width)
change; those seen only in inputs with a digit (team names before a score, units after a
number; ASCII or full-width digits) go to `excluded_with_digit`. A CJK ideograph outside `excluded` can only be read by
`char`, as itself, in a text without digits; outside both sets, in any text.

The output also records the package versions and the SHA-256 of the compiled grammars the
fast path runs next to; the fast path switches itself off when they differ.
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
# marks next to which words may be templated: the candidates the punctuation grammar reads and the
# word grammar does not (checked); marks that URLs, e-mails, money and maths use are left out
TEMPLATE_PUNCTUATION = ",.!?;:\"()[]{}'-\u201c\u201d\u2018\u2019\u2013\u2014\u2026\u00a1\u00bf\u00ab\u00bb"


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _paths_of(fst) -> list[str]:
    out, it = [], fst.paths()
    while not it.done():
        out.append(it.ostring())
        it.next()
    return sorted(set(out))


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


def english_facts() -> dict:
    import pynini
    from pynini.lib import byte
    from pynini.lib.pynutil import delete
    from tn.english.rules.cardinal import Cardinal
    from tn.english.rules.date import Date
    from tn.english.rules.decimal import Decimal
    from tn.english.rules.electronic import Electronic
    from tn.english.rules.fraction import Fraction
    from tn.english.rules.measure import Measure
    from tn.english.rules.money import Money
    from tn.english.rules.ordinal import Ordinal
    from tn.english.rules.punctuation import Punctuation
    from tn.english.rules.range import Range
    from tn.english.rules.serial import Serial
    from tn.english.rules.telephone import Telephone
    from tn.english.rules.time import Time
    from tn.english.rules.whitelist import WhiteList
    from tn.english.rules.word import Word

    # the same construction as tn.english.normalizer.Normalizer.build_tagger_and_verbalizer
    cardinal = Cardinal()
    ordinal = Ordinal(cardinal=cardinal)
    decimal = Decimal(cardinal=cardinal)
    fraction = Fraction(cardinal=cardinal, ordinal=ordinal)
    punctuation = Punctuation()
    date = Date(cardinal=cardinal, ordinal=ordinal)
    time_ = Time(cardinal=cardinal)
    grammars = {
        "cardinal": cardinal, "ordinal": ordinal, "decimal": decimal, "fraction": fraction,
        "date": date, "time": time_,
        "measure": Measure(cardinal=cardinal, decimal=decimal, fraction=fraction, ordinal=ordinal),
        "money": Money(cardinal=cardinal, decimal=decimal), "telephone": Telephone(),
        "electronic": Electronic(cardinal=cardinal), "serial": Serial(cardinal=cardinal, ordinal=ordinal),
        "word": Word(punctuation=punctuation), "whitelist": WhiteList(),
        "range": Range(date=date, time=time_), "punctuation": punctuation,
    }
    sigma = pynini.closure(byte.BYTE).optimize()
    letter = byte.ALPHA
    digit = byte.DIGIT
    not_letter = pynini.difference(byte.BYTE, letter).optimize()
    not_digit = pynini.difference(byte.BYTE, digit).optimize()
    spaces = pynini.accep(" ").plus
    crossing = (sigma + letter + spaces + letter + sigma).optimize()
    # an occurrence with no digit before it in the token: left letter run | right letter run
    pair = (
        (delete(pynini.closure(not_digit) + pynini.difference(not_letter, digit)) | pynini.accep(""))
        + letter.plus + pynini.cross(spaces, "|") + letter.plus
        + (delete(not_letter + sigma) | pynini.accep(""))
    ).optimize()

    report, pairs = {}, set()
    input_of = {name: pynini.project(g.tagger, "input").rmepsilon().optimize() for name, g in grammars.items()}
    for name, grammar in grammars.items():
        inputs = input_of[name]
        crossings = pynini.intersect(inputs, crossing).optimize()
        found = pynini.project(pynini.compose(crossings, pair), "output").rmepsilon().optimize()
        if not found.properties(pynini.ACYCLIC, True):
            raise RuntimeError(f"{name}: letter-space-letter pairs before any digit are not finite")
        these = _paths_of(found) if found.num_states() else []
        report[name] = {"crossing_states": crossings.num_states(), "pairs_before_a_digit": len(these)}
        pairs.update(these)
    for name in ("word", "punctuation"):
        if report[name]["crossing_states"]:
            raise RuntimeError(f"{name} grammar reads letter-space-letter; the fast path's premise fails")

    # letter-only strings a token other than `word` reads whole (in this package: whitelist only)
    letters = letter.plus.optimize()
    not_word: set[str] = set()
    for name, grammar in grammars.items():
        if name == "word":
            continue
        read = pynini.project(pynini.compose(letters, grammar.tagger), "input").rmepsilon().optimize()
        report[name]["letter_words"] = 0
        if read.num_states():
            if not read.properties(pynini.ACYCLIC, True):
                raise RuntimeError(f"{name}: the letter-only strings it reads are not finite")
            found = _paths_of(read)
            report[name]["letter_words"] = len(found)
            not_word.update(found)
    plain = check_plain_words(sorted(not_word))

    # letter runs that a token other than word and punctuation reads next to a run of marks, in
    # inputs of letters, spaces and marks only: "Dr" of "Dr.", "m" of "a.m."; a word next to marks
    # that neither begins nor ends with one of them can be templated by the fast path
    template_marks = "".join(
        m for m in TEMPLATE_PUNCTUATION
        if not pynini.compose(pynini.accep(pynini.escape(m)), input_of["word"]).num_states()
        and pynini.compose(pynini.accep(pynini.escape(m)), input_of["punctuation"]).num_states())
    marks = pynini.union(*(pynini.escape(m) for m in template_marks)).optimize()
    space = pynini.accep(" ")
    # a templated piece holds ASCII letters, spaces and these marks only, and no marks between two
    # letters ("e.g", "a.m"), so only such inputs matter
    simple = pynini.difference(pynini.closure(letter | space | marks),
                               sigma + letter + marks.plus + letter + sigma).optimize()
    rest = space + sigma | pynini.accep("")  # a space or the token's end
    opening = sigma + space | pynini.accep("")  # a space or the token's start
    lead = delete(sigma + not_letter) | pynini.accep("")
    tail = delete(not_letter + sigma) | pynini.accep("")
    bar = pynini.cross("", "|")
    # each crossing as "run|context" or "context|run", the context cut short next to the marks
    # (after them: up to the end of the next letter run; before them: one character), so that
    # contexts are finite; a shorter context makes the fast path refuse more words, never fewer
    patterns = {
        # a word, then marks, then a space or the token's end ("Dr" of "Dr. Smith")
        "before_marks": (sigma + letter + marks.plus + rest,
                         lead + letter.plus + bar + marks.plus
                         + (space.plus + letter.plus + tail | space.plus + not_letter + delete(sigma)
                            | pynini.accep(""))),
        # marks, spaces, then a word ("Louis" of "St. Louis")
        "after_marks_and_spaces": (sigma + marks.plus + space.plus + letter + sigma,
                                   (delete(sigma) + byte.BYTE | pynini.accep("")) + marks.plus + space.plus + bar
                                   + letter.plus + tail),
        # a space or the token's start, marks, then a word ("hello" of "(hello")
        "after_opening_marks": (opening + marks.plus + letter + sigma,
                                (delete(sigma) + space | pynini.accep("")) + marks.plus + bar + letter.plus + tail),
    }
    crossings: dict[str, set[str]] = {key: set() for key in patterns}
    for name in grammars:
        if name in ("word", "punctuation"):
            continue
        inputs = pynini.intersect(input_of[name], simple).optimize()
        for key, (pattern, extract) in patterns.items():
            found = pynini.project(pynini.compose(pynini.intersect(inputs, pattern.optimize()),
                                                  extract.optimize()), "output").rmepsilon().optimize()
            these = _context_pairs(found, run_first=key == "before_marks") if found.num_states() else set()
            report[name][key] = len(these)
            crossings[key].update(these)
    near_marks = {part for pairs_ in crossings.values() for pair_ in pairs_ for part in pair_.split("|")}
    stand_in = next(c for c in "zqxjkvwyfgbpmhucdlrtsnoiea" if c not in not_word and c not in near_marks)
    return {"span_pairs": sorted(pairs), "not_word_letter_strings": sorted(not_word),
            "plain_word_check": plain, "template_punctuation": template_marks,
            "mark_crossings": {key: sorted(v) for key, v in crossings.items()},
            "template_stand_in": stand_in, "grammars": report}


def _context_pairs(found, run_first: bool) -> set[str]:
    """The strings "run|context" (run_first) or "context|run" of an acyclic-or-not acceptor.

    Where the letter runs are not finite but the contexts are (a whitelist token reads any word
    followed by ", " and a state abbreviation), the run is written "*" (any letters).
    """
    import pynini
    from pynini.lib import byte
    from pynini.lib.pynutil import delete

    if found.properties(pynini.ACYCLIC, True):
        return set(_paths_of(found))
    letters, sigma = byte.ALPHA.plus, pynini.closure(byte.BYTE)
    drop_run = (delete(letters + "|") + sigma) if run_first else (sigma + delete("|" + letters))
    contexts = pynini.project(pynini.compose(found, drop_run.optimize()), "output").rmepsilon().optimize()
    if not contexts.properties(pynini.ACYCLIC, True):
        raise RuntimeError("letter runs next to marks: neither the runs nor their contexts are finite")
    out = set()
    for context in _paths_of(contexts):
        side = pynini.escape(context)
        keep = (letters + delete("|" + side)) if run_first else (delete(side + "|") + letters)
        runs = pynini.project(pynini.compose(found, keep.optimize()), "output").rmepsilon().optimize()
        if runs.properties(pynini.ACYCLIC, True):
            out.update(f"{run}|{context}" if run_first else f"{context}|{run}" for run in _paths_of(runs))
        else:
            out.add(f"*|{context}" if run_first else f"{context}|*")
    return out


def check_plain_words(not_word: list[str], tagger=None) -> dict:
    """Prove, on the compiled English tagger itself, what a plain word is tagged as.

    A plain word is a string of ASCII letters that is not a concatenation of strings in
    `not_word` (the letter-only strings some other token reads whole). Claim: for every plain
    word x, every path of the tagger with input x whose output is not of the form
    `w { v: "<letters>" }` weighs at least 101, and every path whose output has that form
    weighs exactly 100 (one arc of 100, all others 0) and copies x, so the output is
    `w { v: "x" }`. Checked with automata over all plain words at once; raises if it fails.
    """
    import pynini
    from pynini.lib import byte
    from pynini.lib.pynutil import delete

    if tagger is None:  # the tagger as the reference holds it (read, then optimised)
        from tn.english.normalizer import Normalizer

        tagger = Normalizer().tagger
    letters = byte.ALPHA.plus.optimize()
    plain = pynini.difference(letters, pynini.union(*not_word).plus.optimize()).optimize()
    paths = pynini.compose(plain, tagger)
    paths.connect()
    word_out = (pynini.accep('w { v: "') + letters + pynini.accep('" }')).optimize()
    other = pynini.compose(paths, pynini.difference(pynini.closure(byte.BYTE), word_out).optimize())
    other.connect()
    other_min = float(pynini.shortestdistance(other, reverse=True)[other.start()]) if other.num_states() else None
    if other_min is None or other_min < 101.0:
        raise RuntimeError(f"a plain word has a non-word tagging of weight {other_min} (< 101)")

    # the word taggings, with the template deleted: what remains must copy the input arc by arc
    template = delete('w { v: "') + pynini.closure(byte.ALPHA) + delete('" }')
    words = pynini.compose(paths, template.optimize())
    words.connect()
    weights, copies = set(), True
    for s in words.states():
        final = float(words.final(s))
        if final != float("inf"):
            weights.add(final)
        for a in words.arcs(s):
            weights.add(float(a.weight))
            copies &= a.ilabel == a.olabel or (a.ilabel == 0 and a.olabel == 0)
    if not copies:
        raise RuntimeError("a word tagging of a plain word does not copy its input")
    if not weights <= {0.0, 100.0}:
        raise RuntimeError(f"word taggings carry weights {sorted(weights)}, not only 0 and 100")
    word_min = float(pynini.shortestdistance(words, reverse=True)[words.start()])
    negated = words.copy()
    for s in negated.states():
        arcs = negated.mutable_arcs(s)
        while not arcs.done():
            a = arcs.value()
            a.weight = pynini.Weight("tropical", -float(a.weight))
            arcs.set_value(a)
            arcs.next()
        if float(negated.final(s)) != float("inf"):
            negated.set_final(s, -float(negated.final(s)))
    word_max = -float(pynini.shortestdistance(negated, reverse=True)[negated.start()])
    if word_min != 100.0 or word_max != 100.0:
        raise RuntimeError(f"word taggings weigh {word_min}..{word_max}, not exactly 100")
    return {"word_weight": 100.0, "other_min_weight": other_min,
            "plain_states": plain.num_states(), "tagging_states": paths.num_states()}


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
    import tn

    from preprocess.text import tn_cache_dir

    package = Path(tn.__file__).parent
    t0 = time.perf_counter()
    facts = {
        "package": "WeTextProcessing", "version": metadata.version("WeTextProcessing"),
        "pynini": metadata.version("pynini"),
        "en_tagger_sha256": _sha256(package / "en_tn_tagger.fst"),
        "en_verbalizer_sha256": _sha256(package / "en_tn_verbalizer.fst"),
        "zh_tagger_sha256": _sha256(tn_cache_dir() / "zh_tn_tagger.fst"),
        "zh_verbalizer_sha256": _sha256(tn_cache_dir() / "zh_tn_verbalizer.fst"),
        "en": english_facts(),
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
    print(f"wrote {args.out}: {len(facts['en']['span_pairs'])} English span pairs, "
          f"{len(facts['zh']['excluded'])} excluded ideographs, {facts['derive_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
