"""Adopting finished shards (per-device or per-job sub-stores under OUT/shards/<name>/) into OUT.

A shard's data is made durable in OUT first (npy: files hard-linked into place; zarr: rows
appended to OUT's store, resumably), then its manifest lines are adopted (manifest, then
journal), then its rejects; a shard is deleted only after all of it is adopted. So a crash
mid-merge loses nothing, and a rerun (or `preprocess merge OUT`) completes it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from ..contract import MANIFESTS, REJECTS, SHARDS, STATS
from ..manifest import Reject, read_output_manifest
from .dataset import OutputDir, OutputExists
from .formats import detect_format, format_named
from .fsutil import append_durable, free_bytes, human_bytes, syncfs
from .journal import ConfigMismatch, Journal
from .stats import write_stats


# Under OUT/shards: the run record (stats.json's last_run) of every shard adopted and deleted,
# so that `preprocess merge` reports all of the shards' runs after a crash mid-merge.
RUNS = "runs.jsonl"
ARRAY_SHARD = re.compile(r"^(\d+)of(\d+)$")


def shard_dirs(out: Path) -> list[Path]:
    root = out / SHARDS
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def is_array_shard(shard: Path) -> bool:
    """A share of an array of independent jobs (OUT/shards/KofN, `--shard K/N`): adopted only
    by the array's merge, once all of its share is done (executors/array.py)."""
    return ARRAY_SHARD.match(shard.name) is not None


def merge_shards(output: OutputDir, *, keep_runs: bool = False) -> int:
    """Adopt every finished record of the shards OUT/shards/* other than array shards into
    OUT, then delete those shards (and OUT/shards when nothing else is in it, unless
    `keep_runs`: then the shards' run records stay, see `shard_runs`). Idempotent: records
    already adopted are skipped. Returns the number adopted."""
    root = output.path / SHARDS
    if not root.is_dir():
        return 0
    adopted = 0
    for shard in shard_dirs(output.path):
        if is_array_shard(shard):
            continue
        fp = Journal.read_fingerprint(shard)
        if fp is None:
            shutil.rmtree(shard)
            continue
        if fp != output.journal.fingerprint:
            raise ConfigMismatch(f"{shard} was made with other settings than {output.path}; "
                                 "remove it or rerun with its settings")
        adopted += adopt_shard(output, shard, open_shard(output, shard))
    if not keep_runs:
        remove_shards_dir(output.path)
    return adopted


def open_shard(output: OutputDir, shard: Path) -> OutputDir:
    """The shard as an output directory: this takes its lock (OutputExists while a run writes
    to it) and drops what its journal does not mark done (a crash between its manifest append
    and its journal)."""
    fmt = format_named(output.store.format)
    return OutputDir(shard, Journal.read_fingerprint(shard), fmt.reopen_writer(shard))


def adopt_shard(output: OutputDir, shard: Path, sub: OutputDir) -> int:
    """Adopt the records `sub` (the open `shard`) holds into OUT: data, manifest lines and
    journal, rejects; then record its run and delete it. Closes `sub`. Returns the number of
    records adopted."""
    fmt = format_named(output.store.format)
    try:
        todo = [(split, line) for split, name in MANIFESTS.items()
                for line in read_output_manifest(shard / name)[0]
                if line["id"] not in output.done]
        moved = fmt.adopt(output.store, shard, [line for _, line in todo])
        lines = [(split, line) for (split, _), line in zip(todo, moved)]
        syncfs(output.path)
        output.adopt(lines)
        rejects = read_output_manifest(shard / REJECTS, require_id=False)[0]
        output.add_rejects(Reject.from_json(r) for r in rejects)
    finally:
        sub.close()
    run = _finished_stats(shard).get("last_run")
    if isinstance(run, dict):
        append_durable(output.path / SHARDS / RUNS,
                       (json.dumps({"shard": shard.name, "run": run}) + "\n").encode())
    shutil.rmtree(shard)
    return len(lines)


def shard_runs(out: Path, waiting: bool = True) -> list[dict]:
    """The run record of every shard of OUT: those adopted already, then (if `waiting`) those
    waiting."""
    recorded = {r["shard"]: r["run"] for r in read_output_manifest(out / SHARDS / RUNS, require_id=False)[0]
                if isinstance(r.get("run"), dict) and isinstance(r.get("shard"), str)}
    for shard in shard_dirs(out) if waiting else ():
        run = _finished_stats(shard).get("last_run")
        if isinstance(run, dict):
            recorded.setdefault(shard.name, run)
    return [recorded[k] for k in sorted(recorded)]


def remove_shards_dir(out: Path) -> None:
    """Remove the run records and OUT/shards, unless shards are still in it (an array's)."""
    root = out / SHARDS
    if root.is_dir() and not shard_dirs(out):
        (root / RUNS).unlink(missing_ok=True)
        if not any(root.iterdir()):
            root.rmdir()


def merge_command(out: Path) -> int:
    """`preprocess merge OUT`: finish a merge that a crash interrupted. stats.json keeps the
    provenance and the last run's record of OUT or, where OUT has none yet, of a shard."""
    shards = [s for s in shard_dirs(out) if not is_array_shard(s)]
    fp = Journal.read_fingerprint(out)
    if fp is None:
        fp = Journal.read_fingerprint(shards[0]) if shards else None
    if fp is None:
        raise OutputExists(f"{out}: nothing to merge (no progress file in it or in {out / SHARDS})")
    if not shards:
        return 0  # nothing to adopt: the output and its order stay as its run left them
    own, of_shards = _finished_stats(out), [s for s in map(_finished_stats, shards) if s]
    provenance = (own or (of_shards[0] if of_shards else {})).get("provenance", {})
    run = combined_runs(shard_runs(out)) or own.get("last_run")
    fmt = detect_format(out, *shards)
    output = OutputDir(out, fp, fmt.writer(out, provenance.get("options", {}).get("latent_dtype", "float32")))
    try:
        n = merge_shards(output, keep_runs=True)
        output.finalize()
        write_stats(out, provenance, run=run)
        remove_shards_dir(out)  # the run records, now in stats.json
    finally:
        output.close()
    return n


def combined_runs(runs: list[dict]) -> dict | None:
    """One record of the shards' runs: counts summed, anything else as the first shard has it,
    and how many shards ran."""
    if not runs:
        return None
    combined = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, int) and not isinstance(value, bool):
            combined[key] = sum(r.get(key, 0) for r in runs if isinstance(r.get(key, 0), int))
    combined["shards"] = len(runs)
    return combined


def _finished_stats(d: Path) -> dict:
    """The stats.json of `d` where a run finished it (it has a provenance); else {}."""
    try:
        stats = json.loads((d / STATS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stats if isinstance(stats, dict) and isinstance(stats.get("provenance"), dict) else {}


def merge_disk_full_message(out: Path) -> str:
    """What `preprocess merge` says when OUT's file system fills: the shards stay until adopted,
    so freeing about the size of what they still hold and rerunning finishes the merge."""
    held = sum(f.stat().st_size for shard in shard_dirs(out) for f in shard.rglob("*") if f.is_file())
    free = free_bytes(out)
    return (f"{out}: the disk is full" + (f" ({human_bytes(free)} free)" if free is not None else "")
            + f" while adopting the shards in {out / SHARDS}; they hold {human_bytes(held)}, "
            "about what the merge needs (less where it can hard-link). Nothing is lost: the shards "
            f"stay until adopted. Free space, then rerun `preprocess merge {out}`")
