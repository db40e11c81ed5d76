"""The exact search (preprocess/_fstpath.c, preprocess/text_search.py) against pynini itself.

`CheapestPath(fst).output(text)` must be `shortestpath(escape(text) @ fst, nshortest=1,
unique=True).string()` for every fst and text, ties included: the random grammars below draw
weights from a few values so that many paths tie exactly and only the search order decides.
"""

import random

import pynini
import pytest

from preprocess.text_search import CheapestPath, SearchedNormalizer, search_supported


def reference_output(fst, text):
    try:
        return pynini.shortestpath(pynini.escape(text) @ fst, nshortest=1, unique=True).string()
    except pynini.FstOpError:
        return None  # no path reads the text


def random_fst(rng, weights, n_states=6, n_arcs=16, labels="abc"):
    f = pynini.Fst()
    states = [f.add_state() for _ in range(n_states)]
    f.set_start(states[0])
    kind = f.weight_type()
    for _ in range(n_arcs):
        ilabel = 0 if rng.random() < 0.3 else ord(rng.choice(labels))
        olabel = 0 if rng.random() < 0.3 else ord(rng.choice(labels))
        src, dst = rng.choice(states), rng.choice(states)
        if ilabel == 0 and rng.random() < 0.9:  # mostly forward: few epsilon cycles
            src, dst = min(src, dst), max(src, dst) + (src == dst and dst < states[-1])
        f.add_arc(src, pynini.Arc(ilabel, olabel, pynini.Weight(kind, rng.choice(weights)), dst))
    for s in rng.sample(states, 2):
        f.set_final(s, pynini.Weight(kind, rng.choice(weights)))
    return f.arcsort("ilabel")


def random_texts(rng, count=6, labels="abc"):
    return [""] + ["".join(rng.choice(labels) for _ in range(rng.randint(1, 7))) for _ in range(count)]


def compare_on_random_grammars(weights, seed, grammars=250):
    rng = random.Random(seed)
    compared = cyclic = with_path = 0
    for _ in range(grammars):
        fst = random_fst(rng, weights)
        search = CheapestPath(fst)
        for text in random_texts(rng):
            try:
                got = search.output(text)
            except NotImplementedError:
                # an epsilon cycle: the reference searches it another way (and never ends when
                # the cycle weighs less than 0)
                cyclic += 1
                continue
            expected = reference_output(fst, text)
            assert got == expected, (text, fst.write_to_string())
            compared += 1
            with_path += expected is not None
    return compared, cyclic, with_path


def test_search_is_built():
    assert search_supported()


@pytest.mark.parametrize("seed", [1, 2])
def test_ties_end_as_in_the_reference(seed):
    compared, cyclic, with_path = compare_on_random_grammars((0.0, 1.0, 2.0), seed)
    assert compared > 1000 and with_path > 300, (compared, cyclic, with_path)


def test_negative_and_small_weights():
    compared, _, with_path = compare_on_random_grammars((0.0, 1.0, -1.0, 0.0001, 100.0, -0.0001), 3)
    assert compared > 1000 and with_path > 300


def test_unweighted_lattices_take_the_lifo_order():
    compared, _, with_path = compare_on_random_grammars((0.0,), 4)
    assert compared > 1000 and with_path > 300


def test_float32_sums_round_as_in_the_reference():
    """Two readings 0.0001 apart tie once the running sum is large: which one is kept depends on
    the order of the search, not on the exact difference."""
    f = pynini.Fst()
    s0, s1, s2 = f.add_state(), f.add_state(), f.add_state()
    f.set_start(s0)
    w = lambda x: pynini.Weight("tropical", x)
    f.add_arc(s0, pynini.Arc(ord("x"), ord("x"), w(100.0), s0))  # a word, 100 each
    f.add_arc(s0, pynini.Arc(ord("n"), ord("A"), w(1.0001), s1))  # "and" reading
    f.add_arc(s0, pynini.Arc(ord("n"), ord("B"), w(1.0), s2))
    f.set_final(s1, w(0.0))
    f.set_final(s2, w(0.0))
    f.arcsort("ilabel")
    search = CheapestPath(f)
    for words in (0, 1, 100, 10_000, 100_000):
        text = "x" * words + "n"
        assert search.output(text) == reference_output(f, text), words
    assert search.output("n").endswith("B") and search.output("x" * 100_000 + "n") is not None


def test_a_cycle_is_left_to_the_reference():
    f = pynini.Fst()
    s0, s1 = f.add_state(), f.add_state()
    f.set_start(s0)
    one = pynini.Weight.one("tropical")
    f.add_arc(s0, pynini.Arc(0, ord("a"), one, s1))
    f.add_arc(s1, pynini.Arc(0, ord("b"), pynini.Weight("tropical", 1.0), s0))
    f.add_arc(s0, pynini.Arc(ord("c"), ord("c"), one, s0))
    f.set_final(s0, one)
    search = CheapestPath(f.arcsort("ilabel"))
    with pytest.raises(NotImplementedError):
        search.output("c")

    class Reference:
        tagger, verbalizer, ordertype = f, f, "tn"

        def __init__(self):
            self.calls = []

        def normalize(self, text):
            self.calls.append(text)
            return "reference"

    reference = Reference()
    assert SearchedNormalizer(reference).normalize("c") == "reference"
    assert reference.calls == ["c"]


def test_rejects_what_it_cannot_read():
    from preprocess._fstpath import FstPath

    with pytest.raises(ValueError):
        FstPath(b"not an fst")
    unsorted = pynini.Fst()
    s = unsorted.add_state()
    unsorted.set_start(s)
    unsorted.add_arc(s, pynini.Arc(ord("b"), 0, pynini.Weight.one("tropical"), s))
    unsorted.add_arc(s, pynini.Arc(ord("a"), 0, pynini.Weight.one("tropical"), s))
    with pytest.raises(ValueError, match="sorted"):
        CheapestPath(unsorted)
