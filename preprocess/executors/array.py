"""An array of independent jobs on a shared file system (a Slurm job array, any scheduler).

    preprocess-data ... --output-dir OUT --shard K/N     for K = 0..N-1: anywhere, any order
    preprocess merge OUT                                  once they have finished (or to see which have not)

Job K computes the partition from the manifest alone (partition.py) and runs its share, with
a local executor (`InProcess`, or `OnePerDevice` for several GPUs of one node), into its own
sub-store OUT/shards/KofN/. It resumes like any job (its own progress file and lock); it never
opens OUT itself, so N jobs and a merge can run at the same time.

A shard must agree with OUT on two things, checked when a job starts and again by the merge:

- the fingerprint (input files and the options that change outputs). An utterance's bytes do
  not depend on which share computed it, so a shard's fingerprint is the job's, the one a
  single-machine run has: OUT's progress file carries it and the merge compares each shard's
  with it. K and N are not in it.
- the partition: N and the manifest's ids and durations (its digest, in OUT/shards/array.json
  and each shard's `.shard.json`). A shard cut from another N or another version of the
  manifest holds another share, and mixing it in would leave utterances in no share. The
  manifest's file itself is not in the fingerprint (a single-machine run resumes into a
  manifest with lines appended), which is why the partition has its own check.

OUT/shards/array.json (count, partition digest, fingerprint, manifest path, provenance) is
made by whichever job starts first, atomically (a hard link that fails if it exists), and every
later job must match it.

The merge adopts a shard only once all of its share is done or rejected and no job holds its
lock, so a shard still running is never taken from under it. It names each share that is
missing (no sub-store: never started, or removed), unfinished (started, some left) or running,
and each sub-store made with other settings or another partition, which it leaves in place.
When every share is in OUT it writes the manifests in source order and stats.json: the result
equals a single-machine run.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..contract import REJECTS, SHARDS
from ..manifest import ManifestError, read_output_manifest
from ..partition import Partition, shard_name
from ..sources import as_paths, describe
from ..store.dataset import OutputExists
from ..store.fsutil import fsync_dir, write_atomic
from ..store.journal import ConfigMismatch, Journal
from ..store.shards import (ARRAY_SHARD, adopt_shard, combined_runs, merge_command,
                            merge_shards, open_shard, remove_shards_dir, shard_dirs, shard_runs)

ARRAY_STATE = "array.json"    # in OUT/shards: what every shard of the array must agree on
SHARD_STATE = ".shard.json"   # in OUT/shards/KofN: which share of which partition it holds


class ArrayShard:
    """Share K of N of an array: the job's output is OUT/shards/KofN (see `shard_job`), run by
    `inner` (an executor of this package). `before_plan` records the share in the sub-store,
    under its lock, before any of its work is committed."""

    def __init__(self, inner, index: int, count: int, partition: str):
        self.inner, self.index, self.count, self.partition = inner, index, count, partition

    def before_plan(self, job, output) -> None:
        write_atomic(output.path / SHARD_STATE, json.dumps(
            {"index": self.index, "count": self.count, "partition": self.partition}).encode())
        self.inner.before_plan(job, output)

    def execute(self, job, plan, output, summary) -> None:
        self.inner.execute(job, plan, output, summary)


def shard_job(opts, provenance: dict, shard: tuple[int, int], inner):
    """(Job, ArrayShard) for `--shard K/N` of `opts` (whose output_dir is OUT); or, when all of
    share K is in OUT already (merged) and it has no sub-store, a message saying so. Raises
    ConfigMismatch when OUT or the array's state says the settings or the partition differ."""
    from ..job import Job

    index, count = shard
    out = opts.output_dir
    partition = Partition.of_manifest(opts.manifest, count, opts.input_format, dict(opts.fields))
    sub = replace(opts, output_dir=out / SHARDS / shard_name(index, count),
                  only_ids=partition.ids_of(index), shard=shard)
    job = Job(sub, {k: v for k, v in provenance.items() if k != "options"})
    found = Journal.read_fingerprint(out)
    if found is not None and found != job.fingerprint:
        raise ConfigMismatch(
            f"{out} holds outputs made with other settings (fingerprint {found[:12]}, this job "
            f"{job.fingerprint[:12]}){job.what_differs(out)}; every shard must be run with the "
            "settings of the others")
    register(out, {"count": count, "partition": partition.digest, "fingerprint": job.fingerprint,
                   "manifest": [str(p.resolve()) for p in as_paths(opts.manifest)],
                   "input_format": opts.input_format, "fields": dict(opts.fields),
                   "provenance": job.provenance})
    if not sub.output_dir.exists() and partition.left_in(index, *done_in(out)) == 0:
        return f"all of shard {index}/{count} is already merged into {out}; nothing to do"
    return job, ArrayShard(inner, index, count, partition.digest)


