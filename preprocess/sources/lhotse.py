"""Lhotse manifests (`.jsonl` or `.jsonl.gz`): one record per supervision segment.

Read without Lhotse itself, from its JSON layout:
- a recording: `id`, `sources` (one `{type: "file", channels, source}` is supported: audio in
  one local file), `sampling_rate`, `num_samples`, `duration`; `transforms` are not supported;
- a supervision: `id`, `recording_id`, `start`, `duration`, `channel`, `text`, `speaker`,
  `language` (`--field` maps our names to others, dotted for `custom.…`);
- a cut (`MonoCut`): `id`, `start`, `duration`, `channel`, `recording`, `supervisions` whose
  `start` is relative to the cut. Other cut types are rejects.

Each supervision becomes a record with the supervision's id and a segment of its recording:
`duration` seconds from `start` (the cut's start plus the supervision's, for cuts), in samples
at the file's own rate. A supervision reaching outside its cut is a reject; a segment past the
end of its recording is one when the plan reads the recording's header. `channel` selects the
channels mixed to mono (all when absent). Relative `source` paths resolve against the
manifest's folder, then the working directory.

Files: a cuts manifest; or a recordings manifest and its supervisions (`…recordings…` /
`…supervisions…`, found beside each other by name); or a folder: every cuts manifest in it
(sorted), else every recordings manifest with its supervisions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from ..manifest import (
    AudioRef,
    Item,
    ManifestError,
    Reject,
    open_text_bytes,
    record_from_fields,
    rename_fields,
    resolve_audio,
)
from .common import as_label

SUFFIXES = (".jsonl", ".jsonl.gz")
CUT_TOLERANCE = 1e-3  # seconds: float rounding of a supervision's end against its cut's


def manifest_kind(obj: object) -> str | None:
    """"cuts", "recordings" or "supervisions" for a manifest whose first object is `obj`."""
    if not isinstance(obj, dict):
        return None
    if "supervisions" in obj or obj.get("type") in ("MonoCut", "MixedCut", "MultiCut", "PaddingCut"):
        return "cuts"
    if "sources" in obj and "sampling_rate" in obj:
        return "recordings"
    if "recording_id" in obj and "start" in obj and "duration" in obj:
        return "supervisions"
    return None


def first_object(path: Path) -> object:
    """The first non-blank line of a JSONL(.gz) file, parsed; None if there is none or it is
    not JSON."""
    try:
        with open_text_bytes(path) as f:
            for raw in f:
                if raw.strip():
                    return json.loads(raw)
    except (OSError, EOFError, ValueError):
        return None
    return None


def is_lhotse_name(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES) and bool(re.search(r"cuts|recordings|supervisions",
                                                                   path.name))


def lhotse_files(paths: list[Path]) -> list[tuple[str, Path, Path | None]]:
    """[("cuts", cuts, None) | ("pairs", recordings, supervisions)] for the given files or folder."""
    if len(paths) == 1 and paths[0].is_dir():
        root = paths[0]
        names = sorted(p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIXES))
        cuts = [p for p in names if "cuts" in p.name]
        if cuts:
            return [("cuts", p, None) for p in cuts]
        recordings = [p for p in names if "recordings" in p.name]
        if not recordings:
            raise ManifestError(f"{root}: no Lhotse cuts or recordings manifest (*cuts*.jsonl[.gz], "
                                "*recordings*.jsonl[.gz])")
        return [("pairs", p, _partner(p, "recordings", "supervisions")) for p in recordings]
    kinds = {p: manifest_kind(first_object(p)) for p in paths}
    if all(k == "cuts" for k in kinds.values()):
        return [("cuts", p, None) for p in paths]
    recordings = [p for p, k in kinds.items() if k == "recordings"]
    supervisions = [p for p, k in kinds.items() if k == "supervisions"]
    if len(recordings) + len(supervisions) != len(paths):
        raise ManifestError("Lhotse manifests: give cuts, or recordings with their supervisions, "
                            "not a mix")
    if not recordings:
        recordings = [_partner(p, "supervisions", "recordings") for p in supervisions]
    if not supervisions:
        supervisions = [_partner(p, "recordings", "supervisions") for p in recordings]
    if len(recordings) != len(supervisions):
        raise ManifestError("Lhotse manifests: each recordings manifest needs one supervisions manifest")
    return [("pairs", r, s) for r, s in zip(recordings, supervisions)]


def _partner(path: Path, mine: str, theirs: str) -> Path:
    other = path.with_name(path.name.replace(mine, theirs))
    if other == path or not other.is_file():
        raise ManifestError(f"{path}: no {theirs} manifest beside it (expected {other.name})")
    return other


def read_lhotse(paths: list[Path], fields: dict[str, str]) -> Iterator[Item]:
    """Records (and rejects) of every supervision, manifest by manifest in order; `line` counts
    supervisions (and lines that are no supervision) from 1, `where` is `FILE:LINE`."""
    counter = [0]
    for kind, first, second in lhotse_files(paths):
        if kind == "cuts":
            yield from _cuts(first, fields, counter)
        else:
            yield from _pairs(first, second, fields, counter)


def _lines(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed object or the error message) per non-blank line."""
    try:
        with open_text_bytes(path) as f:
            for n, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    yield n, json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    yield n, f"malformed JSON ({e})"
    except (OSError, EOFError) as e:
        raise ManifestError(f"{path}: cannot read past a point of the file ({e})") from e


