"""The trainer's layout: one .npy file per feature and utterance, fanned out into sub-folders.

    OUT/<feature>/<xx>/<id>.npy   for feature in text_ids, codes, condition, emo_vec

<xx> = first two hex digits of SHA-1(id). Manifest lines carry the four paths, relative to OUT.
"""

from __future__ import annotations

import hashlib

FEATURE_DIRS = ("text_ids", "codes", "condition", "emo_vec")


def fanout(id_: str) -> str:
    """Two hex digits of the id's SHA-1: 256 folders keep directories small at 1M+ utterances."""
    return hashlib.sha1(id_.encode("utf-8")).hexdigest()[:2]


def relative_paths(id_: str) -> dict[str, str]:
    sub = fanout(id_)
    return {f"{name}_path": f"{name}/{sub}/{id_}.npy" for name in FEATURE_DIRS}