def register(out: Path, state: dict) -> None:
    """Make OUT/shards/array.json from `state` if no job has; else require that it matches."""
    root = out / SHARDS
    root.mkdir(parents=True, exist_ok=True)
    path = root / ARRAY_STATE
    if not path.exists():
        tmp = root / f".{ARRAY_STATE}.{socket.gethostname()}.{os.getpid()}"
        write_atomic(tmp, json.dumps(state, indent=1).encode())
        try:
            os.link(tmp, path)   # fails if another job made it first: then it is compared
            fsync_dir(root)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    old = read_state(out)
    if old is None:
        raise OutputExists(f"{path} is not readable; remove it if no shard has started")
    if old["count"] != state["count"]:
        raise ConfigMismatch(f"{out} is being made as {old['count']} shards, not {state['count']}; "
                             f"run --shard K/{old['count']}, or remove {out} to start over")
    if old["partition"] != state["partition"]:
        raise ConfigMismatch(f"{out}: the shards were cut from another version of the manifest "
                             f"({old['manifest']}: other ids or durations); run every shard "
                             "from the same manifest")
    if old["fingerprint"] != state["fingerprint"]:
        from ..provenance import changes

        found = changes(old.get("provenance", {}), state["provenance"])
        differs = "; what differs: " + "; ".join(found) if found else ""
        raise ConfigMismatch(f"{out}: the other shards were made with other settings (fingerprint "
                             f"{old['fingerprint'][:12]}, this job {state['fingerprint'][:12]})"
                             f"{differs}; every shard must be run with the same settings")


