"""Corpus manifests: reading JSONL/CSV into typed records, validation, the train/val rule.

A manifest line becomes either a `Record` or a `Reject`; nothing here raises on bad input.
`Record`, `Reject` and `AudioRef` are the types every source (`preprocess.sources`) yields.
"""

from __future__ import annotations

import csv
import gzip
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
class AudioRef:
    """Where a record's audio is. `path` is always a local file:

    - a whole audio file (the defaults);
    - a tar member: `member` names it, its data is the byte range [`offset`, `offset + size`)
      of the archive `path`;
    - a table row: the bytes in column `column` of row `row` (0-based, within the file) of the
      Arrow or Parquet file `path`.

    Any of them is cut to a segment when `duration` is set: `duration` seconds from `start`,
    both converted to samples at the audio's own rate (round half up). `channels` keeps those
    channels (0-based) before the mono mix; empty keeps all.
    """

    path: str
    member: str = ""
    offset: int = 0
    size: int = -1
    row: int = -1
    column: str = ""
    start: float = 0.0
    duration: float | None = None
    channels: tuple[int, ...] = ()

    @property
    def kind(self) -> str:
        """"member", "row" or "file": what `path` holds the audio as."""
        return "member" if self.member else "row" if self.row >= 0 else "file"

    @property
    def is_segment(self) -> bool:
        return self.duration is not None

    def describe(self) -> str:
        """`path`, `path:member` or `path:row N`, then `#t=START,END` (seconds, a media fragment)
        for a segment."""
        base = (f"{self.path}:{self.member}" if self.kind == "member" else
                f"{self.path}:row {self.row}" if self.kind == "row" else self.path)
        if self.is_segment:
            base += f"#t={self.start:g},{self.start + self.duration:g}"
        return base


@dataclass(frozen=True)
class Record:
    id: str
    text: str
    audio: str  # as written in the manifest; for other sources what `ref` describes
    speaker: str = ""
    language: str = ""
    duration: float | None = None
    line: int = 0  # 1-based line number in the source manifest (CSV: data row + 1 for the header);
    #                for sources without lines, the 1-based position in the source's order
    ref: AudioRef | None = None  # None: `audio` is a file path, resolved by `resolve_audio`
    where: str = ""  # location in a source without lines (shard and member, file and row)

    def reject(self, stage: str, reason: str) -> "Reject":
        return Reject(self.line, self.id, stage, reason, self.where)


@dataclass(frozen=True)
class Reject:
    line: int
    id: str | None
    stage: str
    reason: str
    where: str = ""  # sources without lines: the shard and member, file and row, ... that failed

    def to_json(self) -> dict:
        out = {"line": self.line, "id": self.id, "stage": self.stage, "reason": self.reason}
        if self.where:
            out["where"] = self.where
        return out

    @classmethod
    def from_json(cls, obj: dict) -> "Reject":
        return cls(obj["line"], obj.get("id"), obj["stage"], obj["reason"], obj.get("where") or "")


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


def record_from_fields(obj: object, line: int, ref: AudioRef | None = None, where: str = "") -> Item:
    """A `Record` from a mapping with our field names, or the `Reject` saying what is wrong."""
    def reject(id_, reason):
        return Reject(line, id_, "manifest", reason, where)

    if not isinstance(obj, dict):
        return reject(None, "line is not a JSON object")
    id_ = obj.get("id")
    if not isinstance(id_, str) or not id_:
        return reject(None, "missing or empty 'id'")
    why = unsafe_id_reason(id_)
    if why:
        return reject(id_, f"unsafe id: {why}")
    for key in ("text", "audio"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            return reject(id_, f"missing or empty '{key}'")
    duration = obj.get("duration")
    if duration in ("", None):
        duration = None
    else:
        try:
            duration = float(duration)
        except (TypeError, ValueError):
            return reject(id_, f"'duration' is not a number: {duration!r}")
    speaker = obj.get("speaker") or ""
    language = obj.get("language") or ""
    if not isinstance(speaker, str) or not isinstance(language, str):
        return reject(id_, "'speaker' and 'language' must be strings")
    return Record(id_, obj["text"], obj["audio"], speaker, language, duration, line, ref, where)


def rename_fields(obj: object, fields: dict[str, str] | None) -> object:
    """`obj` with each of our field names taken from the source's key that `fields` maps it to
    (ours -> theirs); other keys are kept. A key absent from `obj` with dots in it is looked up
    nested (`custom.normalized_text`). A non-mapping is returned as is."""
    if not fields or not isinstance(obj, dict):
        return obj
    out = dict(obj)
    for ours, theirs in fields.items():
        out[ours] = lookup(obj, theirs)
    return out


def lookup(obj: dict, key: str):
    """obj[key], or for a dotted key absent as such the nested value (None where missing)."""
    if key in obj or "." not in key:
        return obj.get(key)
    value = obj
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def open_text_bytes(path: Path):
    """`path` opened for reading bytes, through gzip when its name ends in `.gz`."""
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _read_jsonl(path: Path, fields: dict[str, str] | None = None) -> Iterator[Item]:
    try:
        yield from _jsonl_lines(path, fields)
    except (OSError, EOFError, gzip.BadGzipFile) as e:  # a truncated or corrupt .gz
        raise ManifestError(f"{path}: cannot read past a point of the file ({e})") from e


def _jsonl_lines(path: Path, fields: dict[str, str] | None) -> Iterator[Item]:
    with open_text_bytes(path) as f:
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
            yield record_from_fields(rename_fields(obj, fields), n)


def _salvaged_id(raw: bytes) -> str | None:
    """The id of a line that is not valid UTF-8, where the id itself is, for the reject."""
    try:
        obj = json.loads(raw.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        return None
    id_ = obj.get("id") if isinstance(obj, dict) else None
    return id_ if isinstance(id_, str) and id_ and "\ufffd" not in id_ else None


def _read_csv(path: Path, fields: dict[str, str] | None = None) -> Iterator[Item]:
    fields = fields or {}
    with io.TextIOWrapper(open_text_bytes(path), encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        missing = [fields.get(k, k) for k in ("id", "text", "audio")
                   if fields.get(k, k) not in (reader.fieldnames or [])]
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
            yield record_from_fields(rename_fields(row, fields), n)


class ManifestError(Exception):
    """The manifest as a whole cannot be read (missing file, unusable header)."""


def is_csv(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".csv") or name.endswith(".csv.gz")


def read_manifest(path: str | os.PathLike, fields: dict[str, str] | None = None,
                  csv_format: bool | None = None) -> Iterator[Item]:
    """Lazily yield a `Record` or a `Reject` per non-blank line; duplicate ids are rejects.
    CSV when `csv_format` says so, or by default for a `.csv` (or `.csv.gz`) name, else JSONL;
    a `.gz` name is read through gzip. `fields` maps our field names to the manifest's own
    keys (`rename_fields`)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    as_csv = is_csv(path) if csv_format is None else csv_format
    items = _read_csv(path, fields) if as_csv else _read_jsonl(path, fields)
    yield from unique_ids(items)


def unique_ids(items: Iterator[Item]) -> Iterator[Item]:
    """`items` with every record whose id came before turned into a reject naming the first
    (its line, or for sources without lines where it was)."""
    first: dict[str, tuple[int, str]] = {}  # id -> (line, where); not the records: corpora are large
    for item in items:
        if isinstance(item, Record):
            seen = first.get(item.id)
            if seen is not None:
                at = f"at {seen[1]}" if seen[1] else f"on line {seen[0]}"
                yield item.reject("manifest", f"duplicate id (first {at})")
                continue
            first[item.id] = (item.line, item.where)
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
