"""Adopting shards: sub-stores written under OUT/shards/<k>/ (one per device or per job) merged
into OUT. Files are linked into place before manifest lines are adopted, and a shard is deleted
only after all of it is adopted, so a crash mid-merge loses nothing and a rerun completes it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..contract import MANIFESTS, PATH_KEYS, REJECTS, SHARDS, STATS
from ..manifest import Reject, read_output_manifest
from . import open_writer
from .dataset import ConfigMismatch, OutputDir, OutputExists
from .fsutil import syncfs
from .journal import Journal
from .stats import write_stats


def merge_shards(output: OutputDir) -> int:
    """Adopt every finished record of OUT/shards/* into OUT, then delete the shards.
    Idempotent: records already adopted are skipped. Returns the number adopted."""
    root = output.path / SHARDS
    if not root.is_dir():
        return 0
    adopted = 0
    for shard in sorted(p for p in root.iterdir() if p.is_dir()):
        fp = Journal.read_fingerprint(shard)
        if fp is None:
            shutil.rmtree(shard)
            continue
        if fp != output.journal.fingerprint:
            raise ConfigMismatch(f"{shard} was made with other settings than {output.path}; "
                                 "remove it or rerun with its settings")
        packed = output.store.format == "zarr"
        sub = OutputDir(shard, fp, open_writer(shard, output.store.format,
                                              getattr(output.store, "latent_dtype", "float32")))
        try:
            if packed:
                from .zarr import merge_zarr_stores
                rows = merge_zarr_stores([shard], output.store)
            lines = []
            for split, name in MANIFESTS.items():
                for line in read_output_manifest(shard / name)[0]:
                    if line["id"] in output.done:
                        continue
                    if packed:
                        line["row"] = rows[(0, line["row"])]
                    else:
                        for key in PATH_KEYS:
                            _link(shard / line[key], output.path / line[key])
                    lines.append((split, line))
            syncfs(output.path)
            output.adopt(lines)
            adopted += len(lines)
            rejects = read_output_manifest(shard / REJECTS, require_id=False)[0]
            output.add_rejects(Reject(r["line"], r.get("id"), r["stage"], r["reason"]) for r in rejects)
        finally:
            sub.close()
        shutil.rmtree(shard)
    root.rmdir()
    return adopted


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def merge_command(out: Path) -> int:
    """`preprocess merge OUT`: finish a merge that a crash interrupted."""
    fp = Journal.read_fingerprint(out)
    shards = out / SHARDS
    if fp is None:
        found = sorted(shards.glob("*/")) if shards.is_dir() else []
        fp = Journal.read_fingerprint(found[0]) if found else None
    if fp is None:
        raise OutputExists(f"{out}: nothing to merge (no progress file in it or in {shards})")
    shard_dirs = sorted(shards.glob("*/")) if shards.is_dir() else []
    provenance = _stats_provenance(out, *shard_dirs)
    options = provenance.get("options", {})
    fmt = "zarr" if any((d / "features.zarr").exists() for d in [out, *shard_dirs]) else "npy"
    output = OutputDir(out, fp, open_writer(out, fmt, options.get("latent_dtype", "float32")))
    try:
        n = merge_shards(output)
        output.finalize()
        write_stats(out, provenance)
    finally:
        output.close()
    return n


def _stats_provenance(*dirs: Path) -> dict:
    """The provenance recorded by the first of `dirs` that finished a stats.json."""
    for d in dirs:
        try:
            return json.loads((d / STATS).read_text())["provenance"]
        except (OSError, KeyError, ValueError):
            continue
    return {}
