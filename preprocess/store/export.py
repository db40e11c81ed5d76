"""Writing an output directory in the trainer's .npy layout from any store (`preprocess export`).

Read through the store interface (FeatureReader), so the source may be in either format; from
the packed store it is the way to the files the trainer reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..contract import BASE_KEYS, MANIFESTS, PATH_KEYS, PROGRESS_FILE, REJECTS, STATS
from ..manifest import read_output_manifest
from .dataset import dumps_line, manifest_line
from .features import UtteranceFeatures
from .fsutil import npy_bytes, write_atomic
from .journal import Journal, fingerprint_of
from .npy.layout import relative_paths
from .npy.writer import NpyWriter, trainer_arrays
from .reader import FeatureReader
from .stats import write_stats

# keys manifest_line derives itself; everything else on a line is an extra, copied in order
DERIVED_KEYS = (*BASE_KEYS, *PATH_KEYS, "text_len", "code_len", "condition_len", "row")


def npy_line(line: dict) -> dict:
    """The line a direct `--format npy` run writes for the utterance of a line of any store."""
    base = {k: line[k] for k in BASE_KEYS}
    extras = {k: v for k, v in line.items() if k not in DERIVED_KEYS}
    return manifest_line(base, line["text_len"], line["code_len"], relative_paths(line["id"]), extras)


def _exported(dest: Path, item: UtteranceFeatures) -> bool:
    """All four files of `item` are in place with the right size (a resumed export)."""
    arrays = trainer_arrays(item)
    for key, rel in relative_paths(item.id).items():
        path = dest / rel
        if not path.exists() or path.stat().st_size != len(npy_bytes(arrays[key])):
            return False
    return True


def _write_npy_provenance(src_out: Path, dest: Path, ids: list[str]) -> None:
    """stats.json and the progress file of the npy output a direct run would have made, so
    `preprocess-data --format npy` into DEST resumes (and later commands see the npy layout)."""
    try:
        provenance = json.loads((src_out / STATS).read_text(encoding="utf-8"))["provenance"]
    except (OSError, KeyError, ValueError):  # not written by a finished run: copy what is there
        if (src_out / STATS).exists():
            write_atomic(dest / STATS, (src_out / STATS).read_bytes())
        return
    options = provenance.get("options", {})
    options.update(format=NpyWriter.format, latent_dtype="float32")
    write_stats(dest, provenance)
    if "files" in provenance:
        journal = Journal(dest / PROGRESS_FILE, fingerprint_of(provenance), set())
        journal.rewrite(ids)


def export_npy(src_out: str | os.PathLike, dest: str | os.PathLike, *, chunk: int = 1024) -> dict:
    """Write the .npy files and manifests a direct `--format npy` run would have written, from
    the output in `src_out`; copy stats.json and rejects.jsonl.

    Arrays come out as int32 ids and codes and float32 latents: for a float32 store the bytes
    equal a direct npy run; a float16 store's latents are upcast (same values, other bytes).
    Files are written atomically (NpyWriter), `chunk` utterances per sync; a rerun skips
    utterances already exported, and the manifests are written last, each in one atomic rename.
    Returns {"utterances": n, "written": n, "skipped": n}."""
    src_out, dest = Path(src_out), Path(dest)
    if src_out.resolve() == dest.resolve():
        raise ValueError("export_npy needs a destination other than its source")
    lines = {split: read_output_manifest(src_out / name)[0] for split, name in MANIFESTS.items()}
    with FeatureReader.open(src_out) as reader:
        text_lens, code_lens = reader.text_lens(), reader.code_lens()
        dest.mkdir(parents=True, exist_ok=True)
        store = NpyWriter(dest)
        written = skipped = 0
        pending: list[UtteranceFeatures] = []
        for i, got in reader.items():
            item = UtteranceFeatures(got["id"], got["text_ids"], got["codes"], got["condition"],
                                     got["emo_vec"])
            if (item.text_ids.size, item.codes.size) != (text_lens[i], code_lens[i]):
                raise ValueError(f"{src_out}: lengths of {item.id!r} differ from its manifest line")
            if _exported(dest, item):
                skipped += 1
                continue
            pending.append(item)
            if len(pending) >= chunk:
                store.write(pending)
                written, pending = written + len(pending), []
        store.write(pending)
        written += len(pending)
        total = len(reader)

    for split, name in MANIFESTS.items():
        if not (src_out / name).exists():
            continue
        text = "".join(dumps_line(npy_line(line)) for line in lines[split])
        write_atomic(dest / name, text.encode("utf-8"))
    if (src_out / REJECTS).exists():
        write_atomic(dest / REJECTS, (src_out / REJECTS).read_bytes())
    _write_npy_provenance(src_out, dest, [line["id"] for split in lines.values() for line in split])
    return {"utterances": total, "written": written, "skipped": skipped}
