"""What the sources share: field names, the coercion of values that are not strings."""

from __future__ import annotations

from ..manifest import lookup

OUR_FIELDS = ("id", "text", "audio", "speaker", "language", "duration")


def source_key(fields: dict[str, str], name: str) -> str:
    """The source's key for our field `name` (itself unless `--field` maps it)."""
    return fields.get(name, name)


def pick(obj: dict, fields: dict[str, str], name: str):
    return lookup(obj, source_key(fields, name))


def as_label(value):
    """Integer ids and speaker numbers (common in dataset tables) as strings; anything else
    unchanged, so validation reports it."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value
