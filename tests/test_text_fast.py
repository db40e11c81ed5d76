"""The exact TN fast path (preprocess/text_fast.py) against WeTextProcessing itself.

The sample below is small (the reference is the slow side); `tools/check_text_fast_path.py`
runs the same comparison on tens of thousands of sentences per language.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from preprocess import text as T
from preprocess import text_fast as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from check_text_fast_path import prepare
from text_sentences import sentences


@pytest.fixture(scope="module")
def fast():
    T.TextNormalizer().load()
    return {lang: T.get_normaliser(lang) for lang in ("en", "zh")}


def test_fast_path_is_on_for_the_installed_grammar(fast):
    for lang in ("en", "zh"):
        assert fast[lang].path is not None, f"{lang}: stored facts do not match the installed grammar"


def test_facts_hold_what_the_grammar_reads():
    facts = F.load_facts()
    pairs = set(facts["en"]["span_pairs"])
    assert "call|me" in pairs  # telephone: "call me 555 1234"
    assert any(p.startswith("per|") for p in pairs)  # measure: "per ft"
    assert facts["en"]["grammars"]["word"]["crossing_states"] == 0
    en = facts["en"]
    assert en["plain_word_check"]["word_weight"] == 100.0 and en["plain_word_check"]["other_min_weight"] >= 101.0
    assert {"TV", "Mr"} <= set(en["not_word_letter_strings"])
    assert "Dr|." in en["mark_crossings"]["before_marks"]
    assert "*|, TN" in en["mark_crossings"]["before_marks"]  # any word, a comma, a state
    assert "," in en["template_punctuation"] and "[" not in en["template_punctuation"]  # the word grammar reads "["
    zh = facts["zh"]
    for ch in "儿臺這":  # erhua (whitelist), two traditional forms (changed by the pre-processor)
        assert ch in zh["excluded"], ch
    for ch in "年元个":  # units and dates: read by other tokens only next to a digit
        assert ch in zh["excluded_with_digit"] and ch not in zh["excluded"], ch
    for ch in "你我好很":
        assert ch not in zh["excluded"] and ch not in zh["excluded_with_digit"], ch


def test_english_cuts(fast):
    path = fast["en"].path
    assert path.can_cut("hello", "world")
    assert not path.can_cut("call", "me")  # a telephone token can read "call me 555 ..."
    assert not path.can_cut("recall", "meat")  # a token may start inside a word and end inside the next
    assert not path.can_cut("hello,", "world")  # punctuation: not a letter-only word
    assert path.pieces("the  cat sat") == ["the", "cat", "sat"]
    assert path.pieces(" the cat ") == [" the", "cat "]
    # never cut to the right of the first digit (addresses: "12 Baker Street, any city, CA 95051")
    assert path.pieces("we went to 12 Baker Street today") == ["we", "went", "to 12 Baker Street today"]
    assert path.pieces("a\tb c d") == ["a\tb", "c", "d"]  # only U+0020 runs are cut; letters touch this one


def test_cuts_between_words_with_marks(fast):
    path = fast["en"].path
    assert path.can_cut("of", "times,")  # the space touches letters on both sides
    assert path.can_cut('"Well,"', "said") is False  # a mark touches the space: a punctuation token reads it
    assert not path.can_cut("call", "me,")  # a span pair still refuses
    assert path.pieces("the age of wisdom, it was") == ["the", "age", "of", "wisdom, it", "was"]


def test_plain_words(fast):
    path = fast["en"].path
    reference = T.get_tn("en")
    for word in ("hello", "Zebra", "a", "I", "qwxz", "Mrx", "tv"):
        assert path.is_plain_word(word), word
        assert reference.normalize(word) == word, word  # what the derivation proved
    for word in ("TV", "Mr", "TVMr", "", "a1", "hello,"):
        assert not path.is_plain_word(word), word
    assert reference.normalize("TV") != "TV" and reference.normalize("TVMr") != "TVMr"


def test_templates(fast):
    path = fast["en"].path
    assert path.template("fox, jumps") == ("z, z", ["fox", "jumps"])
    assert path.template("(hello) there") == ("(z) z", ["hello", "there"])
    # "Dr." is the whitelist's; "Nashville, TN" is a whitelist token (a word, a comma, a state)
    assert path.template("Dr. Smith.") == ("Dr. z.", ["Smith"])
    assert path.template("Nashville, TN.") is None
    assert path.template("e.g. this") is None  # a mark between two letters: no template
    assert path.template("x\ty, z") is None  # not letters, spaces and marks only
    assert path.template("z y, x") is None  # a kept word equal to the stand-in
    assert path.template("y, z") == ("z, z", ["y", "z"])  # a replaced one is fine
    reference = T.get_tn("en")
    for text in ('"Well," said the old man, "I suppose we shall wait."', "I met Dr. Smith, then left.",
                 "They drove to Nashville, TN, and stayed.", "A. B. Smith wrote it; C. D. Jones read it.",
                 "Wait... what?! (Really?) Yes: really.", "He said \u201cno\u201d \u2014 twice\u2026",
                 "fox, jumps", "St. Louis, MO is far.", "Fri - Mon, or Sat.", "z, z", "Mr. Brown and Mrs. Green."):
        assert fast["en"].normalize(text) == reference.normalize(text), text
    assert path.templated > 0


def test_plain_word_proof_fails_without_the_whitelist():
    """The proof is a check that can fail: without the whitelist's letter strings, "TV" would count
    as plain, and the tagger has a tagging of it (whitelist, weight 1) far below 101."""
    from derive_tn_fast_path import check_plain_words

    with pytest.raises(RuntimeError, match="non-word tagging"):
        check_plain_words(["Mr"])


def test_chinese_cuts_keep_digit_tokens_whole(fast):
    zh = fast["zh"]
    reference = T.get_tn("zh")
    for text in ("我们在2024年3月5日见面", "皇马3:1巴萨", "这个苹果5元一斤", "你好，世界。"):
        assert zh.normalize(text) == reference.normalize(text), text


def test_number_in_a_long_sentence_is_not_cut(fast):
    """float32 rounding makes the reference read a number differently after many words (module
    docstring, "Rounding"); texts with a digit therefore go to the reference whole."""
    words = " ".join(["picture young now hand point email trail birds here want only boy"] * 5)
    text = words + " on 849418148307 the 1990s example"
    reference = T.get_tn("en")
    assert fast["en"].path.pieces(text)[-1].endswith("example")
    assert fast["en"].normalize(text) == reference.normalize(text)


SAMPLE = {"en": 80, "zh": 120}  # the English reference is ~4x slower per sentence


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_differential_sample(fast, lang):
    reference = T.get_tn(lang)
    texts = [prepare(s, lang) for s in sentences(lang, SAMPLE[lang], seed=20261202)]
    differ = []
    for text in texts:
        try:
            expected = reference.normalize(text)
        except Exception as e:  # noqa: BLE001 - the reference's failures are part of its behaviour
            expected = type(e)
        try:
            got = fast[lang].normalize(text)
        except Exception as e:  # noqa: BLE001
            got = type(e)
        if got != expected:
            differ.append((text, expected, got))
    assert not differ, differ[:5]


def test_piece_failure_falls_back_to_the_whole_text():
    class Reference:
        def __init__(self):
            self.calls = []

        def normalize(self, text):
            self.calls.append(text)
            if text == "boom":
                raise ValueError("no path")
            return text.upper()

    facts = F.load_facts()
    reference = Reference()
    n = F.FastNormalizer(reference, "en", facts)
    # "quiet" is a plain word (no call); "boom" is not ("TV" is a whitelist word, see below), so it
    # goes to the reference, fails, and the whole text goes in
    n.path.not_word = n.path.not_word | {"boom"}
    assert n.normalize("quiet boom") == "QUIET BOOM"
    assert reference.calls == ["boom", "quiet boom"]


def test_memo_returns_the_first_answer():
    seen = []
    memo = F.PieceMemo(lambda s: seen.append(s) or s[::-1], limit=2)
    assert memo("abc") == "cba" and memo("abc") == "cba"
    assert seen == ["abc"] and memo.hits == 1 and memo.misses == 1
    memo("x"), memo("y")  # over the limit: cleared, still correct
    assert memo("abc") == "cba" and len(memo.table) <= 2


def test_fast_path_off_when_facts_do_not_match(monkeypatch, tmp_path):
    facts = F.load_facts()
    facts["version"] = "0.0.0"
    bad = tmp_path / "facts.json"
    bad.write_text(json.dumps(facts), encoding="utf-8")
    monkeypatch.setattr(F, "FACTS_PATH", bad)
    assert F.facts_for_installed_grammar({}) is None


def test_env_switch_turns_the_fast_path_off():
    code = "import preprocess.text as T; print(T.get_normaliser('en').path is None)"
    for value, off in (("0", "True"), ("1", "False")):
        env = dict(os.environ, PREPROCESS_TN_FAST=value)
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                             check=True, env=env)
        assert out.stdout.strip() == off


@pytest.mark.skipif(os.environ.get("PREPROCESS_SLOW_TESTS") != "1",
                    reason="rebuilds both grammars (~2 min); set PREPROCESS_SLOW_TESTS=1")
def test_stored_facts_equal_a_fresh_derivation():
    from derive_tn_fast_path import derive

    fresh, stored = derive(), F.load_facts()
    for key in ("version", "pynini", "en_tagger_sha256", "zh_tagger_sha256"):
        assert fresh[key] == stored[key]
    for key in ("span_pairs", "not_word_letter_strings", "template_punctuation", "mark_crossings",
                "template_stand_in"):
        assert fresh["en"][key] == stored["en"][key], key
    for key in ("excluded", "excluded_with_digit"):
        assert fresh["zh"][key] == stored["zh"][key]
