"""The exact TN fast path (preprocess/text_fast.py, preprocess/text_search.py) against
WeTextProcessing itself.

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
        assert fast[lang].searched, f"{lang}: the search is off"
    assert fast["zh"].path is not None, "stored facts do not match the installed Chinese grammar"


def test_facts_hold_what_the_grammar_reads():
    zh = F.load_facts()["zh"]
    for ch in "儿臺這":  # erhua (whitelist), two traditional forms (changed by the pre-processor)
        assert ch in zh["excluded"], ch
    for ch in "年元个":  # units and dates: read by other tokens only next to a digit
        assert ch in zh["excluded_with_digit"] and ch not in zh["excluded"], ch
    for ch in "你我好很":
        assert ch not in zh["excluded"] and ch not in zh["excluded_with_digit"], ch


def test_chinese_cuts_keep_digit_tokens_whole(fast):
    zh = fast["zh"]
    reference = T.get_tn("zh")
    for text in ("我们在2024年3月5日见面", "皇马3:1巴萨", "这个苹果5元一斤", "你好，世界。"):
        assert zh.normalize(text) == reference.normalize(text), text


def test_number_in_a_long_sentence(fast):
    """float32 rounding makes the reference read a number differently after many words: the
    search must round as the reference does (preprocess/text_search.py)."""
    words = " ".join(["picture young now hand point email trail birds here want only boy"] * 5)
    reference = T.get_tn("en")
    alone, inside = "849418148307", words + " on 849418148307 the 1990s example"
    assert reference.normalize(alone).split()[-2:] == ["and", "seven"]
    assert "hundred seven" in reference.normalize(inside)  # the reading changed
    for text in (alone, inside):
        assert fast["en"].normalize(text) == reference.normalize(text)


def test_ties_end_as_in_the_reference(fast):
    """Generated texts whose cheapest paths tie exactly in float32: a search that broke the ties in
    another order (first found, position by position) wrote "twenty oh six", "S" and
    "ten am-eight pm" here instead of the reference's "two thousand six", "seconds" and
    "ten AM to eight PM"."""
    reference = T.get_tn("en")
    for text in ("During July 8, 2006 time second has friends http://that.edu/a/b?x=1 Paris mother "
                 "example phone page never June 26, 2042 hear AROUND <so if old...",
                 "Red Take Fact the 1996s \u2018where color air hands another say family girls Water door Philip!?",
                 "Mrs ran the CAR does feel Paris Paris end, others friends( 6/12 Jul 18 three feel above "
                 "Steels dog 10am-8pm\u00bb form{ side read May trail Austin"):
        expected = reference.normalize(text)
        assert fast["en"].normalize(text) == expected, text
    assert "two thousand six" in reference.normalize(
        "During July 8, 2006 time second has friends http://that.edu/a/b?x=1 Paris mother "
        "example phone page never June 26, 2042 hear AROUND <so if old...")


def test_no_path_raises_as_the_reference_does(fast):
    import pynini

    text = "\nin 1049 SEEMED does her? "  # the English tagger has no path for it
    with pytest.raises(pynini.FstOpError):
        T.get_tn("en").normalize(text)
    with pytest.raises(pynini.FstOpError):
        fast["en"].engine.normalize(text)
    # NUL is the grammars' epsilon: the reference decides such texts
    assert fast["en"].normalize("a\x00b") == T.get_tn("en").normalize("a\x00b")


SAMPLE = {"en": 80, "zh": 120}  # the English reference is ~2x slower per character


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

    reference = Reference()
    n = F.FastNormalizer(reference, "zh", F.load_facts())  # no grammar: the reference's normalize
    assert not n.searched
    # 你 and 好 are inert: copied; "boom" fails as a piece, so the whole text goes in
    assert n.normalize("你boom好") == "你BOOM好"
    assert reference.calls == ["boom", "你boom好"]


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
    code = "import preprocess.text as T; print(not T.get_normaliser('en').searched)"
    for value, off in (("0", "True"), ("1", "False")):
        env = dict(os.environ, PREPROCESS_TN_FAST=value)
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                             check=True, env=env)
        assert out.stdout.strip() == off


def test_stored_facts_equal_a_fresh_derivation():
    """Rebuilds the Chinese token grammars (about 10 s)."""
    from derive_tn_fast_path import derive

    fresh, stored = derive(), F.load_facts()
    for key in ("version", "pynini", "zh_tagger_sha256", "zh_verbalizer_sha256"):
        assert fresh[key] == stored[key]
    for key in ("excluded", "excluded_with_digit"):
        assert fresh["zh"][key] == stored["zh"][key]
