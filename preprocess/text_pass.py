"""`preprocess prepare-text`: the text half of the CPU stage over a corpus, run on its own.

    source --read_source--> records --CPU workers (prepare_text_chunk): clean, normalise,
           tokenise--> cleaned text + ids, or the text stage's reject
           --appended in blocks, fsync--> prepared-text file (preprocess/text_cache.py)

Text normalisation (WeTextProcessing, ~1-2 ms per character) is most of the CPU stage's work;
audio decoding and fbank are a small part. This pass does that work beforehand, for example on
CPU-only machines before a GPU job; `preprocess-data --prepared-text FILE` then takes each
record's ids from the file instead of normalising (preprocess/prepare.py `text_of`).

Resumable: each block of results is appended and fsynced before the next is asked for; after a
kill, the same call cuts a torn last line and does only the records the file does not hold for
their current cleaned text and language. Records are written in source order, so a resumed pass
leaves the same bytes as an uninterrupted one. Records whose text raises (a broken install, a
bug) are not written: they are counted and the job makes their ids itself.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .manifest import Record, Reject
from .store.faults import fault_point
from .store.fsutil import append_durable
from .text_cache import FORMAT_VERSION, entry_key, entry_line, made_by, open_for_append

BLOCK = 256  # records per durable append
SHOWN_FAILURES = 3


@dataclass
class TextPassSummary:
    out: Path
    records: int = 0          # records of the source
    kept: int = 0             # already in the file for their current text and language
    prepared: int = 0         # written by this pass (rejected ones included)
    rejected: int = 0         # of those, records whose text has no ids (written as rejects)
    failed: int = 0           # records whose text raised: not written, the job makes them itself
    failures: list[str] = field(default_factory=list)  # the first few, as "id: reason"
    source_rejects: int = 0   # lines of the source that are no record (the job reports them)
    characters: int = 0       # cleaned characters of the records prepared by this pass
    seconds: float = 0.0      # wall time of the workers' part

    def text(self) -> str:
        rate = (f", {self.characters / self.seconds:.0f} characters per second"
                if self.seconds > 0 and self.prepared else "")
        failed = ""
        if self.failed:
            failed = (f" {self.failed} records failed and were not written (the job will make "
                      f"their ids itself): {'; '.join(self.failures)}.")
        return (f"Prepared the text of {self.prepared} records in {self.seconds:.1f} s{rate} "
                f"({self.rejected} of them without ids: text rejects); {self.kept} were already in "
                f"{self.out}. It now holds {self.kept + self.prepared} of the source's "
                f"{self.records} records ({self.source_rejects} source lines were no record)."
                f"{failed}")


def prepare_text(source, tokenizer: str | os.PathLike, out: str | os.PathLike,
                 language: str | None = None, *, workers: int = 0, input_format: str = "auto",
                 fields: dict[str, str] | None = None, force: bool = False, progress: bool = True,
                 block: int = BLOCK) -> TextPassSummary:
    """Write (or complete) the prepared-text file `out` for every record of `source` (anything
    `--manifest` accepts) with `tokenizer` and the job's language rule (`language`, else each
    record's own). `workers` processes (0: one per available core); `block` records are made
    durable at a time. An existing `out` made with other settings raises PreparedTextError,
    unless `force` starts it afresh."""
    from .provenance import hash_files
    from .sources import describe, read_source
    from .text import clean_text

    tokenizer, out = Path(tokenizer), Path(out)
    sha256 = hash_files({"tokenizer": tokenizer})["tokenizer"]["sha256"]
    header = {"prepared_text": FORMAT_VERSION, "made_by": made_by(sha256, language),
              "about": {"tokenizer": str(tokenizer), "source": describe(source)}}
    have = open_for_append(out, header, force)
    summary = TextPassSummary(out)
    todo = []
    for item in read_source(source, input_format, fields):
        if isinstance(item, Reject):
            summary.source_rejects += 1
            continue
        summary.records += 1
        if have.get(item.id) == entry_key(language or item.language, clean_text(item.text)):
            summary.kept += 1
        else:
            todo.append(item)
    if todo:
        _run(todo, tokenizer, out, language, workers or _cores(), max(1, block), progress, summary)
    return summary


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _run(records: list[Record], tokenizer: Path, out: Path, language: str | None, workers: int,
         block: int, progress: bool, summary: TextPassSummary) -> None:
    from tqdm import tqdm

    from .plan import WorkItem
    from .prepare import CpuStage, PreparedStream, init_text_worker, prepare_text_chunk

    items = [WorkItem(i, rec, None) for i, rec in enumerate(records)]
    bar = tqdm(total=len(items), unit="utt", disable=not progress, file=sys.stderr,
               desc="prepare-text", mininterval=1.0, dynamic_ncols=True)
    started = time.perf_counter()
    cpu = CpuStage(workers, (str(tokenizer),), language, task=prepare_text_chunk,
                   initializer=init_text_worker)
    try:
        stream = PreparedStream(cpu, items, window=2 * workers + 2)
        for start in range(0, len(items), block):
            part = items[start:start + block]
            lines = []
            for item, result in zip(part, stream.take([item.index for item in part])):
                rec = item.record
                if isinstance(result, Reject):
                    summary.failed += 1
                    if len(summary.failures) < SHOWN_FAILURES:
                        summary.failures.append(f"{rec.id}: {result.reason}")
                    continue
                lines.append(entry_line(rec.id, result.language, result.text, result.ids, result.reject))
                summary.prepared += 1
                summary.rejected += result.reject is not None
                summary.characters += len(result.text)
            append_durable(out, b"".join(lines))
            fault_point("text_pass_after_append")
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix_str(f"{summary.characters / elapsed:.0f} chars/s", refresh=False)
            bar.update(len(part))
    finally:
        cpu.close()
        bar.close()
        summary.seconds = time.perf_counter() - started
