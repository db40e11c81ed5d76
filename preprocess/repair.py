"""`preprocess verify --repair`: withdraw every record verify finds damaged, so a rerun redoes it.

A damaged record (file missing, truncated, of the wrong shape or dtype, a length that does not
match its file, a line pointing nowhere, an id twice) is withdrawn from the journal and the
manifests; so is every id the journal marks done that no intact manifest line holds (a torn
line, a deleted manifest). The next run of the same command then recomputes exactly those.

The order keeps the directory consistent at every instant, as a run's commit order does:

    lock -> verify -> journal rewritten without them -> manifests rewritten without them

A crash after the journal leaves manifest lines the journal does not mark done, which opening
the directory drops anyway (store.dataset.OutputDir). Data files are left where they are: the
rerun writes over them (npy) or appends new rows (zarr; the old rows stay unused).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .contract import MANIFESTS, PROGRESS_FILE
from .manifest import read_output_manifest
from .store.dataset import dumps_line, lock_output
from .store.faults import fault_point
from .store.fsutil import write_atomic
from .store.journal import PENDING, Journal, TextIdsPending
from .verify import Report, verify_output


@dataclass
class Repair:
    withdrawn: dict[str, str] = field(default_factory=dict)   # id -> why
    torn_lines: int = 0
    left: list[str] = field(default_factory=list)             # problems a rerun does not fix

    def render(self, limit: int = 50) -> str:
        if not self.withdrawn and not self.torn_lines:
            text = "nothing to repair"
        else:
            shown = [f"  - {id_}: {why}" for id_, why in list(self.withdrawn.items())[:limit]]
            if len(self.withdrawn) > limit:
                shown.append(f"  ... and {len(self.withdrawn) - limit} more")
            torn = f" and dropped {self.torn_lines} malformed manifest line(s)" if self.torn_lines else ""
            text = "\n".join([f"withdrew {len(self.withdrawn)} record(s){torn}; rerun the same "
                              "preprocess-data command to recompute them:", *shown])
        if self.left:
            text += "\nnot repaired (not a record's features):\n" + "\n".join(f"  - {p}" for p in self.left)
        return text


def repair_output(out_dir: str | Path) -> tuple[Report, Repair]:
    """Verify `out_dir` and withdraw what is damaged; returns the report of the check before."""
    out_dir = Path(out_dir)
    journal_path = out_dir / PROGRESS_FILE
    if not journal_path.is_file():
        raise FileNotFoundError(f"{out_dir}: no {PROGRESS_FILE}, so this is not an output "
                                "directory a run can resume; nothing to repair")
    lock = lock_output(out_dir)
    try:
        report = verify_output(out_dir, locked=True)
        repair = Repair(dict(report.damaged), sum(report.torn.values()))
        kept: dict[str, list[dict]] = {}
        for split, name in MANIFESTS.items():
            lines, _ = read_output_manifest(out_dir / name)
            kept[name] = [line for line in lines if line["id"] not in report.damaged]
        intact = {line["id"] for lines in kept.values() for line in lines}
        fingerprint = Journal.read_fingerprint(out_dir) or ""
        if fingerprint.startswith(PENDING):
            raise TextIdsPending(f"{out_dir}: an interrupted `preprocess text-ids` run is being "
                                 "committed; rerun that command to finish it, then repair")
        journal = Journal.open(out_dir, fingerprint)
        done = journal.ids_in_order()
        for id_ in done:
            if id_ not in intact and id_ not in repair.withdrawn:
                repair.withdrawn[id_] = "marked done, but no intact manifest line holds it"
        if repair.withdrawn or repair.torn_lines:
            journal.rewrite([i for i in done if i in intact])
            fault_point("repair_after_journal")
            for name, lines in kept.items():
                if (out_dir / name).exists():
                    write_atomic(out_dir / name, "".join(map(dumps_line, lines)).encode("utf-8"))
        repair.left = list(report.general)
        return report, repair
    finally:
        lock.close()