def read_state(out: Path) -> dict | None:
    try:
        state = json.loads((out / SHARDS / ARRAY_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def done_in(out: Path) -> tuple[set[str], set[int]]:
    """OUT's done ids and rejected source lines, read without its lock."""
    rejects = read_output_manifest(out / REJECTS, require_id=False)[0]
    return Journal.read_done(out), {r["line"] for r in rejects if isinstance(r.get("line"), int)}


@dataclass
class MergeReport:
    out: Path
    adopted: int = 0                                    # utterances
    shards: list[str] = field(default_factory=list)     # sub-stores adopted now
    missing: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    complete: bool = True                               # every share is in OUT

    @property
    def ok(self) -> bool:
        return self.complete and not self.mismatched

    def lines(self) -> list[str]:
        """What the merge did, then one line per share or sub-store it could not adopt."""
        shards = f" from {len(self.shards)} shard(s)" if self.shards else ""
        out = [f"merged {self.adopted} utterances{shards} into {self.out}"]
        out += [f"shard {m}" for m in self.missing + self.unfinished + self.running + self.mismatched]
        if not self.complete:
            out.append(f"{self.out} is not complete yet; run `preprocess merge {self.out}` again "
                       "once those shards have finished")
        return out


def merge_output(out: Path, manifest: Path | None = None) -> MergeReport:
    """`preprocess merge OUT`: adopt what the shards in OUT/shards hold. Without an array
    (no OUT/shards/array.json): the per-device shards an interrupted run left
    (`store.shards.merge_command`). With one: the array merge described above; `manifest`
    replaces the path the shards recorded (the same file seen from another mount)."""
    state = read_state(out)
    if state is None:
        return MergeReport(out, adopted=merge_command(out))
    from ..store.dataset import OutputDir
    from ..store.formats import detect_format
    from ..store.stats import write_stats

    count, digest, fp = state["count"], state["partition"], state["fingerprint"]
    recorded = state["manifest"] if isinstance(state["manifest"], list) else [state["manifest"]]
    path = Path(manifest) if manifest is not None else [Path(p) for p in recorded]
    try:
        partition = Partition.of_manifest(path, count, state.get("input_format", "auto"),
                                          state.get("fields") or {})
    except ManifestError as e:
        raise OutputExists(f"{e}: the shards were cut from it; pass its path with --manifest") from None
    if partition.digest != digest:
        raise ConfigMismatch(f"{describe(path)} is not the manifest the shards of {out} were cut from "
                             "(other ids or durations); pass that one with --manifest")
    own = Journal.read_fingerprint(out)
    if own is not None and own != fp:
        raise ConfigMismatch(f"{out} holds outputs made with other settings than its shards "
                             f"(fingerprint {own[:12]}, the shards {fp[:12]})")
    provenance = state["provenance"]
    dirs = shard_dirs(out)
    fmt = detect_format(out, *dirs)
    output = OutputDir(out, fp, fmt.writer(out, provenance["options"].get("latent_dtype", "float32")))
    report = MergeReport(out)
    try:
        report.adopted = merge_shards(output, keep_runs=True)   # per-device shards, if any
        present = set()
        for d in dirs:
            m = ARRAY_SHARD.match(d.name)
            if m is None:
                continue
            index, n = int(m.group(1)), int(m.group(2))
            why = _mismatch(d, n, count, digest, fp)
            if why:
                report.mismatched.append(f"{d.name} {why}; it is left in {d}")
                continue
            present.add(index)
            if Journal.read_fingerprint(d) is None:
                report.unfinished.append(f"{d.name} is unfinished: started, nothing committed yet; "
                                         f"rerun its job (--shard {index}/{count})")
                continue
            try:
                sub = open_shard(output, d)
            except OutputExists:
                report.running.append(f"{d.name} is still running (or its job holds the lock)")
                continue
            left = partition.left_in(index, sub.done | output.done,
                                     sub.rejected_lines | output.rejected_lines)
            if left:
                sub.close()
                report.unfinished.append(
                    f"{d.name} is unfinished: {left} of {partition.size_of(index)} utterances left; "
                    f"rerun its job (--shard {index}/{count}) to resume it")
                continue
            report.adopted += adopt_shard(output, d, sub)
            report.shards.append(d.name)
        for index in range(count):
            left = partition.left_in(index, output.done, output.rejected_lines)
            if left:
                report.complete = False
                if index not in present:
                    report.missing.append(
                        f"{shard_name(index, count)} is missing: {left} utterances, never started "
                        f"or removed; run --shard {index}/{count}")
        output.finalize(dict(zip(partition.ids, partition.lines)))
        if report.complete:
            write_stats(out, provenance, run=combined_runs(shard_runs(out, waiting=False)))
            (out / SHARDS / ARRAY_STATE).unlink(missing_ok=True)
            remove_shards_dir(out)
    finally:
        output.close()
    return report


def _mismatch(shard: Path, count: int, expected: int, digest: str, fp: str) -> str | None:
    """Why the array shard `shard` (of `count` shards) does not belong to the array, or None."""
    if count != expected:
        return f"belongs to an array of {count} shards, not {expected}"
    found = Journal.read_fingerprint(shard)
    if found is not None and found != fp:
        return (f"was made with other settings (fingerprint {found[:12]}, the array "
                f"{fp[:12]})")
    try:
        marker = json.loads((shard / SHARD_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None   # started, nothing committed yet: it holds no work of another partition
    if marker.get("partition") != digest:
        return "was cut from another version of the manifest"
    return None


__all__ = ["ArrayShard", "MergeReport", "merge_output", "shard_job"]
