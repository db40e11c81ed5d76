"""Exact fast paths around WeTextProcessing's normalisers: the same output, less work.

`FastNormalizer(reference, language, facts).normalize(text) == reference.normalize(text)` for
every text. Three means, each exact:

- **The search** (preprocess/text_search.py): the reference's own two shortest-path searches,
  done without building the whole composition of the text with the grammar and taken in the
  order OpenFst takes them, so that ties between paths of equal float32 weight end as in the
  reference. Every text of both languages, numbers included.
- **A per-process memo** of texts (English) and pieces (Chinese).
- **Chinese inert ideographs**, copied without any search. Both grammars work in two passes: the
  tagger reads the input as a sequence of tokens and keeps the path of least total weight, and
  the verbaliser rewrites each token on its own. In the Chinese grammar (our options) tokens
  follow each other with nothing between them. A CJK ideograph that no token grammar but `char`
  can read (after traditional->simplified) and that neither the pre- nor the post-processor
  changes is a one-character `char` token in every path and comes out as itself: both its sides
  are token boundaries, so the cheapest path of the text is the cheapest path of each segment
  between such runs, and the output is the segments' outputs joined with the runs. Some
  ideographs are read by other tokens only together with a digit (team names before a score):
  they count as inert in texts without a digit (ASCII or full-width); a text with a digit is
  searched whole, because the tagger's float32 sums round differently over a whole text than
  over its pieces (a number's two readings, 0.0001 apart, tie after enough words). The facts
  come from the package's own token grammars (`tools/derive_tn_fast_path.py`, stored in
  `text_tn_facts.json` with the versions and grammar hashes they were derived from); when the
  installed grammar differs, the copying is off and every Chinese text is searched whole.

The differential check (`tools/check_text_fast_path.py`, tens of thousands of sentences per
language) and a CI test on a fixed sample compare all of it with the reference.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from .text_search import SearchedNormalizer, search_supported

log = logging.getLogger(__name__)

FACTS_PATH = Path(__file__).with_name("text_tn_facts.json")
MEMO_LIMIT = 200_000  # texts or pieces remembered per normaliser; the memo is cleared when full
DIGITS_ZH = "0123456789０１２３４５６７８９"  # what the Chinese number grammar reads as digits
_ZH_DIGIT = re.compile(f"[{DIGITS_ZH}]")


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
    segments between them. Texts with a digit are normalised whole (module docstring).

    Ideographs of `excluded` are read by some token without a digit (ASCII or full-width), so
    they are never inert; the others (outside `excluded_with_digit` too, or in a text without a
    digit) can only be read by `char`.
    """

    def __init__(self, normalise, facts: dict):
        if facts.get("digits") != DIGITS_ZH:
            raise ValueError("facts were derived with another digit class")
        lo, hi = facts["ideograph_range"]
        inert = frozenset(chr(c) for c in range(lo, hi + 1)) - set(facts["excluded"])
        self.inert_run = re.compile(f"({_char_class(inert)}+)")
        self.memo = PieceMemo(normalise)

    def normalize(self, text: str) -> str:
        if _ZH_DIGIT.search(text):
            return self.memo(text)
        parts = self.inert_run.split(text)  # [segment, inert run, segment, ..., segment]
        return "".join(part if i % 2 else (self.memo(part) if part else "") for i, part in enumerate(parts))


class FastNormalizer:
    """Drop-in for a WeTextProcessing normaliser: `normalize(text)` gives the reference's output.

    `enabled=False` is the reference alone. Falls back to the reference for the whole text when a
    piece raises, so failures behave as the reference's do.
    """

    def __init__(self, reference, language: str, facts: dict | None, enabled: bool = True):
        self.reference = reference
        self.language = language
        self.enabled = enabled
        searchable = enabled and hasattr(reference, "tagger") and search_supported()
        self.engine = SearchedNormalizer(reference) if searchable else reference
        self.path = None
        if enabled and language == "zh" and facts is not None:
            self.path = ChineseFastPath(self.engine.normalize, facts["zh"])
        self.memo = self.path.memo if self.path is not None else PieceMemo(self.engine.normalize)

    @property
    def searched(self) -> bool:
        return isinstance(self.engine, SearchedNormalizer)

    def normalize(self, text: str) -> str:
        if not self.enabled:
            return self.reference.normalize(text)
        try:
            return self.path.normalize(text) if self.path is not None else self.memo(text)
        except Exception:  # noqa: BLE001 - any failure of a piece: the whole text decides
            return self.reference.normalize(text)  # raises as the reference would, or succeeds

    def memo_stats(self) -> dict:
        return {"hits": self.memo.hits, "misses": self.memo.misses, "size": len(self.memo.table)}


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
