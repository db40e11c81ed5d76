"""The prepared-text file: per record, its cleaned text and text ids (or why it has none).

`preprocess prepare-text` (preprocess/text_pass.py) writes it; `preprocess-data --prepared-text`
reads it in its CPU workers instead of normalising. One JSON object per line:

    line 1   {"prepared_text": 1, "made_by": {...}, "about": {...}}
    then     {"id": ID, "language": CODE, "text": CLEANED, "ids": [...]}
       or    {"id": ID, "language": CODE, "text": CLEANED, "reject": REASON}

`made_by` is everything the ids depend on besides the text: the tokenizer's SHA-256,
TEXT_PIPELINE_VERSION, the normaliser's versions and options, the sentencepiece version and the
--language option. A job uses the file only when its own values are equal (`check_made_by`);
otherwise it stops and names what differs. `about` (tokenizer path, source, start time) is for
people and never compared.

`language` is the code the text was tokenised with (--language, else the record's own), `text`
the cleaned manifest text. A job takes a line only when both equal what it computes for the
record, so a manifest edited after the pass costs a normalisation, never stale ids. Ids are
stored whatever their length: limits (max_text_len) are the job's and applied by it. A reject
is the text stage's ("text is empty after cleaning", "text tokenises to nothing").

Append-only and durable: lines are appended in blocks and fsynced. A last line without its
newline (a write cut by a crash) is ignored by readers and cut off by the next pass before it
appends. When an id has several lines (its text changed between two passes), the last holds.
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

from .store.fsutil import write_atomic

FORMAT_VERSION = 1
# What the pass writes each line as: `{"id": ` first, so the id is read without parsing the rest.
_ID_PREFIX = b'{"id": '
_decoder = json.JSONDecoder()


class PreparedTextError(Exception):
    """The prepared-text file cannot be used: missing, not one, or made with other settings."""


def made_by(tokenizer_sha256: str, language: str | None) -> dict:
    """What text ids depend on besides the text itself, in the terms the header records."""
    from .text import TEXT_PIPELINE_VERSION, normaliser_versions

    try:
        sentencepiece = metadata.version("sentencepiece")
    except metadata.PackageNotFoundError:
        sentencepiece = None
    return {"tokenizer_sha256": tokenizer_sha256, "text_pipeline": TEXT_PIPELINE_VERSION,
            "normaliser": normaliser_versions(), "sentencepiece": sentencepiece,
            "language": language}


def differences(old: dict, new: dict) -> list[str]:
    """Each key of `made_by` whose value differs, as "name: old -> new"."""
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        if name == "tokenizer_sha256":
            a, b = (a or "absent")[:12], (b or "absent")[:12]
            out.append(f"{name}: {a} -> {b}")
        elif isinstance(a, dict) and isinstance(b, dict):
            out.extend(f"{name}.{d}" for d in differences(a, b))
        else:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def read_header(path: str | os.PathLike) -> dict:
    """The header of the prepared-text file `path`; PreparedTextError if it has none."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except FileNotFoundError:
        raise PreparedTextError(f"prepared text {path} not found (make it with preprocess "
                                "prepare-text)") from None
    except OSError as e:
        raise PreparedTextError(f"prepared text {path}: {e.strerror}") from None
    try:
        header = json.loads(first)
    except ValueError:
        header = None
    if not (isinstance(header, dict) and isinstance(header.get("made_by"), dict)
            and "prepared_text" in header):
        raise PreparedTextError(f"{path} is not a prepared-text file (no header line; make one "
                                "with preprocess prepare-text)")
    if header["prepared_text"] != FORMAT_VERSION:
        raise PreparedTextError(f"{path} is a prepared-text file of format "
                                f"{header['prepared_text']!r}; this version reads format "
                                f"{FORMAT_VERSION}: make it again with preprocess prepare-text")
    return header


def check_made_by(path: str | os.PathLike, expected: dict) -> dict:
    """The header of `path` when its `made_by` equals `expected`; else PreparedTextError naming
    each difference (made with -> this job) and how to fix it."""
    header = read_header(path)
    found = differences(header["made_by"], expected)
    if found:
        tokenizer = (header.get("about") or {}).get("tokenizer")
        made = f" (its tokenizer: {tokenizer})" if tokenizer else ""
        raise PreparedTextError(
            f"prepared text {path}{made} was made with other text settings than this job's; "
            f"what differs, file -> job: {'; '.join(found)}. Make it again with this job's "
            "--tokenizer and --language and the same package versions (preprocess prepare-text "
            "... --out NEW, or --force to replace it), or run without --prepared-text")
    return header


