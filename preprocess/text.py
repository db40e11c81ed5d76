"""Text pipeline: cleaning, normalisation, CJK split and SentencePiece ids (contract §3).

    manifest text --clean_text--> cleaned text (stored in the output manifest)
                  --TextNormalizer.normalize(hint)--> normalised text
                  --split_cjk--> "你 好 , HELLO WORLD"
                  --SentencePiece--> ids (no BOS/EOS)

The ids must equal what the reference scripts produced for the same text and branch, so the
branch steps, regexes and the punctuation table below reproduce the reference exactly; where we
deliberately differ (language policy, placeholder order, one TN package on every OS) the reason
is given in docs/TEXT.md.

Text normalisation (TN) grammars come from WeTextProcessing (`tn.chinese` / `tn.english`), the
package the reference uses on Linux, with the reference's options. They are loaded lazily (only
when a branch needs them) and once per process. The English grammar ships prebuilt with the
package; the Chinese grammar with the reference options (erhua and interjections kept) does not,
so it is compiled once (~15 s) and cached on disk (see `tn_cache_dir`). The branches call them
through `get_normaliser`, an exact fast path with the same output (preprocess/text_fast.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import threading
import unicodedata
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

# Bump when a change here can change ids for the same input; recorded in the fingerprint.
TEXT_PIPELINE_VERSION = 1

# ---------------------------------------------------------------------------------------------
# §3.1 cleaning

# One leading "speaker 3:" / "SPK12：" tag.
SPEAKER_TAG = re.compile(r"^\s*(?:speaker|spk)\s*\d+\s*[:：]\s*", re.IGNORECASE)


def clean_text(text: str) -> str:
    """Manifest text -> cleaned, un-normalised text (what the output manifest stores)."""
    if text is None:
        return ""
    text = text.strip().replace("\u3000", " ").replace("\u00a0", " ")
    text = SPEAKER_TAG.sub("", text, count=1)
    return text.strip()


# ---------------------------------------------------------------------------------------------
# §3.2 language code -> normalisation branch

BRANCHES = ("en", "zh", "ja", "other")

# fr/de take the English TN: that is what the reference did, and existing checkpoints were trained
# on those ids. Codes not listed here take basic cleanup ("other").
LANGUAGE_BRANCH = {
    "en": "en", "fr": "en", "de": "en",
    "zh": "zh", "cn": "zh",
    "ja": "ja", "jp": "ja",
}
AUTO_DETECT_CODES = ("", "auto")


def normaliser_hint(language: str | None) -> str | None:
    """Record/CLI language code -> branch ("en" | "zh" | "ja" | "other"), or None = auto-detect.

    One policy for every mode: empty/absent/"auto" -> auto-detect per line; a known code (or its
    primary subtag: "zh-CN" -> "zh") -> its branch; any other code -> basic cleanup.
    """
    if language is None:
        return None
    code = str(language).strip().lower()
    if code in AUTO_DETECT_CODES:
        return None
    primary = re.split(r"[-_]", code, maxsplit=1)[0]
    return LANGUAGE_BRANCH.get(primary, "other")


# Auto-detect (§3.2), checked in this order: ja, zh, en.
# Kana (hiragana, katakana, katakana ext., half-width katakana), ー〜〝〞〟・ and 々〆ゝゞ.
JAPANESE_CHAR = re.compile(r"[\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9fー〜〝〞〟・々〆ゝゞ]")
CJK_IDEOGRAPH = re.compile(r"[\u4e00-\u9fff]")
ASCII_LETTER = re.compile(r"[a-zA-Z]")
EMAIL = re.compile(r"^[a-zA-Z0-9]+@[a-zA-Z0-9]+\.[a-zA-Z]+$")

# A pinyin syllable with a tone digit 1-5 ("zhong1", "lve4"), not preceded by a letter. The
# alternation order is the reference's: with backtracking it decides which text is matched.
PINYIN_TONE = re.compile(
    r"(?<![a-z])("
    r"(?:[bpmfdtnlgkhjqxzcsryw]|[zcs]h)?"  # optional initial
    r"(?:[aeiouüv]|[ae]i|u[aio]|ao|ou|i[aue]|[uüv]e|[uvü]ang?|uai|[aeiuv]n|[aeio]ng|ia[no]|i[ao]ng)"  # final
    r"|ng|er"
    r")([1-5])",
    re.IGNORECASE,
)
# A run of ideographs joined by ·, - or — to one or two more runs ("克里斯托弗·诺兰").
CHINESE_NAME = re.compile(r"[\u4e00-\u9fff]+(?:[-·—][\u4e00-\u9fff]+){1,2}", re.IGNORECASE)
# "what's" -> "what is" for a few words only. No word boundary, as in the reference.
CONTRACTION = re.compile(r"(what|where|who|which|how|t?here|it|s?he|that|this)'s", re.IGNORECASE)
# j/q/x + u/ü is written with v in the vocabulary ("ju4" -> "JV4", "xuan2" -> "XVAN2").
JQX_U = re.compile(r"([jqx])[uü](n|e|an)*(\d)", re.IGNORECASE)
WHITESPACE = re.compile(r"\s+")


def detect_branch(text: str) -> str:
    """Auto-detected branch of one line: "ja", "zh" or "en" (never "other")."""
    if JAPANESE_CHAR.search(text):
        return "ja"
    if (CJK_IDEOGRAPH.search(text) or not ASCII_LETTER.search(text) or EMAIL.match(text)
            or PINYIN_TONE.search(text)):
        return "zh"
    return "en"


# ---------------------------------------------------------------------------------------------
# punctuation map: one left-to-right pass, the first key in table order wins at each position.
# Order is the reference's. "，，，" is listed but never fires: "，" comes first, so "，，，" -> ",,,".

PUNCTUATION = (
    ("：", ","), ("；", ","), (";", ","), ("，", ","), ("。", "."), ("！", "!"), ("？", "?"),
    ("\n", " "), ("·", "-"), ("、", ","), ("...", "…"), (",,,", "…"), ("，，，", "…"),
    ("……", "…"), ("“", "'"), ("”", "'"), ('"', "'"), ("‘", "'"), ("’", "'"), ("（", "'"),
    ("）", "'"), ("(", "'"), (")", "'"), ("《", "'"), ("》", "'"), ("【", "'"), ("】", "'"),
    ("[", "'"), ("]", "'"), ("—", "-"), ("～", "-"), ("~", "-"), ("「", "'"), ("」", "'"),
    (":", ","),
)
ZH_PUNCTUATION = (("$", "."),) + PUNCTUATION


class PunctuationMap:
    def __init__(self, table):
        self.table = dict(table)
        # Python's alternation tries alternatives in order, which gives "first key wins".
        self.pattern = re.compile("|".join(re.escape(k) for k, _ in table))

    def __call__(self, text: str) -> str:
        return self.pattern.sub(lambda m: self.table[m.group()], text)


map_punctuation = PunctuationMap(PUNCTUATION)
map_punctuation_zh = PunctuationMap(ZH_PUNCTUATION)


# ---------------------------------------------------------------------------------------------
# TN grammars (WeTextProcessing), loaded lazily and once per process

TN_PACKAGE = "WeTextProcessing"
# The reference's arguments; the others are WeTextProcessing defaults, spelled out so that the
# fingerprint says exactly what ran (traditional->simplified and full->half width are ON).
ZH_TN_OPTIONS = dict(remove_interjections=False, remove_erhua=False, traditional_to_simple=True,
                     remove_puncts=False, full_to_half=True, tag_oov=False)
ZH_FST_FILES = ("zh_tn_tagger.fst", "zh_tn_verbalizer.fst")

_tn_lock = threading.Lock()
_tn_loaded: dict[str, object] = {}


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def tn_cache_dir() -> Path:
    """Where the compiled Chinese grammar is kept: $PREPROCESS_TN_CACHE, else
    $XDG_CACHE_HOME/preprocess/tn (default ~/.cache/preprocess/tn); one sub-directory per
    package version and option set, so a different version never reads a stale grammar."""
    root = os.environ.get("PREPROCESS_TN_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "preprocess" / "tn"
    return Path(root) / (f"{TN_PACKAGE}-{_package_version(TN_PACKAGE)}"
                         f"-pynini-{_package_version('pynini')}") / "zh_tn_keep_erhua_keep_interjections"


@contextlib.contextmanager
def _quiet_wetext_logger():
    # WeTextProcessing logs every load at INFO on its own handler ("wetext"), configured when
    # tn.processor is first imported; import it first so our level is not overridden.
    import tn.processor  # noqa: F401

    logger = logging.getLogger("wetext")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load_chinese_tn():
    from tn.chinese.normalizer import Normalizer

    final = tn_cache_dir()
    if all((final / name).is_file() for name in ZH_FST_FILES):
        return Normalizer(cache_dir=str(final), overwrite_cache=False, **ZH_TN_OPTIONS)
    log.info("compiling the Chinese TN grammar once (about 15 s); cache: %s", final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        build_root = final.parent
    except OSError as e:
        log.warning("cannot create the TN cache %s (%s); the grammar will not be cached", final, e)
        build_root = None
    # Build in a private directory, then rename each file into place: concurrent workers never
    # read a half-written grammar (two identical builds may both land; either file is fine).
    with tempfile.TemporaryDirectory(dir=build_root, prefix=".build-") as tmp:
        normalizer = Normalizer(cache_dir=tmp, overwrite_cache=True, **ZH_TN_OPTIONS)
        if build_root is not None:
            try:
                final.mkdir(exist_ok=True)
                for name in ZH_FST_FILES:
                    os.replace(os.path.join(tmp, name), final / name)
            except OSError as e:
                log.warning("cannot store the compiled TN grammar in %s (%s)", final, e)
    return normalizer


def _load_english_tn():
    from tn.english.normalizer import Normalizer

    return Normalizer(overwrite_cache=False)  # the prebuilt grammar shipped in the package


_TN_LOADERS = {"zh": _load_chinese_tn, "en": _load_english_tn}
_fast_loaded: dict[str, object] = {}


def _chinese_grammar_files() -> dict[str, Path]:
    """The compiled grammar files the stored facts (preprocess/text_fast.py) were derived from."""
    root = tn_cache_dir()
    return {"zh_tagger": root / "zh_tn_tagger.fst", "zh_verbalizer": root / "zh_tn_verbalizer.fst"}


def tn_fast_path_enabled() -> bool:
    """The exact fast path (preprocess/text_fast.py) is on unless PREPROCESS_TN_FAST=0."""
    return os.environ.get("PREPROCESS_TN_FAST", "1") != "0"


def get_normaliser(lang: str):
    """What the branches call: the exact fast path around `get_tn(lang)` (same output, see
    preprocess/text_fast.py), or the reference itself when the fast path is off."""
    fast = _fast_loaded.get(lang)
    if fast is None or fast.reference is not get_tn(lang):
        from preprocess.text_fast import FastNormalizer, facts_for_installed_grammar

        reference = get_tn(lang)
        with _tn_lock:
            fast = _fast_loaded.get(lang)
            if fast is None or fast.reference is not reference:
                enabled = tn_fast_path_enabled() and hasattr(reference, "tagger")
                facts = (facts_for_installed_grammar(_chinese_grammar_files())
                         if enabled and lang == "zh" else None)
                fast = FastNormalizer(reference, lang, facts, enabled)
                _fast_loaded[lang] = fast
    return fast


def get_tn(lang: str):
    """The process-wide WeTextProcessing normaliser for "zh" or "en" (loaded on first use)."""
    tn = _tn_loaded.get(lang)
    if tn is None:
        with _tn_lock:
            tn = _tn_loaded.get(lang)
            if tn is None:
                try:
                    with _quiet_wetext_logger():
                        tn = _TN_LOADERS[lang]()
                except ImportError as e:
                    raise ImportError(f"the {lang} text normaliser needs the {TN_PACKAGE} package "
                                      f"(pip install {TN_PACKAGE}==1.2.0): {e}") from e
                _tn_loaded[lang] = tn
    return tn


def normaliser_versions() -> dict:
    return {"package": TN_PACKAGE, "version": _package_version(TN_PACKAGE),
            "pynini": _package_version("pynini"), "zh_options": dict(ZH_TN_OPTIONS),
            "en_options": {"grammar": "prebuilt in package"}}


# ---------------------------------------------------------------------------------------------
# placeholders: pinyin and Chinese names must pass through the Chinese TN untouched


def _label(i: int) -> str:
    """0 -> "a", 25 -> "z", 26 -> "ba": letters only, so the TN leaves the placeholder alone."""
    s = ""
    while True:
        s = chr(ord("a") + i % 26) + s
        i //= 26
        if i == 0:
            return s


def _protect(pattern: re.Pattern, text: str, kind: str) -> tuple[str, dict[str, str]]:
    """Replace every distinct match of `pattern` by <kind_label>; return the text and
    {placeholder: original}. Longest first, so a short token never cuts into a longer one."""
    found = [m.group(0) for m in pattern.finditer(text)]
    tokens = sorted(dict.fromkeys(found), key=len, reverse=True)
    saved = {}
    for i, token in enumerate(tokens):
        placeholder = f"<{kind}_{_label(i)}>"
        text = text.replace(token, placeholder)
        saved[placeholder] = token
    return text, saved


def _restore(text: str, saved: dict[str, str], rewrite=lambda s: s) -> str:
    for placeholder, token in saved.items():
        text = text.replace(placeholder, rewrite(token))
    return text


def correct_pinyin(pinyin: str) -> str:
    """j/q/x syllables: u/ü -> v and upper-cased ("xuan4" -> "XVAN4"); others unchanged."""
    if pinyin[0] not in "jqxJQX":
        return pinyin
    return JQX_U.sub(r"\g<1>v\g<2>\g<3>", pinyin).upper()


def expand_contractions(text: str) -> str:
    return CONTRACTION.sub(r"\1 is", text)


# ---------------------------------------------------------------------------------------------
# §3.2 branches


class TextNormalizer:
    """The four branches of §3.2. `normalize(text, hint)`: hint is a branch from
    `normaliser_hint` ("en" | "zh" | "ja" | "other"), or None to auto-detect per line."""

    def normalize(self, text: str, hint: str | None = None) -> str:
        if text is None:
            return ""
        branch = detect_branch(text) if hint is None else hint
        if branch == "ja":
            return self.japanese(text)
        if branch == "zh":
            return self.chinese(text)
        if branch == "en":
            return self.english(text)
        if branch == "other":
            return self.basic(text)
        raise ValueError(f"unknown normalisation branch {hint!r}; use normaliser_hint(language)")

    def load(self, *branches: str) -> None:
        """Load the TN grammars of `branches` now (default zh and en), e.g. before forking workers."""
        for lang in branches or ("zh", "en"):
            if lang in _TN_LOADERS:
                get_normaliser(lang)

    @staticmethod
    def basic(text: str) -> str:
        text = WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()
        return map_punctuation(text)

    @staticmethod
    def japanese(text: str) -> str:
        text = SPEAKER_TAG.sub("", text.strip())
        text = WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text))
        return map_punctuation(text).strip()

    @staticmethod
    def chinese(text: str) -> str:
        text = expand_contractions(text).rstrip()
        text, pinyin = _protect(PINYIN_TONE, text, "pinyin")
        text, names = _protect(CHINESE_NAME, text, "n")
        tn = get_normaliser("zh")
        try:
            result = tn.normalize(text)
        except Exception as e:  # the reference keeps the input when the grammar fails
            log.warning("Chinese TN failed on %r (%s); text kept un-normalised", text, e)
            result = text
        result = _restore(result, names)
        result = _restore(result, pinyin, correct_pinyin)
        return map_punctuation_zh(result)

    @staticmethod
    def english(text: str) -> str:
        text = expand_contractions(text)
        tn = get_normaliser("en")
        try:
            result = tn.normalize(text)
        except Exception as e:  # the reference falls back to basic cleanup
            log.warning("English TN failed on %r (%s); basic cleanup used", text, e)
            return TextNormalizer.basic(text)
        return map_punctuation(result)


# ---------------------------------------------------------------------------------------------
# §3.3 pre-tokenisation and SentencePiece

# Ideographs, kana, Hangul, compatibility and half-width forms: each one becomes its own unit.
CJK_UNIT = re.compile(
    r"([\u1100-\u11ff\u2e80-\ua4cf\ua840-\ud7af\uf900-\ufaff\ufe30-\ufe4f\uff65-\uffdc\U00020000-\U0002ffff])"
)


def split_cjk(text: str) -> str:
    """"你好hello wörld" -> "你 好 HELLO WÖRLD": CJK characters split apart, other segments
    stripped and upper-cased (full Unicode rules: ß -> SS), joined by single spaces."""
    units = (u.strip() for u in CJK_UNIT.split(text.strip()))
    return " ".join(u.upper() for u in units if u)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class TextTokenizer:
    """Cleaned text + language code -> SentencePiece ids (no BOS/EOS), as the reference made them."""

    def __init__(self, bpe_model_path, normalizer: TextNormalizer | None = None):
        import sentencepiece as spm

        self.bpe_model_path = os.fspath(bpe_model_path)
        if not os.path.isfile(self.bpe_model_path):
            raise FileNotFoundError(f"SentencePiece model not found: {self.bpe_model_path}")
        self.sp = spm.SentencePieceProcessor(model_file=self.bpe_model_path)
        self.normalizer = normalizer or TextNormalizer()
        self.sha256 = file_sha256(self.bpe_model_path)

    # Worker processes get the path and reload; the SentencePiece handle is not shared.
    def __getstate__(self):
        return {"bpe_model_path": self.bpe_model_path, "sha256": self.sha256}

    def __setstate__(self, state):
        self.__init__(state["bpe_model_path"])
        if self.sha256 != state["sha256"]:
            raise RuntimeError(f"{self.bpe_model_path} changed since the tokenizer was created")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def pre_tokenize(self, text: str, language: str | None = None) -> str:
        """Normalised, CJK-split text: exactly the string SentencePiece encodes."""
        return split_cjk(self.normalizer.normalize(text, normaliser_hint(language)))

    def encode(self, text: str, language: str | None = None) -> list[int]:
        if not text:
            return []
        if len(text.strip()) == 1:
            # Reference quirk kept for id compatibility: a single character is encoded raw,
            # with no normalisation, no CJK split and no upper-casing ("a" stays lower-case).
            return list(self.sp.encode(text, out_type=int))
        return list(self.sp.encode(self.pre_tokenize(text, language), out_type=int))

    def fingerprint(self) -> dict:
        """Provenance for stats.json: what turned text into ids."""
        return {
            "text_pipeline_version": TEXT_PIPELINE_VERSION,
            "tokenizer_sha256": self.sha256,
            "vocab_size": self.vocab_size,
            "sentencepiece": _package_version("sentencepiece"),
            "language_policy": {"auto_detect": list(AUTO_DETECT_CODES), "codes": dict(LANGUAGE_BRANCH),
                                "other_codes": "other", "region_subtags": "ignored"},
            "normaliser": normaliser_versions(),
        }
