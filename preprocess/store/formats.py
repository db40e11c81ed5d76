"""The one store interface: which format an output directory holds, and that format's writer,
reader, shard adoption and text-id staging.

Only the store modules know which format a directory holds; everything else asks this module
for the StoreFormat of a directory (or of a name given on the command line) and calls it.

    detect_format(out, *more) -> StoreFormat      the format `out` (or the first of `more`) holds
    format_named(name) -> StoreFormat             "npy" or "zarr"
    open_writer(out, fmt, latent_dtype) -> writer what the job writes through (OutputDir's store)

A StoreFormat has:

    name                              "npy" | "zarr"
    owned                             entries of OUT it writes (removed by --force)
    holds(out) -> bool
    writer(out, latent_dtype)         a new or resumed store, buffered as the job writes it
    reopen_writer(out)                a writer for the store already in out, with its dtype
    rows(out)                         reading: locate(line), load(location), load_many, all_of
    adopt(writer, shard, lines)       make a finished shard's data durable in the writer's
                                      directory; returns the lines pointing to it there
    bytes_needed(n, seconds, latent_dtype)  about the space n more utterances take
    text_ids(out, writer, staging)    a TextIdsStaging (below)

A writer (OutputDir's `store`): write(items) -> locations, is_durable(line), record_present(line),
flush(), close(), and `format` (its StoreFormat's name).

TextIdsStaging, the format's part of `preprocess text-ids` (text_ids.py has the steps):
    check_supported()                          fail early where this file system cannot
    next_generation(lines) -> int              a number above every generation in use
    begin(generation)                          a fresh compute: drop an abandoned attempt
    stage(generation, lines, ids, usable)      make one chunk of new ids durable (or keep none)
    relocate(generation, line, ids) -> line    the manifest line once the new ids are in use
    prepare(generation, kept_lines, new_ids)   everything the switch needs, durable
    switch(generation) -> bool                 after the commit point: put the new ids in use
                                               (True: switched now; False: nothing to switch)
    cleanup()                                  after the roll forward: delete what is unused
"""

from __future__ import annotations

import os
from pathlib import Path

from .npy.format import NpyFormat
from .zarr.format import ZarrFormat

class CannotStage(Exception):
    """New text ids cannot be staged or switched to here (file system, a missing copy)."""


# Asked in this order; npy, the trainer's layout, is the default.
FORMATS = {f.name: f for f in (ZarrFormat(), NpyFormat())}
DEFAULT = "npy"
NAMES = tuple(sorted(FORMATS))
OWNED = tuple(name for f in FORMATS.values() for name in f.owned)


def format_named(name: str):
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown store format {name!r} (one of {', '.join(NAMES)})") from None


def detect_format(out: str | os.PathLike, *more: str | os.PathLike):
    """The format that `out` holds; where `out` holds no store yet, the format of the first of
    `more` (e.g. its shards) that holds one; npy when none does."""
    for d in (Path(out), *map(Path, more)):
        for fmt in FORMATS.values():
            if fmt.holds(d):
                return fmt
    return FORMATS[DEFAULT]


def open_writer(out: str | os.PathLike, fmt: str = DEFAULT, latent_dtype: str = "float32"):
    """The writer the job opens on `out` for `--format fmt --latent-dtype latent_dtype`."""
    return format_named(fmt).writer(Path(out), latent_dtype)
