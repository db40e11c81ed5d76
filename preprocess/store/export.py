"""Turning a packed (zarr) output directory into the trainer's .npy layout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..manifest import read_output_manifest
from ..contract import BASE_KEYS, MANIFESTS, PATH_KEYS, REJECTS, STATS
from .dataset import dumps_line, manifest_line
from .fsutil import npy_bytes, write_atomic
from .npy import NpyStore, UtteranceFeatures, relative_paths
from .zarr import STORE_DIR, PackedArrays

# keys manifest_line derives itself; everything else on a line is an extra, copied in order
DERIVED_KEYS = (*BASE_KEYS, *PATH_KEYS, "text_len", "code_len", "condition_len", "row")


def npy_line(line: dict) -> dict:
    """The line a direct `--format npy` run writes for the utterance of a packed line."""
    base = {k: line[k] for k in BASE_KEYS}
    extras = {k: v for k, v in line.items() if k not in DERIVED_KEYS}
    return manifest_line(base, line["text_len"], line["code_len"], relative_paths(line["id"]), extras)


def _exported(dest: Path, item: UtteranceFeatures) -> bool:
    """All four files of `item` are in place with the right size (a resumed export)."""
    arrays = (item.text_ids.astype(np.int32, copy=False), item.codes.astype(np.int32, copy=False),
              item.condition.astype(np.float32, copy=False), item.emo_vec.astype(np.float32, copy=False))
    for rel, array in zip(relative_paths(item.id).values(), arrays):
        path = dest / rel
        if not path.exists() or path.stat().st_size != len(npy_bytes(array)):
            return False
    return True


def _write_npy_provenance(src_out: Path, dest: Path, ids: list[str]) -> None:
    """stats.json and the progress file of the npy output a direct run would have made, so
    `preprocess-data --format npy` into DEST resumes (and later commands see the npy layout)."""
    import json

    from ..provenance import fingerprint_of
    from ..contract import PROGRESS_FILE
    from .journal import Journal
    from .stats import write_stats

    try:
        provenance = json.loads((src_out / STATS).read_text(encoding="utf-8"))["provenance"]
    except (OSError, KeyError, ValueError):  # not written by a finished run: copy what is there
        if (src_out / STATS).exists():
            write_atomic(dest / STATS, (src_out / STATS).read_bytes())
        return
    options = provenance.get("options", {})
    options.update(format="npy", latent_dtype="float32")
    write_stats(dest, provenance)
    if "files" in provenance:
        journal = Journal(dest / PROGRESS_FILE, fingerprint_of(provenance), set())
        journal.rewrite(ids)


def export_npy(src_out: str | os.PathLike, dest: str | os.PathLike, *,
               block_rows: int = 1024) -> dict:
    """Write the .npy files and manifests a direct `--format npy` run would have written, from
    the zarr output in `src_out`; copy stats.json and rejects.jsonl.

    Arrays come out as int32 ids and codes and float32 latents: for a float32 store the bytes
    equal a direct npy run; a float16 store's latents are upcast (same values, other bytes).
    Files are written atomically (NpyStore); a rerun skips utterances already exported, and
    the manifests are written last, each in one atomic rename.
    Returns {"utterances": n, "written": n, "skipped": n}."""
    src_out, dest = Path(src_out), Path(dest)
    if src_out.resolve() == dest.resolve():
        raise ValueError("export_npy needs a destination other than its source")
    packed = PackedArrays(src_out / STORE_DIR)
    try:
        lines = {split: read_output_manifest(src_out / name)[0] for split, name in MANIFESTS.items()}
        wanted: list[tuple[int, str, int, int]] = []  # (row, id, text_len, code_len)
        ids = packed.ids
        for line in (line for split_lines in lines.values() for line in split_lines):
            row = line.get("row")
            if not isinstance(row, int) or not 0 <= row < packed.rows or ids[row] != line["id"]:
                raise ValueError(f"{src_out}: the line of {line['id']!r} points to no committed "
                                 "row; rerun the original command to resume and repair it first")
            wanted.append((row, line["id"], line["text_len"], line["code_len"]))
        wanted.sort()

        dest.mkdir(parents=True, exist_ok=True)
        store = NpyStore(dest)
        written = skipped = 0
        i = 0
        while i < len(wanted):  # blocks of consecutive store rows: bulk reads, not row by row
            start = wanted[i][0]
            j = i
            while j < len(wanted) and wanted[j][0] < start + block_rows:
                j += 1
            block = packed.block(start, wanted[j - 1][0] + 1)
            t = np.concatenate([[0], np.cumsum(block.text_lens)])
            c = np.concatenate([[0], np.cumsum(block.code_lens)])
            items = []
            for row, id_, text_len, code_len in wanted[i:j]:
                k = row - start
                item = UtteranceFeatures(
                    id=id_,
                    text_ids=block.text_ids[t[k]:t[k + 1]].astype(np.int32),
                    codes=block.codes[c[k]:c[k + 1]].astype(np.int32),
                    condition=block.condition[k].astype(np.float32),
                    emo_vec=block.emo_vec[k].astype(np.float32))
                if (len(item.text_ids), len(item.codes)) != (text_len, code_len):
                    raise ValueError(f"{src_out}: lengths of {id_!r} differ from its manifest line")
                if _exported(dest, item):
                    skipped += 1
                else:
                    items.append(item)
            store.write(items)
            written += len(items)
            i = j

        for split, name in MANIFESTS.items():
            if not (src_out / name).exists():
                continue
            text = "".join(dumps_line(npy_line(line)) for line in lines[split])
            write_atomic(dest / name, text.encode("utf-8"))
        if (src_out / REJECTS).exists():
            write_atomic(dest / REJECTS, (src_out / REJECTS).read_bytes())
        _write_npy_provenance(src_out, dest, [line["id"] for split in lines.values() for line in split])
    finally:
        packed.close()
    return {"utterances": len(wanted), "written": written, "skipped": skipped}
