"""Integrity checks of an output directory, as the trainer would read it.

Every manifest line's features are read through the store interface (whatever the format) and
checked against the line and the trainer's limits; pair files, where present, are checked with
the trainer's own reading rules (pairs.check_pairs_for_trainer)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .contract import (CODEBOOK_SIZE, CONDITION_LEN, MANIFESTS, MAX_CODE_LEN, MAX_TEXT_LEN, MODEL_DIM,
                       PAIR_FILES, REQUIRED_KEYS, STATS)
from .manifest import is_val, read_output_manifest
from .pairs import check_pairs_for_trainer
from .store.dataset import run_in_progress
from .store.formats import detect_format


@dataclass
class Report:
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)   # id -> its first problem
    torn: dict[str, int] = field(default_factory=dict)      # manifest -> malformed lines
    missing_manifests: list[str] = field(default_factory=list)
    general: list[str] = field(default_factory=list)        # problems of no record or manifest

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, where: str, what: str, id_: str | None = None) -> None:
        """A problem of the directory, or with `id_` of that record (`repair_output` withdraws it)."""
        self.problems.append(f"{where}: {what}")
        if id_ is not None:
            self.damaged.setdefault(id_, what)

    def add_manifest(self, name: str, what: str, *, torn: int = 0) -> None:
        """A problem of a manifest as a whole: `torn` malformed lines, or missing (torn=0)."""
        self.problems.append(f"{name}: {what}")
        if torn:
            self.torn[name] = torn
        else:
            self.missing_manifests.append(name)

    def add_general(self, where: str, what: str) -> None:
        """A problem no rerun fixes by itself (stats.json, pair files, the store as a whole)."""
        self.problems.append(f"{where}: {what}")
        self.general.append(f"{where}: {what}")

    def render(self, limit: int = 50) -> str:
        head = f"checked {self.checked} records: "
        if self.ok:
            return head + "OK"
        shown = "\n".join(f"  - {p}" for p in self.problems[:limit])
        more = len(self.problems) - limit
        tail = f"\n  ... and {more} more" if more > 0 else ""
        return head + f"{len(self.problems)} problem(s)\n{shown}{tail}"


class RunInProgress(Exception):
    """A run is writing to the directory: its files are not yet what the trainer will read."""


def verify_output(out_dir: str | Path, *, locked: bool = False) -> Report:
    """Check `out_dir`; `locked`: the caller holds its writer lock (a repair)."""
    out_dir = Path(out_dir)
    if not locked and run_in_progress(out_dir):
        raise RunInProgress(f"{out_dir}: a run is writing to this directory now; "
                            "check it once that run has finished")
    report = Report()
    stats = {}
    if (out_dir / STATS).is_file():
        try:
            stats = json.loads((out_dir / STATS).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            report.add_general(STATS, f"not valid JSON: {e}")
    options = stats.get("provenance", {}).get("options", {})
    max_text = options.get("max_text_len", MAX_TEXT_LEN)
    max_code = options.get("max_code_len", MAX_CODE_LEN)
    vocab = stats.get("provenance", {}).get("vocab_size")
    cond_shape = tuple(options.get("condition_shape", (CONDITION_LEN, MODEL_DIM)))
    val_ratio = options.get("val_ratio")

    try:
        rows = detect_format(out_dir).rows(out_dir)
    except Exception as e:
        report.add_general(str(out_dir), f"cannot open the feature store: {e}")
        return report
    try:
        _check_manifests(out_dir, rows, report, val_ratio, max_text, max_code, vocab, cond_shape)
    finally:
        rows.close()
    for name in PAIR_FILES.values():
        if _holds_records(out_dir / name):
            for problem in check_pairs_for_trainer(out_dir / name, vocab_size=vocab):
                report.add_general(name, problem)
    return report


def _holds_records(path: Path) -> bool:
    """A pair file with at least one non-blank line. One left empty (e.g. when `text-ids`
    rejected a side of every pair) gives the trainer nothing to misread."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return any(raw.strip() for raw in f)


def _check_manifests(out_dir: Path, rows, report: Report, val_ratio, max_text, max_code, vocab,
                     cond_shape) -> None:
    seen: dict[str, str] = {}
    found_any = False
    for split, name in MANIFESTS.items():
        path = out_dir / name
        if not path.exists():
            report.add_manifest(name, "missing")
            continue
        found_any = True
        lines, torn = read_output_manifest(path)
        if torn:
            report.add_manifest(name, f"{torn} malformed line(s)", torn=torn)
        for n, line in enumerate(lines, start=1):
            id_ = line["id"]
            where = f"{name}:{n} ({id_})"
            report.checked += 1
            missing = [k for k in REQUIRED_KEYS if k not in line]
            if missing:
                report.add(where, f"missing key(s) {', '.join(missing)}", id_)
                continue
            if id_ in seen:
                both = "in both train and val" if seen[id_] != split else "twice"
                report.add(where, f"id appears {both}", id_)
            seen[id_] = split
            if val_ratio is not None and is_val(id_, val_ratio) != (split == "val"):
                report.add(where, f"in {split} but the split rule (val ratio {val_ratio}) says otherwise", id_)
            try:
                arrays = dict(zip(("text_ids", "codes", "condition", "emo_vec"),
                                  rows.load(rows.locate(line))))
            except Exception as e:
                report.add(where, str(e), id_)
                continue
            for problem in _check_arrays(line, arrays, max_text, max_code, vocab, cond_shape):
                report.add(where, problem, id_)
    if not found_any:
        report.add_general(str(out_dir), "no train or val manifest: is this an output directory?")


def _check_arrays(line, arrays, max_text, max_code, vocab, cond_shape) -> list[str]:
    problems = []
    ids, codes = arrays["text_ids"], arrays["codes"]
    cond, emo = arrays["condition"], arrays["emo_vec"]
    for name, a in (("text_ids", ids), ("codes", codes)):
        if a.ndim != 1 or a.size == 0:
            problems.append(f"{name} must be 1-D and non-empty, got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.integer):
            problems.append(f"{name} dtype {a.dtype} is not an integer type")
    for name, a, shape in (("condition", cond, cond_shape), ("emo_vec", emo, cond_shape[1:])):
        if tuple(a.shape) != tuple(shape):
            problems.append(f"{name} shape {tuple(a.shape)}, expected {tuple(shape)}")
        if not np.issubdtype(a.dtype, np.floating):
            problems.append(f"{name} dtype {a.dtype} is not a float type")
        elif not np.isfinite(a).all():
            problems.append(f"{name} holds NaN or Inf")
    if problems:
        return problems
    if line["text_len"] != ids.size:
        problems.append(f"text_len {line['text_len']} != {ids.size} ids in the file")
    if line["code_len"] != codes.size:
        problems.append(f"code_len {line['code_len']} != {codes.size} codes in the file")
    if line["condition_len"] != cond.shape[0]:
        problems.append(f"condition_len {line['condition_len']} != {cond.shape[0]}")
    if ids.size > max_text:
        problems.append(f"{ids.size} text ids exceed the limit {max_text}")
    if codes.size > max_code:
        problems.append(f"{codes.size} codes exceed the limit {max_code}")
    if codes.min() < 0 or codes.max() >= CODEBOOK_SIZE:
        problems.append(f"codes outside [0, {CODEBOOK_SIZE - 1}]")
    if ids.min() < 0 or (vocab is not None and ids.max() >= vocab):
        problems.append(f"text ids outside [0, {vocab})")
    return problems
