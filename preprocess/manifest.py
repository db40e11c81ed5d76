"""Corpus manifests: reading JSONL/CSV into typed records, validation, the train/val rule.

A manifest line becomes either a `Record` or a `Reject`; nothing here raises on bad input.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

FIELDS = ("id", "text", "audio", "speaker", "language", "duration")
MAX_ID_BYTES = 200


@dataclass(frozen=True)
class Record:
    id: str
    text: str
    audio: str  # as written in the manifest
    speaker: str = ""
    language: str = ""
    duration: float | None = None
    line: int = 0  # 1-based line number in the source manifest (CSV: data row + 1 for the header)


@dataclass(frozen=True)
class Reject:
    line: int
    id: str | None
    stage: str
    reason: str

    def to_json(self) -> dict:
        return {"line": self.line, "id": self.id, "stage": self.stage, "reason": self.reason}


Item = Union[Record, Reject]


def unsafe_id_reason(id_: str) -> str | None:
    """Why `id_` cannot be used as a file stem, or None when it can."""
    if id_ in (".", "..") or id_.startswith("."):
        return "id starts with '.'"
    if "/" in id_ or "\\" in id_:
        return "id contains a path separator"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in id_):
        return "id contains a control character"
    if id_ != id_.strip():
        return "id has leading or trailing whitespace"
    if len(id_.encode("utf-8")) > MAX_ID_BYTES:
        return f"id longer than {MAX_ID_BYTES} bytes"
    return None


def _record_from_obj(obj: object, line: int) -> Item:
    if not isinstance(obj, dict):
        return Reject(line, None, "manifest", "line is not a JSON object")
    id_ = obj.get("id")
    if not isinstance(id_, str) or not id_:
        return Reject(line, None, "manifest", "missing or empty 'id'")
    why = unsafe_id_reason(id_)
    if why:
        return Reject(line, id_, "manifest", f"unsafe id: {why}")
    for key in ("text", "audio"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            return Reject(line, id_, "manifest", f"missing or empty '{key}'")
    duration = obj.get("duration")
    if duration in ("", None):
        duration = None
    else:
        try:
            duration = float(duration)
        except (TypeError, ValueError):
            return Reject(line, id_, "manifest", f"'duration' is not a number: {duration!r}")
    speaker = obj.get("speaker") or ""
    language = obj.get("language") or ""
    if not isinstance(speaker, str) or not isinstance(language, str):
        return Reject(line, id_, "manifest", "'speaker' and 'language' must be strings")
    return Record(id_, obj["text"], obj["audio"], speaker, language, duration, line)


def _read_jsonl(path: Path) -> Iterator[Item]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Reject(n, _salvaged_id(raw), "manifest",
                             f"line {n} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte "
                             f"{e.start + 1}); save the manifest as UTF-8")
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield Reject(n, None, "manifest", f"malformed JSON: {e.msg} at column {e.colno}")
                continue
            yield _record_from_obj(obj, n)


def _salvaged_id(raw: bytes) -> str | None:
    """The id of a line that is not valid UTF-8, where the id itself is, for the reject."""
    try:
        obj = json.loads(raw.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        return None
    id_ = obj.get("id") if isinstance(obj, dict) else None
    return id_ if isinstance(id_, str) and id_ and "\ufffd" not in id_ else None


def _read_csv(path: Path) -> Iterator[Item]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [k for k in ("id", "text", "audio") if k not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{path}: CSV header lacks column(s) {', '.join(missing)}; "
                                f"expected a header with {', '.join(FIELDS)}")
        for row in reader:
            n = reader.line_num
            if None in row:
                yield Reject(n, row.get("id"), "manifest", "row has more fields than the header")
                continue
            if not any((v or "").strip() for v in row.values()):
                continue
            yield _record_from_obj(row, n)


class ManifestError(Exception):
    """The manifest as a whole cannot be read (missing file, unusable header)."""


def read_manifest(path: str | os.PathLike) -> Iterator[Item]:
    """Lazily yield a `Record` or a `Reject` per non-blank line; duplicate ids are rejects."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    items = _read_csv(path) if path.suffix.lower() == ".csv" else _read_jsonl(path)
    first_line: dict[str, int] = {}
    for item in items:
        if isinstance(item, Record):
            if item.id in first_line:
                yield Reject(item.line, item.id, "manifest",
                             f"duplicate id (first on line {first_line[item.id]})")
                continue
            first_line[item.id] = item.line
        yield item


def resolve_audio(audio: str, manifest_dir: str | os.PathLike) -> Path | None:
    """An existing audio file for a manifest path: absolute as is; relative against the
    manifest's directory, then the working directory. None when nothing exists."""
    p = Path(os.path.expanduser(audio))
    if p.is_absolute():
        return p if p.is_file() else None
    for root in (Path(manifest_dir), Path.cwd()):
        candidate = root / p
        if candidate.is_file():
            return candidate
    return None


def missing_audio_reason(audio: str, manifest_dir: str | os.PathLike) -> str:
    """Why `resolve_audio` found nothing: a directory where a file was expected, or nothing."""
    p = Path(os.path.expanduser(audio))
    for candidate in ([p] if p.is_absolute() else [Path(manifest_dir) / p, Path.cwd() / p]):
        if candidate.is_dir():
            return f"audio path is a directory, not a file: {candidate}"
    where = "" if p.is_absolute() else f" (looked in {manifest_dir} and {Path.cwd()})"
    return f"audio file not found: {audio}{where}"


def split_fraction(id_: str) -> float:
    return (int(hashlib.sha1(id_.encode("utf-8")).hexdigest(), 16) % 1_000_000) / 1_000_000


def is_val(id_: str, ratio: float) -> bool:
    """The reference split: deterministic per id, stable when data is added."""
    if ratio <= 0:
        return False
    if ratio >= 1:
        return True
    return split_fraction(id_) < ratio


def read_output_manifest(path: str | os.PathLike, require_id: bool = True) -> tuple[list[dict], int]:
    """Objects of a JSONL file we wrote; a torn or malformed line (a crash mid-append) is dropped.
    Returns (objects, number of dropped lines)."""
    records, dropped = [], 0
    if not os.path.exists(path):
        return records, dropped
    with open(path, "rb") as f:
        data = f.read()
    for raw in io.BytesIO(data):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            dropped += 1
            continue
        if isinstance(obj, dict) and (not require_id or isinstance(obj.get("id"), str)):
            records.append(obj)
        else:
            dropped += 1
    return records, dropped
