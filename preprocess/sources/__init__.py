"""Corpus sources: everything `--manifest` accepts, read into the records the pipeline uses.

    jsonl    our JSONL manifest (`.jsonl`, `.jsonl.gz`, any other name)   manifest.read_manifest
    csv      our CSV manifest (`.csv`, `.csv.gz`)                          manifest.read_manifest
    tar      WebDataset tar shards: a `.tar`, several, or a folder of them  sources/tar.py
    parquet  Hugging Face dataset folders, `.parquet` and `.arrow` files    sources/parquet.py
    lhotse   Lhotse cuts, or recordings + supervisions (`.jsonl[.gz]`)      sources/lhotse.py

Every source yields `Record`s and `Reject`s in a deterministic order, ids unique (a repeated
id is a reject naming where the first was). `line` is the manifest line for jsonl/csv and the
1-based position in the source otherwise, where `where` says the shard and member, file and
row, or manifest line of a record.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..manifest import Item, ManifestError, is_csv, read_manifest, unique_ids
from .common import OUR_FIELDS

KINDS = ("jsonl", "csv", "tar", "parquet", "lhotse")


def as_paths(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(source, (str, os.PathLike)):
        return [Path(source)]
    return [Path(p) for p in source]


def describe(source) -> str:
    """The source's paths as a user wrote them, comma-separated."""
    return ", ".join(str(p) for p in as_paths(source))


def source_root(source) -> Path:
    """The folder relative audio paths of JSONL/CSV manifests resolve against: the manifest's."""
    first = as_paths(source)[0].resolve()
    return first if first.is_dir() else first.parent


def parse_fields(values: Iterable[str]) -> dict[str, str]:
    """`--field OURS=THEIRS` values as {ours: theirs}; ValueError naming a bad one."""
    out = {}
    for value in values:
        ours, sep, theirs = value.partition("=")
        if not sep or not theirs or ours not in OUR_FIELDS:
            raise ValueError(f"--field {value!r}: expected NAME=KEY with NAME one of "
                             f"{', '.join(OUR_FIELDS)}")
        out[ours] = theirs
    return out


def detect_source(source) -> str:
    """The kind of a source (one of KINDS) from what its paths are.

    A folder: `tar` if it holds `*.tar` files, `parquet` if it is a dataset folder
    (`dataset_dict.json`, `state.json`) or holds `*.parquet` / `*.arrow` files, `lhotse` if it
    holds `*cuts*` or `*recordings*` `.jsonl[.gz]` files. A file: by its name (`.tar`,
    `.parquet`, `.arrow`, `.csv[.gz]`), and a JSONL(.gz) file by its first object: a Lhotse cut,
    recording or supervision is `lhotse`, anything else `jsonl`. Several paths must agree."""
    from .lhotse import first_object, manifest_kind

    paths = as_paths(source)
    for p in paths:
        if not p.exists():
            raise ManifestError(f"manifest not found: {p}")
    kinds = set()
    for p in paths:
        name = p.name.lower()
        if p.is_dir():
            kinds.add(_folder_kind(p))
        elif name.endswith(".tar"):
            kinds.add("tar")
        elif name.endswith((".parquet", ".arrow")):
            kinds.add("parquet")
        elif is_csv(p):
            kinds.add("csv")
        else:
            kinds.add("lhotse" if manifest_kind(first_object(p)) else "jsonl")
    if len(kinds) != 1:
        raise ManifestError(f"{describe(paths)}: the paths are of different kinds ({', '.join(sorted(kinds))})")
    kind = kinds.pop()
    if kind in ("jsonl", "csv") and len(paths) > 1:
        raise ManifestError(f"{describe(paths)}: one {kind} manifest at a time")
    return kind


def _folder_kind(path: Path) -> str:
    from .lhotse import is_lhotse_name

    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return "parquet"
    if next(path.rglob("*.tar"), None) is not None:
        return "tar"
    if next(path.rglob("*.parquet"), None) is not None or next(path.rglob("*.arrow"), None) is not None:
        return "parquet"
    if any(is_lhotse_name(p) for p in path.iterdir()):
        return "lhotse"
    raise ManifestError(f"{path}: a folder of no known source kind (no *.tar, *.parquet, *.arrow, "
                        "dataset_dict.json, state.json or Lhotse manifests in it)")


def read_source(source, kind: str = "auto", fields: dict[str, str] | None = None) -> Iterator[Item]:
    """Records and rejects of a source (`kind` "auto": `detect_source`), ids unique.
    Raises ManifestError when the source as a whole cannot be read."""
    from .lhotse import read_lhotse
    from .parquet import read_tables, table_files
    from .tar import read_shards, shard_files

    paths = as_paths(source)
    fields = dict(fields or {})
    kind = detect_source(paths) if kind in ("auto", None) else kind
    if kind not in KINDS:
        raise ManifestError(f"unknown input format {kind!r}; expected one of {', '.join(KINDS)}")
    for p in paths:
        if not p.exists():
            raise ManifestError(f"manifest not found: {p}")
    if kind in ("jsonl", "csv"):
        if len(paths) != 1 or not paths[0].is_file():
            raise ManifestError(f"{describe(paths)}: a {kind} manifest is one file")
        return read_manifest(paths[0], fields, csv_format=kind == "csv")
    if kind == "tar":
        shards = [s for p in paths for s in shard_files(p)]
        if not shards:
            raise ManifestError(f"{describe(paths)}: no *.tar shards")
        return unique_ids(read_shards(shards, fields))
    if kind == "parquet":
        files = [f for p in paths for f in table_files(p)]
        if not files:
            raise ManifestError(f"{describe(paths)}: no *.parquet or *.arrow files")
        return unique_ids(read_tables(files, fields))
    return unique_ids(read_lhotse(paths, fields))


__all__ = ["KINDS", "detect_source", "read_source", "parse_fields", "source_root", "describe"]