def entry_line(record_id: str, language: str | None, text: str, ids: list[int] | None = None,
               reject: str | None = None) -> bytes:
    """One record's line: its ids, or the reason it has none."""
    entry = {"id": record_id, "language": language, "text": text}
    if reject is None:
        entry["ids"] = [int(i) for i in ids]
    else:
        entry["reject"] = reject
    return (json.dumps(entry, ensure_ascii=False, separators=(", ", ": ")) + "\n").encode("utf-8")


def _complete_lines(f):
    """(offset, line) of each line after the header that ends with its newline."""
    f.seek(0)
    offset = len(f.readline())
    for line in f:
        if not line.endswith(b"\n"):
            return  # a torn last line
        yield offset, line
        offset += len(line)


def _line_id(line: bytes) -> str | None:
    if line.startswith(_ID_PREFIX):
        try:
            value, _ = _decoder.raw_decode(line.decode("utf-8"), len(_ID_PREFIX))
            return value if isinstance(value, str) else None
        except ValueError:
            return None
    try:
        value = json.loads(line).get("id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def line_offsets(path: str | os.PathLike, wanted: set[str] | None = None) -> dict[str, int]:
    """Byte offset of each id's last complete line (only the ids of `wanted`, when given)."""
    offsets: dict[str, int] = {}
    with open(path, "rb") as f:
        for offset, line in _complete_lines(f):
            record_id = _line_id(line)
            if record_id is not None and (wanted is None or record_id in wanted):
                offsets[record_id] = offset
    return offsets


class PreparedTextReader:
    """Lines of a prepared-text file read at the offsets `line_offsets` found (one per process)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.file = open(self.path, "rb")

    def lookup(self, offset: int, record_id: str, text: str, language: str | None) -> dict | None:
        """The entry at `offset` when it is `record_id`'s and was made from this cleaned `text`
        and `language`; None otherwise (the caller then makes the ids itself)."""
        self.file.seek(offset)
        try:
            entry = json.loads(self.file.readline())
        except ValueError:
            return None
        if not (isinstance(entry, dict) and entry.get("id") == record_id
                and entry.get("text") == text and entry.get("language") == language):
            return None
        ids, reject = entry.get("ids"), entry.get("reject")
        if not ((isinstance(ids, list) and ids) or isinstance(reject, str)):
            return None
        return entry

    def close(self) -> None:
        self.file.close()


def open_for_append(path: str | os.PathLike, header: dict, force: bool = False) -> dict[str, int]:
    """Make `path` ready for appending lines made under `header` (a new file gets it as its first
    line); return, for each id it already holds, `entry_key` of its last line.

    An existing file must have the same `made_by` (else PreparedTextError, unless `force`, which
    starts it afresh). A torn last line is cut off (and the cut made durable) before anything is
    appended."""
    path = Path(path)
    if force or not path.exists():
        write_atomic(path, (json.dumps(header, ensure_ascii=False) + "\n").encode("utf-8"))
        return {}
    found = differences(read_header(path)["made_by"], header["made_by"])
    if found:
        raise PreparedTextError(
            f"{path} holds prepared text made with other settings; what differs, file -> now: "
            f"{'; '.join(found)}. Pass another --out, or --force to start it afresh")
    keys: dict[str, int] = {}
    with open(path, "rb") as f:
        end = len(f.readline())
        for offset, line in _complete_lines(f):
            end = offset + len(line)
            try:
                entry = json.loads(line)
                keys[entry["id"]] = entry_key(entry["language"], entry["text"])
            except (ValueError, KeyError, TypeError):
                continue
        size = f.seek(0, os.SEEK_END)
    if size != end:
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return keys


def entry_key(language: str | None, text: str) -> int:
    """A digest of what a line was made from, to tell on resume whether a record changed (a
    collision would only keep a line the job then refuses and redoes itself)."""
    return hash((language, text))
