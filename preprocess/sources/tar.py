"""WebDataset tar shards: one record per sample, its audio read in place from the archive.

A sample is the run of members sharing a key: the member name up to the first '.' of its last
path component (`dir/utt1.flac`, `dir/utt1.json` -> key `dir/utt1`, extensions `flac`, `json`).
Its fields come from the `json` member (Emilia's `id, text, speaker, language, duration`, or
any keys `--field` names), its text from the `txt` member when the JSON has none, its id from
the JSON or else the key's last path component. Its audio is the one member with an audio
extension (`--field audio=EXT` picks one when there are several) and is never extracted: the
record points to the member's byte range in the shard.

Shards are read in the order given (a folder: every `*.tar` below it, sorted by path), samples
in archive order. Only uncompressed tars can be read by byte range; a shard that cannot be
listed is one reject, and a listing cut short by a corrupt header keeps the samples before it
and adds one reject for the rest.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Iterator

from ..manifest import AudioRef, Item, Reject, record_from_fields
from .common import as_label, pick, source_key

AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "opus", "ogg")
BLOCK = 512


def shard_files(path: Path) -> list[Path]:
    """A `.tar` file itself; a folder: every `*.tar` below it, sorted by relative path."""
    if path.is_dir():
        return sorted(path.rglob("*.tar"), key=lambda p: p.relative_to(path).as_posix())
    return [path]


def split_key(name: str) -> tuple[str, str]:
    """WebDataset's (key, extension) of a member name."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def list_shard(path: Path) -> tuple[list[tuple[str, dict[str, tarfile.TarInfo]]], str | None]:
    """The samples of a shard in archive order, as (key, {extension: member}), and why the
    listing stopped early (None when it reached the archive's end)."""
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if m.isfile():
                    key, ext = split_key(m.name)
                    samples.setdefault(key, {})[ext] = m
            end = tf.offset
    except (tarfile.TarError, OSError, EOFError) as e:
        return list(samples.items()), f"cannot read the tar shard ({e})"
    # tarfile ends the listing silently at a corrupt header after the first: what follows the
    # last member must be the zero blocks of a proper end, or nothing.
    with open(path, "rb") as f:
        f.seek(end)
        tail = f.read(2 * BLOCK)
    if tail.strip(b"\0"):
        return list(samples.items()), f"unreadable tar header at byte {end}; the members after it are lost"
    return list(samples.items()), None


def read_shards(shards: list[Path], fields: dict[str, str]) -> Iterator[Item]:
    """Records (and rejects) of every sample of `shards`, in order; `line` counts samples
    (and unreadable shards) from 1, `where` is `SHARD:MEMBER`."""
    n = 0
    for shard in shards:
        samples, error = list_shard(shard)
        if samples:
            with open(shard, "rb") as f:
                for key, members in samples:
                    n += 1
                    yield _sample(f, shard, key, members, n, fields)
        if error is not None:
            n += 1
            yield Reject(n, None, "manifest", error, str(shard))


def _read_member(f, m: tarfile.TarInfo) -> bytes:
    f.seek(m.offset_data)
    data = f.read(m.size)
    if len(data) != m.size:
        raise OSError(f"member {m.name} truncated ({len(data)} of {m.size} bytes)")
    return data


def _sample(f, shard: Path, key: str, members: dict[str, tarfile.TarInfo], n: int,
            fields: dict[str, str]) -> Item:
    wanted = fields.get("audio")
    audio_exts = [wanted] if wanted else [e for e in AUDIO_EXTENSIONS if e in members]
    first = members[audio_exts[0]] if audio_exts and audio_exts[0] in members else next(iter(members.values()))
    where = f"{shard}:{first.name}"

    def reject(id_, reason):
        return Reject(n, id_, "manifest", reason, where)

    meta: dict = {}
    if "json" in members:
        try:
            meta = json.loads(_read_member(f, members["json"]).decode("utf-8"))
        except OSError as e:
            return reject(None, str(e))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return reject(None, f"member {members['json'].name} is not valid JSON ({e})")
        if not isinstance(meta, dict):
            return reject(None, f"member {members['json'].name} is not a JSON object")
    id_ = as_label(pick(meta, fields, "id"))
    if id_ is None and source_key(fields, "id") == "id":
        id_ = key.rpartition("/")[2]
    text = pick(meta, fields, "text")
    if text is None and "txt" in members and source_key(fields, "text") == "text":
        try:
            text = _read_member(f, members["txt"]).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            return reject(id_, f"member {members['txt'].name}: {e}")
    if not audio_exts or audio_exts[0] not in members:
        expected = f".{wanted}" if wanted else ", ".join(f".{e}" for e in AUDIO_EXTENSIONS)
        return reject(id_ if isinstance(id_, str) else None, f"sample {key} has no audio member ({expected})")
    if len(audio_exts) > 1:
        return reject(id_ if isinstance(id_, str) else None,
                      f"sample {key} has several audio members ({', '.join(audio_exts)}); "
                      "choose one with --field audio=EXTENSION")
    m = members[audio_exts[0]]
    ref = AudioRef(os.path.abspath(shard), member=m.name, offset=m.offset_data, size=m.size)
    obj = {"id": id_, "text": text, "audio": f"{shard}:{m.name}",
           "speaker": as_label(pick(meta, fields, "speaker")),
           "language": pick(meta, fields, "language"), "duration": pick(meta, fields, "duration")}
    return record_from_fields(obj, n, ref, where)
