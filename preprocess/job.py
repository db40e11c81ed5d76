"""One job: one manifest into one output directory.

    open the output (lock, fingerprint check, recover from a crash)
      -> plan (records, durations, longest first; what is done is skipped)
      -> execute (an executor from preprocess.executors runs the plan's work into the output)
      -> finish (manifests in source order, rejects, stats.json with last_run)

The skeleton is the same whoever executes: in this process (`InProcess`), one worker process
per local device (`OnePerDevice`), or any executor with the same two methods.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .options import JobOptions, output_options
from .phase import Phase
from .plan import Plan, make_plan
from .sources import describe
from .store.journal import ConfigMismatch, fingerprint_of
from .store.dataset import OutputDir
from .store.fsutil import DiskFull, free_bytes, human_bytes, is_disk_full
from .store.stats import write_stats


@dataclass
class RunSummary:
    output_dir: Path
    processed: int = 0
    skipped_done: int = 0
    rejected: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    device_seconds: float = 0.0
    padding_efficiency: float | None = None   # None: no batch ran
    batch_budget: dict | None = None          # what --batch-size 0 chose (cost, max_items)
    stage_seconds: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    # With --prepared-text: records whose text ids came from it ("text_prepared"), and those
    # made here because it had no line for them ("text_missing") or one for other text or
    # language ("text_changed"); "text_made" counts every tokenisation done here.
    text_sources: dict | None = None

    def text(self) -> str:
        rate = self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0
        s = self.stats
        padding = ("" if self.padding_efficiency is None
                   else f"; padding efficiency {self.padding_efficiency:.2f}")
        return (f"Processed {self.processed} utterances ({self.audio_seconds / 3600:.2f} h of audio) "
                f"in {self.wall_seconds:.1f} s, {rate:.1f} s of audio per second; "
                f"{self.skipped_done} already done were skipped and {self.rejected} were rejected "
                f"this run (see rejects.jsonl). The output {self.output_dir} now holds "
                f"{s.get('train', 0)} train and {s.get('val', 0)} val utterances "
                f"({sum(s.get('hours', {}).values()):.2f} h), {s.get('rejected', 0)} rejects in all"
                f"{padding}.{self._text_sources()}")

    def _text_sources(self) -> str:
        if self.text_sources is None:
            return ""
        c = self.text_sources
        made = c.get("text_missing", 0) + c.get("text_changed", 0)
        return (f" Text ids: {c.get('text_prepared', 0)} taken from the prepared text, {made} "
                f"made here ({c.get('text_missing', 0)} not in it, {c.get('text_changed', 0)} "
                f"whose text or language differs from its line there).")


class Job:
    def __init__(self, opts: JobOptions, provenance: dict | None = None):
        """`provenance`: a precomputed `describe_inputs` of the model set and tokenizer (several
        datasets share one); the options that change outputs are added here."""
        from .provenance import describe_inputs

        self.opts = opts
        t0 = time.perf_counter()
        if provenance is None:
            provenance = describe_inputs(opts.models, opts.tokenizer)
        self.hash_seconds = time.perf_counter() - t0
        self.provenance = {**provenance, "options": output_options(opts)}
        self.fingerprint = fingerprint_of(self.provenance)

    def open_output(self, path: Path | None = None, force: bool | None = None) -> OutputDir:
        from .store import open_writer

        path = self.opts.output_dir if path is None else path
        opts = self.opts
        try:
            return OutputDir(path, self.fingerprint,
                             lambda: open_writer(path, opts.format, opts.latent_dtype),
                             force=opts.force if force is None else force)
        except ConfigMismatch as e:
            raise ConfigMismatch(f"{e}{self.what_differs(path)}") from None

    def what_differs(self, path: Path) -> str:
        """The settings and files that differ from the run that made `path`, from its stats.json."""
        import json

        from .contract import STATS
        from .provenance import changes

        try:
            old = json.loads((path / STATS).read_text(encoding="utf-8"))["provenance"]
        except (OSError, ValueError, KeyError, TypeError):
            return " (no stats.json there to say which settings differ)"
        found = changes(old, self.provenance)
        return "; what differs: " + "; ".join(found) if found else ""

    def check_prepared_text(self) -> None:
        """With --prepared-text: its ids were made with this job's tokenizer, text pipeline,
        normaliser and language option; else PreparedTextError naming what differs."""
        from .text_cache import check_made_by, made_by

        if self.opts.prepared_text is not None:
            check_made_by(self.opts.prepared_text,
                          made_by(self.provenance["files"]["tokenizer"]["sha256"], self.opts.language))

    def run(self, executor) -> RunSummary:
        t_start = time.perf_counter()
        opts = self.opts
        self.check_prepared_text()  # before the output is touched
        try:
            output = self.open_output()
        except OSError as e:
            if not is_disk_full(e):
                raise
            raise DiskFull(self._disk_full_message(None, set())) from e
        summary = RunSummary(opts.output_dir, stage_seconds={"hash_inputs": self.hash_seconds})
        if opts.progress:
            print(f"checked model and tokenizer files ({self.hash_seconds:.1f} s)", file=sys.stderr)
        plan = None
        try:
            try:
                executor.before_plan(self, output)
                with Phase(summary, "plan", f"planned {describe(opts.manifest)}", opts.progress):
                    plan = make_plan(opts, output.done, output.rejected_lines)
                summary.skipped_done = plan.skipped_done
                output.add_rejects(plan.rejects)
                summary.rejected += len(plan.rejects)
                if any(plan.todo):
                    executor.execute(self, plan, output, summary)
                output.finalize(plan.line_of)
                summary.stats = write_stats(opts.output_dir, self.provenance, run=self.last_run(summary))
            finally:
                output.close()
        except OSError as e:
            if not is_disk_full(e):
                raise
            raise DiskFull(self._disk_full_message(plan, output.done)) from e
        summary.wall_seconds = time.perf_counter() - t_start + self.hash_seconds
        return summary

    def _disk_full_message(self, plan: Plan | None, done: set[str]) -> str:
        """Where, how much is free, about how much the rest needs, and that a rerun resumes."""
        from .store.formats import format_named

        out = self.opts.output_dir
        free = free_bytes(out)
        head = f"{out}: the disk is full" + (f" ({human_bytes(free)} free)" if free is not None else "")
        if plan is None:
            return f"{head}; free some space, then rerun the same command"
        left = [i for i in plan.todo_indices() if plan.items[i].record.id not in done]
        if not left:
            return (f"{head} while writing the manifests and stats.json; every utterance is "
                    "written: free a few MB, then rerun the same command to finish")
        seconds = sum(plan.seconds[i] for i in left)
        need = format_named(self.opts.format).bytes_needed(len(left), seconds, self.opts.latent_dtype)
        return (f"{head}. About {human_bytes(need)} more is needed for the {len(left)} utterances "
                f"({seconds / 3600:.2f} h of audio) not written yet. Nothing written so far is "
                "lost: free that much space, then rerun the same command to resume")

    @staticmethod
    def last_run(summary: RunSummary) -> dict:
        return {"processed": summary.processed, "skipped_done": summary.skipped_done,
                "rejected": summary.rejected, "batch_budget": summary.batch_budget,
                "version": __version__}


__all__ = ["Job", "JobOptions", "Plan", "RunSummary"]
