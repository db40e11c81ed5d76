"""WeTextProcessing's `normalize`, with its two searches done by `preprocess/_fstpath.c`.

The reference (`tn.processor.Processor`) normalises a text in two steps:

    tagged = shortestpath(escape(text) @ tagger, nshortest=1, unique=True).string()
    output = shortestpath(escape(TokenParser(ordertype).reorder(tagged)) @ verbalizer, ...).string()

OpenFst composes the whole string with the grammar before it searches, ~900 states per byte
of English of which ~30 survive the trim: that is the ~1 ms per character. `_fstpath.FstPath`
builds only the states that can still read the next byte and then searches what survives in
the order OpenFst's search takes it (the file's header states each step), so that among paths of
equal float32 weight -- common: a space may go to either of two punctuation tokens, a long
sentence absorbs a 0.0001 difference between two readings of a number -- it keeps the one the
reference keeps. The text between the two searches is the reference's own `TokenParser`.

When no path reads the text, `normalize` raises the reference's error (pynini's FstOpError).
Where the search cannot follow the reference (a lattice with a cycle, an output that is not
UTF-8, a NUL character), it asks the reference. The emulation is of OpenFst as pynini
`PYNINI_VERSION` ships it; with another pynini the reference does everything.
"""

from __future__ import annotations

import logging
from importlib import metadata

log = logging.getLogger(__name__)

PYNINI_VERSION = "2.1.7"  # the OpenFst whose compose and shortest path _fstpath.c follows


class CheapestPath:
    """The output of the cheapest path of `escape(text) @ fst`, as pynini's shortestpath finds it."""

    def __init__(self, fst):
        import pynini

        from preprocess._fstpath import FstPath

        if fst.fst_type() != "vector":
            fst = pynini.convert(fst, "vector")
        if not fst.properties(pynini.I_LABEL_SORTED, True):
            raise ValueError("the grammar must be sorted by input label (as compose requires)")
        self.path = FstPath(fst.write_to_string())

    def output(self, text: str) -> str | None:
        """None: no path reads `text`. NotImplementedError, UnicodeDecodeError: the search
        cannot say what the reference gives (a cyclic lattice; an output that is not UTF-8)."""
        found = self.path.output(text.encode("utf-8"))
        return None if found is None else found.decode("utf-8")


def search_supported() -> bool:
    try:
        import preprocess._fstpath  # noqa: F401
    except ImportError as e:  # an install that did not build the extension
        log.warning("text normalisation runs the reference searches (slow): %s", e)
        return False
    try:
        version = metadata.version("pynini")
    except metadata.PackageNotFoundError:
        return False
    if version != PYNINI_VERSION:
        log.warning("pynini %s is installed; the exact search follows %s, so the reference "
                    "normaliser runs alone (same output, slower)", version, PYNINI_VERSION)
        return False
    return True


class SearchedNormalizer:
    """`normalize(text)` equal to `reference.normalize(text)`, searched by `CheapestPath`."""

    def __init__(self, reference):
        from tn.token_parser import TokenParser

        self.reference = reference
        self.tagger = CheapestPath(reference.tagger)
        self.verbalizer = CheapestPath(reference.verbalizer)
        self.parser = TokenParser
        self.ordertype = reference.ordertype
        self.fallbacks = 0  # texts the reference normalised instead

    def normalize(self, text: str) -> str:
        if "\x00" in text:  # pynini reads NUL as the epsilon label ("a\x00b" -> "ab"); the search, as a byte
            self.fallbacks += 1
            return self.reference.normalize(text)
        try:
            tagged = self.tagger.output(text) if text else ""
            if tagged is None:
                _no_path()
            if not tagged:
                return ""
            output = self.verbalizer.output(self.parser(self.ordertype).reorder(tagged))
            if output is None:
                _no_path()
            return output
        except (NotImplementedError, UnicodeDecodeError):
            self.fallbacks += 1
            return self.reference.normalize(text)


def _no_path():
    """What the reference raises when no path reads the text: `.string()` of an empty lattice."""
    import pynini

    raise pynini.FstOpError("Operation failed")
