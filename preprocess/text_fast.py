"""Exact fast paths around WeTextProcessing's normalisers: the same output, less grammar work.

`FastNormalizer(reference, language).normalize(text) == reference.normalize(text)` for every
text: the fast path only cuts the text where the grammar provably cannot join the two sides, runs
the reference normaliser on the pieces (remembering pieces it has seen, per process), and copies
characters the grammar provably leaves alone. Why each cut is exact:

Both grammars work in two passes. The tagger reads the input as a sequence of tokens and keeps
the path of least total weight (a sum over the tokens); the verbaliser then rewrites each token on
its own and concatenates the results. So if every path of the tagger has a token boundary at some
position, the paths of the whole text are exactly the pairs (path of the left side, path of the
right side), the cheapest whole path is the cheapest left path followed by the cheapest right path,
and the output is the left output joined to the right one. What the joint is comes from each
grammar's top level (below). The facts about which positions are always token boundaries are
derived from the package's own token grammars by `tools/derive_tn_fast_path.py` and stored in
`text_tn_facts.json` with the versions and grammar hashes they were derived from; when the
installed package or compiled grammar differs, the fast path switches itself off and every text
goes to the reference normaliser.

Chinese (tn.chinese, our options): tokens follow each other with nothing between them, and each
token's verbalisation (with the post-processor) depends on that token only. A CJK ideograph that
no token grammar but `char` can read (after traditional->simplified) and that neither the
pre- nor the post-processor changes is always a one-character `char` token and comes out as
itself; both of its sides are token boundaries in every path. Some ideographs are read by other
tokens only together with a digit (team names before a score): they count as inert in
texts without a digit (ASCII or full-width). The text is cut into runs of inert ideographs, which are copied,
and the segments between them, which go to the reference.

English (tn.english): the tagger is  delete(" ")* (token (punctuation+ | delete(space)*))*  and
the verbaliser puts one space between tokens unless the next token is punctuation. Take a run of
spaces (U+0020 only) between a word a that ends with an ASCII letter and a word b that begins
with one. Punctuation tokens need a punctuation mark and word tokens contain no space, so the run
is either deleted between two tokens or read inside one token whose input has letter, spaces,
letter. The derivation lists, for every token grammar, each such letter-space-letter occurrence
that has no ASCII digit before it in the token, as a pair (letter run before, letter run after);
a token may start inside `a` or end inside `b`, so the cut is refused when any listed left run
ends `a` and its right run starts `b`. Occurrences after a digit are not finite (the measure
grammar's units: "5 sq ft"); we never cut to the right of the text's first ASCII digit, which
excludes them. Where the run is a boundary in every path, the verbaliser gives left output + " "
+ right output (the right side starts with a letter, so its first token is not punctuation).

Plain words (English): a piece that is one word of ASCII letters, not a concatenation of the
letter strings another token reads whole (`not_word_letter_strings`: the whitelist's "TV", "Mr",
...), is written out as itself without running the grammar. On the compiled tagger, over all
such words at once, the derivation proves that every tagging with a `w { v: "<letters>" }`
output weighs exactly 100 and copies the input, and that every other tagging weighs at least 101
(a word token is 100, a whitelist token 1 and more, so a mix of the two is more than 100 and only
concatenations of not-word strings can beat the word). The piece's output from the reference is
therefore the word itself, as the reference would give it; the cut argument above does the rest.
The margin of 1 is far above float32 rounding of the running sum in texts up to MAX_PLAIN_TEXT
characters.

Templates (English): most pieces that are not one plain word are words with punctuation ("times,
it", "(hello)", '"Well,"'). In a piece made of ASCII letters, spaces and the marks
`template_punctuation` only (marks the punctuation grammar reads and the word grammar does not,
checked), with no mark between two letters ("e.g"), a plain word whose neighbours are the piece's
edges or marks (followed by a space or the end; or, before it, marks and spaces, or marks after a
space or the start) is replaced by the stand-in `template_stand_in` ("z"), unless a token other
than `word` can read across one of its edges: the derivation lists every letter run that a token
reads next to marks in such inputs, with the characters beside the marks (`mark_crossings`: the
whitelist's "Dr" of "Dr.", initials "A. B.", "<any word>, TN" before a state abbreviation), and a
word that begins or ends with a listed run in that context is kept. A replaced word is then a
token boundary on both sides in every path, and read as its own `w { v: "<word>" }` it costs
exactly 100 on one arc, as the stand-in does: the paths of the piece that read the replaced words
so and the paths of the template that read "z" so correspond one to one, with the same float32
sums, and every other path is at least 1 dearer in both (the plain-word proof). The template is
tagged by the reference tagger (remembered per template: "z, z" serves every "word, word") and
accepted only when every path with another output weighs strictly more; then the piece's best
path is unique too and reads the words where the template reads "z". The words are put back into
their `w` tokens, and the reference verbaliser writes the result.

Rounding (why texts with digits are not cut): the tagger's weights are float32 and the reference
keeps the first path it finds among those whose float32 sums are equal. Several grammars offer
alternatives a hair apart (cardinals with and without "and" differ by 0.0001); over a long
sentence the running sum reaches thousands (100 per word token), where float32 steps are
0.0002-0.0005, so the two alternatives round to the same sum and the search order decides. The
same number can therefore come out differently alone and inside a long sentence (seen in our
differential check: "849418148307 ..." is "... three hundred and seven" alone but "... three
hundred seven" after 60 words). The factorisation above holds in exact arithmetic only, so a text
with a digit (ASCII, or full-width for Chinese) goes to the reference whole; such near-ties were
only found in number grammars. Cut texts are compared with the reference by the differential check
(`tools/check_text_fast_path.py`, tens of thousands of sentences per language) and by the CI test
on a fixed sample.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections import defaultdict
from pathlib import Path

log = logging.getLogger(__name__)

FACTS_PATH = Path(__file__).with_name("text_tn_facts.json")
MEMO_LIMIT = 200_000  # pieces remembered per normaliser; the memo is cleared when full
# Plain words are written out only in texts up to this length, where the tagger's running sum
# stays below ~2e6 (100 per token), float32 steps stay below 0.25 and the 1.0 margin holds.
MAX_PLAIN_TEXT = 20_000

_ASCII_WORD = re.compile(r"[A-Za-z]+\Z")
_ASCII_LETTER = re.compile(r"[A-Za-z]")
_SPACE_RUN = re.compile(r"( +)")
_ASCII_DIGIT = re.compile(r"[0-9]")
DIGITS_ZH = "0123456789０１２３４５６７８９"  # what the Chinese number grammar reads as digits
_ZH_DIGIT = re.compile(f"[{DIGITS_ZH}]")


_LETTER_RUN = re.compile(r"[A-Za-z]+")


@functools.lru_cache(maxsize=1)
def _byte_sigma():
    """Every byte string, as an acceptor (built once per process)."""
    import pynini
    from pynini.lib import byte

    return pynini.closure(byte.BYTE).optimize()


def _final_distance(fst) -> float:
    """The float32 weight of the cheapest path, summed from the start as shortest paths sum."""
    import pynini

    distance = pynini.shortestdistance(fst)
    best = float("inf")
    for state in fst.states():
        final = fst.final(state)
        if state < len(distance) and float(final) != float("inf"):
            best = min(best, float(pynini.times(distance[state], final)))
    return best


def load_facts(path: Path | None = None) -> dict:
    return json.loads(Path(path or FACTS_PATH).read_text(encoding="utf-8"))


class PieceMemo:
    """A bounded per-process memo of piece -> compute(piece) (thread-safe enough: dict ops)."""

    def __init__(self, compute, limit: int = MEMO_LIMIT):
        self.compute = compute
        self.limit = limit
        self.table: dict = {}
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self.table.clear()
        self.hits = self.misses = 0

    def __call__(self, piece: str):
        try:
            out = self.table[piece]
        except KeyError:
            pass
        else:
            self.hits += 1
            return out
        self.misses += 1
        out = self.compute(piece)
        if len(self.table) >= self.limit:
            self.table.clear()
        self.table[piece] = out
        return out


def _char_class(chars) -> str:
    """A regex character class matching exactly `chars` (ranges merged)."""
    codes = sorted({ord(c) for c in chars})
    parts, i = [], 0
    while i < len(codes):
        j = i
        while j + 1 < len(codes) and codes[j + 1] == codes[j] + 1:
            j += 1
        a, b = codes[i], codes[j]
        parts.append(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}")
        i = j + 1
    return "[" + "".join(parts) + "]"


class ChineseFastPath:
    """Texts without a digit: cut at inert ideographs (copied as they are) and normalise the
    segments between them. Texts with a digit go to the reference whole (see "Rounding").

    Ideographs of `excluded` are read by some token without a digit (ASCII or full-width), so
    they are never inert; the others (outside `excluded_with_digit` too, or in a text without a
    digit) can only be read by `char`.
    """

    def __init__(self, reference, facts: dict):
        if facts.get("digits") != DIGITS_ZH:
            raise ValueError("facts were derived with another digit class")
        lo, hi = facts["ideograph_range"]
        inert = frozenset(chr(c) for c in range(lo, hi + 1)) - set(facts["excluded"])
        self.inert_run = re.compile(f"({_char_class(inert)}+)")
        self.reference = reference
        self.memo = PieceMemo(reference.normalize)

    def normalize(self, text: str) -> str:
        if _ZH_DIGIT.search(text):
            return self.memo(text)
        parts = self.inert_run.split(text)  # [segment, inert run, segment, ..., segment]
        return "".join(part if i % 2 else (self.memo(part) if part else "") for i, part in enumerate(parts))


class EnglishFastPath:
    """Cut at space runs between letter-only words that no token can cross; normalise the pieces."""

    def __init__(self, reference, facts: dict):
        self.reference = reference
        # (last letter of the left run, first letter of the right run) -> [(left run, right run)]
        self.crossings: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        for entry in facts["span_pairs"]:
            left, right = entry.split("|")
            self.crossings[(left[-1], right[0])].append((left, right))
        self.not_word = frozenset(facts["not_word_letter_strings"])
        self.not_word_longest = max(map(len, self.not_word), default=0)
        self.memo = PieceMemo(reference.normalize)
        self.plain_words = 0
        marks = re.escape(facts["template_punctuation"])
        self.stand_in = facts["template_stand_in"]
        self.stand_in_token = f'w {{ v: "{self.stand_in}" }}'
        self.prose = re.compile(f"[A-Za-z {marks}]*\\Z")
        self.glued = re.compile(f"[A-Za-z][{marks}]+[A-Za-z]")
        self.marks_then_space = re.compile(f"[{marks}]+(?: |\\Z)")
        self.marks_spaces_before = re.compile(f"[{marks}]+ +\\Z")
        self.opening_marks_before = re.compile(f"(?:\\A| )[{marks}]+\\Z")
        # context -> letter runs ("*": any) that a token reads together with that context
        self.runs_before: dict[str, set[str]] = defaultdict(set)
        self.runs_after: dict[str, set[str]] = defaultdict(set)
        crossings = facts["mark_crossings"]
        for entry in crossings["before_marks"]:
            run, context = entry.split("|", 1)
            self.runs_before[context].add(run)
        for entry in crossings["after_marks_and_spaces"] + crossings["after_opening_marks"]:
            context, run = entry.rsplit("|", 1)
            self.runs_after[context].add(run)
        self.longest_context = max(map(len, [*self.runs_before, *self.runs_after]), default=0)
        self.templates = PieceMemo(self.tag_if_unique)
        self.templated = 0

    def is_plain_word(self, piece: str) -> bool:
        """ASCII letters only, and not a concatenation of letter strings another token reads.

        Such a piece is tagged `w { v: "<piece>" }` and comes out as itself (proved on the
        compiled tagger by `tools/derive_tn_fast_path.py`, see "Plain words" above).
        """
        if not _ASCII_WORD.match(piece):
            return False
        n, longest, not_word = len(piece), self.not_word_longest, self.not_word
        reach = [True] + [False] * n  # reach[i]: piece[:i] is a concatenation of not-word strings
        for i in range(n):
            if reach[i]:
                for j in range(i + 1, min(n, i + longest) + 1):
                    if piece[i:j] in not_word:
                        reach[j] = True
        return not reach[n]

    def _crosses(self, table: dict, contexts, word: str, at_end: bool) -> bool:
        for context in contexts:
            runs = table.get(context)
            if runs and ("*" in runs or any(word.endswith(r) if at_end else word.startswith(r) for r in runs)):
                return True
        return False

    def can_stand_in(self, piece: str, start: int, end: int) -> bool:
        """True when the word piece[start:end] can be replaced by any other plain word: nothing
        but the word grammar reads across its edges (see "Templates" above)."""
        word = piece[start:end]
        if not self.is_plain_word(word):
            return False
        if end < len(piece):
            if not self.marks_then_space.match(piece, end):
                return False
            after = (piece[end:end + k] for k in range(1, self.longest_context + 1) if end + k <= len(piece))
            if self._crosses(self.runs_before, after, word, at_end=True):
                return False
        if start > 0:
            head = piece[:start]
            if not (self.marks_spaces_before.search(head) or self.opening_marks_before.search(head)):
                return False
            before = (head[-k:] for k in range(1, min(self.longest_context, len(head)) + 1))
            if self._crosses(self.runs_after, before, word, at_end=False):
                return False
        return True

    def template(self, piece: str) -> tuple[str, list[str]] | None:
        """`piece` with every word that can stand in replaced by the stand-in, and those words;
        None when the piece is not prose of letters, spaces and marks, or nothing stands in."""
        if not self.prose.match(piece) or self.glued.search(piece):
            return None
        parts, words, last = [], [], 0
        for m in _LETTER_RUN.finditer(piece):
            if self.can_stand_in(piece, m.start(), m.end()):
                parts += [piece[last:m.start()], self.stand_in]
                words.append(m.group())
                last = m.end()
            elif m.group() == self.stand_in:
                return None  # the stand-in must mark replaced words only
        if not words:
            return None
        parts.append(piece[last:])
        return "".join(parts), words

    def tag_if_unique(self, text: str) -> str | None:
        """The reference tagger's output for `text` when its cheapest path has no tie: every
        path with another output weighs strictly more (float32, summed as the tagger sums)."""
        import pynini

        lattice = pynini.escape(text) @ self.reference.tagger
        tagged = pynini.shortestpath(lattice, nshortest=1, unique=True).string()
        others = pynini.compose(lattice, pynini.difference(_byte_sigma(), pynini.escape(tagged)))
        if others.num_states() and not _final_distance(others) > _final_distance(lattice):
            return None
        return tagged

    def piece_output(self, piece: str) -> str:
        if self.is_plain_word(piece):
            self.plain_words += 1
            return piece
        found = self.template(piece)
        if found is not None:
            template, words = found
            tagged = self.templates(template)
            if tagged is not None:
                parts = tagged.split(self.stand_in_token)
                if len(parts) == len(words) + 1:
                    self.templated += 1
                    joined = [parts[0]]
                    for word, part in zip(words, parts[1:]):
                        joined += [f'w {{ v: "{word}" }}', part]
                    return self.reference.verbalize("".join(joined))
        return self.memo(piece)

    def can_cut(self, a: str, b: str) -> bool:
        """True when no token of the grammar can read across the spaces between words a and b
        (a ends with an ASCII letter, b begins with one; what else they hold does not matter)."""
        if not (a and b and _ASCII_LETTER.match(a[-1]) and _ASCII_LETTER.match(b[0])):
            return False
        for left, right in self.crossings.get((a[-1], b[0]), ()):
            if a.endswith(left) and b.startswith(right):
                return False
        return True

    def pieces(self, text: str) -> list[str]:
        """`text` cut at every provably safe space run (the runs themselves are dropped)."""
        digit = _ASCII_DIGIT.search(text)
        limit = digit.start() if digit else len(text)  # never cut to the right of the first digit
        parts = _SPACE_RUN.split(text)  # [word, run, word, ..., word]; words may be ""
        out, current, offset = [], [parts[0]], len(parts[0])
        for k in range(1, len(parts), 2):
            run, a, b = parts[k], parts[k - 1], parts[k + 1]
            if offset + len(run) <= limit and self.can_cut(a, b):
                out.append("".join(current))
                current = [b]
            else:
                current += [run, b]
            offset += len(run) + len(b)
        out.append("".join(current))
        return out

    def normalize(self, text: str) -> str:
        if _ASCII_DIGIT.search(text):
            return self.memo(text)  # numbers: the whole text (see "Rounding")
        if len(text) > MAX_PLAIN_TEXT:
            return " ".join(self.memo(p) for p in self.pieces(text))
        return " ".join(self.piece_output(p) for p in self.pieces(text))


class FastNormalizer:
    """Drop-in for a WeTextProcessing normaliser: `normalize(text)` gives the reference's output.

    Falls back to the reference for the whole text when a piece raises (so failures behave as
    the reference does) and altogether when the stored facts do not match the installed grammar.
    """

    def __init__(self, reference, language: str, facts: dict | None, enabled: bool = True):
        self.reference = reference
        self.language = language
        self.path = None
        if enabled and facts is not None:
            self.path = (ChineseFastPath(reference, facts["zh"]) if language == "zh"
                         else EnglishFastPath(reference, facts["en"]))

    def normalize(self, text: str) -> str:
        if self.path is None:
            return self.reference.normalize(text)
        try:
            return self.path.normalize(text)
        except Exception:  # noqa: BLE001 - any failure of a piece: the whole text decides
            return self.reference.normalize(text)  # raises as the reference would, or succeeds

    def memo_stats(self) -> dict:
        if self.path is None:
            return {}
        memo = self.path.memo
        return {"hits": memo.hits, "misses": memo.misses, "size": len(memo.table)}



def facts_for_installed_grammar(grammar_files: dict[str, Path]) -> dict | None:
    """The stored facts if they were derived from the installed package and these compiled
    grammar files ({"en_tagger": path, ...}); otherwise None (with a warning)."""
    import hashlib
    from importlib import metadata

    try:
        facts = load_facts()
    except (OSError, ValueError) as e:
        log.warning("TN fast path off: cannot read %s (%s)", FACTS_PATH, e)
        return None
    versions = {"version": metadata.version("WeTextProcessing"), "pynini": metadata.version("pynini")}
    for key, value in versions.items():
        if facts.get(key) != value:
            log.warning("TN fast path off: facts derived for %s %s, installed %s", key, facts.get(key), value)
            return None
    for key, path in grammar_files.items():
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if facts.get(f"{key}_sha256") != digest:
            log.warning("TN fast path off: %s differs from the grammar the facts were derived from", path)
            return None
    return facts
