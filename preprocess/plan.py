"""The plan of a job: every record worth processing, longest first, with what is left to do.

    source --sources.read_source--> records (+ manifest rejects)
           --probe audio headers--> durations (+ audio and limit rejects)
           --sort longest first--> Plan

Batches are cut from the whole plan, done items included, so a resumed run forms each remaining
batch with the same members (and, on CPU, computes the same bytes) as an uninterrupted run.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .batching import frames_for_seconds
from .manifest import AudioRef, Record, Reject, missing_audio_reason, resolve_audio
from .options import JobOptions
from .sources import read_source, source_root


@dataclass
class WorkItem:
    index: int          # position in the plan
    record: Record
    audio: AudioRef     # resolved: a file that exists, or the member, row or segment of one
    text_at: int | None = None  # offset of its line in the --prepared-text file, if it has one


@dataclass
class Plan:
    items: list[WorkItem]
    frames: list[int]               # expected stacked frames per item (from the audio header)
    seconds: list[float]
    todo: list[bool]                # to be processed in this run
    rejects: list[Reject]           # found while planning, not reported before
    skipped_done: int
    line_of: dict[str, int]         # id -> source line, for the final manifest order

    @property
    def audio_seconds(self) -> float:
        return float(sum(s for s, t in zip(self.seconds, self.todo) if t))

    def todo_indices(self) -> list[int]:
        return [i for i, t in enumerate(self.todo) if t]


def make_plan(opts: JobOptions, done: set[str], rejected_lines: set[int]) -> Plan:
    """Read the source, probe durations from audio headers, sort longest first."""
    from .audio import AudioError, probe_duration

    manifest_dir = source_root(opts.manifest)
    records, rejects, line_of = [], [], {}
    for item in read_source(opts.manifest, opts.input_format, dict(opts.fields)):
        if isinstance(item, Reject):
            # With a share of the ids, the launching process reports manifest-level rejects;
            # in an array of independent jobs, share 0 does.
            reports = opts.only_ids is None or (opts.shard is not None and opts.shard[0] == 0)
            if reports and item.line not in rejected_lines:
                rejects.append(item)
            continue
        if opts.only_ids is not None and item.id not in opts.only_ids:
            continue
        line_of[item.id] = item.line
        records.append(item)

    def probe(rec: Record):
        ref = rec.ref
        if ref is None:
            path = resolve_audio(rec.audio, manifest_dir)
            if path is None:
                return missing_audio_reason(rec.audio, manifest_dir)
            ref = AudioRef(str(path))
        try:
            return ref, probe_duration(ref)
        except AudioError as e:
            return str(e)

    with ThreadPoolExecutor(16) as pool:
        probed = list(pool.map(probe, records))
    kept, lim = [], opts.limits
    for rec, result in zip(records, probed):
        reason = stage = None
        if isinstance(result, str):
            stage, reason = "audio", result
        elif not lim.min_duration <= result[1] <= lim.max_duration:
            stage, reason = "limits", (f"duration {result[1]:.3f} s outside "
                                       f"[{lim.min_duration}, {lim.max_duration}] s")
        if reason is None:
            kept.append((rec, *result))
        elif rec.id not in done and rec.line not in rejected_lines:
            rejects.append(rec.reject(stage, reason))
    # Longest first: the largest batches (and any OOM) come at the start, not hours in.
    kept.sort(key=lambda k: (-k[2], k[0].line))
    items = [WorkItem(i, rec, ref) for i, (rec, ref, _) in enumerate(kept)]
    seconds = [dur for _, _, dur in kept]
    todo = [rec.id not in done and rec.line not in rejected_lines for rec, _, _ in kept]
    if opts.max_samples is not None:
        left = opts.max_samples
        for i, t in enumerate(todo):
            todo[i] = t and left > 0
            left -= todo[i]
    skipped = sum(1 for rec in records if rec.id in done)
    frames = [max(1, frames_for_seconds(d)) for d in seconds]
    return Plan(items, frames, seconds, todo, rejects, skipped, line_of)