def _recording_audio(rec: dict, root: Path) -> tuple[str, list] | str:
    """(audio file, its channel ids) of a recording, or why it cannot be read."""
    sources = rec.get("sources")
    if rec.get("transforms"):
        return f"recording {rec.get('id')}: transforms are not supported"
    if not isinstance(sources, list) or len(sources) != 1 or not isinstance(sources[0], dict):
        return (f"recording {rec.get('id')}: {len(sources) if isinstance(sources, list) else 'no'} "
                "sources; only recordings in one file are supported")
    src = sources[0]
    if src.get("type") != "file" or not isinstance(src.get("source"), str):
        return f"recording {rec.get('id')}: source type {src.get('type')!r}; only 'file' is supported"
    found = resolve_audio(src["source"], root)
    channels = src.get("channels") if isinstance(src.get("channels"), list) else []
    return (str(found) if found else src["source"]), channels


def _channels(wanted, channels: list) -> tuple[int, ...] | str:
    """File columns of the wanted channel ids (None: all), or why they cannot be had."""
    if wanted is None or (isinstance(wanted, list) and sorted(wanted) == sorted(channels)):
        return ()
    wanted = wanted if isinstance(wanted, list) else [wanted]
    if not channels:
        return tuple(wanted) if wanted != [0] else ()
    missing = [c for c in wanted if c not in channels]
    if missing:
        return f"channel(s) {missing} not in the recording (channels {channels})"
    cols = tuple(channels.index(c) for c in wanted)
    return () if cols == tuple(range(len(channels))) else cols


def _supervision(sup: dict, recording: dict, offset: float, span: float | None, n: int,
                 where: str, fields: dict[str, str], root: Path) -> Item:
    """A record for one supervision of `recording`, `offset` seconds into it (a cut's start);
    `span`: the cut's duration, which the supervision must lie within."""
    obj = rename_fields(sup, fields)
    id_ = as_label(obj.get("id"))
    safe_id = id_ if isinstance(id_, str) else None

    def reject(reason):
        return Reject(n, safe_id, "manifest", reason, where)

    try:
        start, duration = float(sup["start"]), float(sup["duration"])
    except (KeyError, TypeError, ValueError):
        return reject("supervision needs numeric 'start' and 'duration'")
    if span is not None and (start < -CUT_TOLERANCE or start + duration > span + CUT_TOLERANCE):
        return reject(f"supervision [{start:g}, {start + duration:g}] s reaches outside its cut "
                      f"(0 to {span:g} s)")
    audio = _recording_audio(recording, root)
    if isinstance(audio, str):
        return reject(audio)
    path, channel_ids = audio
    cols = _channels(sup.get("channel"), channel_ids)
    if isinstance(cols, str):
        return reject(cols)
    ref = AudioRef(path, start=max(0.0, offset + start), duration=duration, channels=cols)
    record = {"id": id_, "text": obj.get("text"), "audio": ref.describe(),
              "speaker": as_label(obj.get("speaker")), "language": obj.get("language"),
              "duration": obj.get("duration")}
    return record_from_fields(record, n, ref, where)


def _cuts(path: Path, fields: dict[str, str], counter: list[int]) -> Iterator[Item]:
    root = path.parent
    for line, cut in _lines(path):
        where = f"{path}:{line}"
        if isinstance(cut, str) or not isinstance(cut, dict):
            counter[0] += 1
            yield Reject(counter[0], None, "manifest", cut if isinstance(cut, str) else
                         "line is not a JSON object", where)
            continue
        kind = cut.get("type", "MonoCut")
        sups = cut.get("supervisions")
        problem = (f"{kind} cuts are not supported (only MonoCut)" if kind not in ("MonoCut", "Cut") else
                   "cut has no recording" if not isinstance(cut.get("recording"), dict) else
                   "cut has no supervisions" if not isinstance(sups, list) or not sups else None)
        if problem is None:
            try:
                start, span = float(cut.get("start", 0.0)), float(cut["duration"])
            except (KeyError, TypeError, ValueError):
                problem = "cut needs numeric 'start' and 'duration'"
        if problem is not None:
            counter[0] += 1
            yield Reject(counter[0], cut.get("id") if isinstance(cut.get("id"), str) else None,
                         "manifest", problem, where)
            continue
        for k, sup in enumerate(sups):
            counter[0] += 1
            at = where if len(sups) == 1 else f"{where} supervision {k}"
            if not isinstance(sup, dict):
                yield Reject(counter[0], None, "manifest", "supervision is not a JSON object", at)
                continue
            if "channel" not in sup and "channel" in cut:
                sup = {**sup, "channel": cut["channel"]}
            yield _supervision(sup, cut["recording"], start, span, counter[0], at, fields, root)


def _pairs(recordings_path: Path, supervisions_path: Path, fields: dict[str, str],
           counter: list[int]) -> Iterator[Item]:
    recordings: dict[str, dict] = {}
    for _, rec in _lines(recordings_path):
        if isinstance(rec, dict) and isinstance(rec.get("id"), str):
            recordings.setdefault(rec["id"], rec)
    root = recordings_path.parent
    for line, sup in _lines(supervisions_path):
        counter[0] += 1
        where = f"{supervisions_path}:{line}"
        if isinstance(sup, str) or not isinstance(sup, dict):
            yield Reject(counter[0], None, "manifest", sup if isinstance(sup, str) else
                         "line is not a JSON object", where)
            continue
        rec = recordings.get(sup.get("recording_id"))
        if rec is None:
            yield Reject(counter[0], sup.get("id") if isinstance(sup.get("id"), str) else None,
                         "manifest", f"recording {sup.get('recording_id')!r} is not in "
                         f"{recordings_path.name}", where)
            continue
        yield _supervision(sup, rec, 0.0, None, counter[0], where, fields, root)
