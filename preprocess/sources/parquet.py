"""Hugging Face dataset folders, Parquet and Arrow files: one record per row.

The audio column (`audio`, or what `--field audio=COLUMN` names) holds a Hugging Face `Audio`
struct `{bytes, path}`, plain bytes, or a path. A row with bytes points to them (file and row;
the CPU stage reads that row alone); a row with only a path points to that file, resolved
against the table's folder, then the working directory. The id is the `id` column, or else the
stem of the audio's `path`; integer ids and speakers become strings.

Files, in this order:
- a `.parquet` or `.arrow` file: itself;
- a folder with `dataset_dict.json` (`DatasetDict.save_to_disk`): each split's folder, in the
  order of its `splits`, read as below;
- a folder with `state.json` (`Dataset.save_to_disk`): the `_data_files` it lists, in order;
- any other folder: every `*.parquet` below it, else every `*.arrow`, sorted by path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..manifest import (
    AudioRef,
    Item,
    ManifestError,
    Reject,
    record_from_fields,
    resolve_audio,
)
from .common import as_label, source_key
from .tables import TableError, open_table

TABLE_SUFFIXES = (".parquet", ".arrow")


def table_files(path: Path) -> list[Path]:
    """The table files of a dataset source, in reading order (see the module docstring)."""
    if not path.is_dir():
        return [path]
    if (path / "dataset_dict.json").is_file():
        splits = _json(path / "dataset_dict.json").get("splits") or []
        return [f for split in splits for f in table_files(path / split)]
    if (path / "state.json").is_file():
        files = _json(path / "state.json").get("_data_files") or []
        return [path / entry["filename"] for entry in files]
    for suffix in TABLE_SUFFIXES:
        found = sorted(path.rglob(f"*{suffix}"), key=lambda p: p.relative_to(path).as_posix())
        if found:
            return found
    return []


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path}: cannot read ({e})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: not a JSON object")
    return data


def read_tables(files: list[Path], fields: dict[str, str]) -> Iterator[Item]:
    """Records (and rejects) of every row of `files`, in order; `line` counts rows (and
    unreadable files) from 1, `where` is `FILE:row N` (N from 0 within the file). A file that
    cannot be opened is one reject; one that opens but lacks the audio column, one per row."""
    n = 0
    audio = source_key(fields, "audio")
    columns = [source_key(fields, k) for k in ("id", "text", "speaker", "language", "duration")]
    for file in files:
        try:
            table = open_table(str(file))
        except TableError as e:
            n += 1
            yield Reject(n, None, "manifest", str(e), str(file))
            continue
        try:
            table.audio_kind(audio)
            chunks = table.chunks(columns, audio)
        except TableError as e:
            for row in range(table.num_rows):
                n += 1
                yield Reject(n, None, "manifest", str(e), f"{file}:row {row}")
            continue
        for start, values, paths, has_bytes in chunks:
            for i, (path, has) in enumerate(zip(paths, has_bytes)):
                n += 1
                yield _row(file, start + i, {c: v[i] for c, v in values.items()}, path, has, n, fields)


def _row(file: Path, row: int, values: dict, path: str | None, has_bytes: bool, n: int,
         fields: dict[str, str]) -> Item:
    where = f"{file}:row {row}"

    def get(name):
        return values.get(source_key(fields, name))

    id_ = as_label(get("id"))
    if id_ is None and path and source_key(fields, "id") == "id":
        id_ = Path(path).stem
    if has_bytes:
        ref, shown = AudioRef(str(file.resolve()), row=row, column=source_key(fields, "audio")), path or where
    elif path:
        found = resolve_audio(path, file.parent)
        ref, shown = AudioRef(str(found) if found else path), path
    else:
        return Reject(n, id_ if isinstance(id_, str) else None, "manifest",
                      "row has neither audio bytes nor an audio path", where)
    obj = {"id": id_, "text": get("text"), "audio": shown, "speaker": as_label(get("speaker")),
           "language": get("language"), "duration": get("duration")}
    return record_from_fields(obj, n, ref, where)
