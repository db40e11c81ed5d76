"""What is in an output directory: hours, languages, speakers, length distributions.

Reads only the train/val manifests, so it works for the npy and the packed layout alike.

Duration of a record: the measured `audio_duration` when present, else the input `duration`,
else `code_len / 50` (codes are 50 per second, exact to one frame), so that directories made by
the reference tool (which never measures) still get hours. `duration_sources` counts which was
used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .manifest import read_output_manifest
from .contract import CODES_PER_SECOND, MANIFESTS
from .store.fsutil import write_atomic

NO_VALUE = "(none)"  # table label for an empty speaker or language


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if np.isfinite(value) else None


def record_duration(record: dict) -> tuple[float | None, str]:
    """(seconds, source) of one manifest record."""
    for key in ("audio_duration", "duration"):
        value = _number(record.get(key))
        if value is not None:
            return value, key
    code_len = _number(record.get("code_len"))
    if code_len is not None:
        return code_len / CODES_PER_SECOND, "code_len"
    return None, "none"


def distribution(values) -> dict:
    """count, min, max, mean, p50, p90, p99 (numpy's linear-interpolation percentiles)."""
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if a.size == 0:
        return {"count": 0, "min": None, "max": None, "mean": None,
                "p50": None, "p90": None, "p99": None}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"count": int(a.size), "min": float(a.min()), "max": float(a.max()),
            "mean": float(a.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def _add(table: dict, key: str, seconds: float | None) -> None:
    row = table.setdefault(key, {"utterances": 0, "hours": 0.0})
    row["utterances"] += 1
    row["hours"] += (seconds or 0.0) / 3600


def _collect(out_dir: Path) -> tuple[dict, dict]:
    """Per-split records and torn-line counts."""
    records, dropped = {}, {}
    for split, name in MANIFESTS.items():
        records[split], dropped[split] = read_output_manifest(out_dir / name)
    return records, dropped


def dataset_stats(out_dir: str | os.PathLike) -> dict:
    """Hours per split, language and speaker; distributions of duration, text_len, code_len."""
    return _compute(Path(out_dir))[0]


def _compute(out_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The statistics, and the raw values the histograms are drawn from."""
    by_split, dropped = _collect(out_dir)
    splits, languages, speakers = {}, {}, {}
    sources = {"audio_duration": 0, "duration": 0, "code_len": 0, "none": 0}
    durations, text_lens, code_lens = [], [], []
    for split, records in by_split.items():
        splits[split] = {"utterances": 0, "hours": 0.0}
        for record in records:
            seconds, source = record_duration(record)
            sources[source] += 1
            _add(splits, split, seconds)
            _add(languages, str(record.get("language") or ""), seconds)
            _add(speakers, str(record.get("speaker") or ""), seconds)
            durations.append(seconds)
            text_lens.append(_number(record.get("text_len")))
            code_lens.append(_number(record.get("code_len")))
    by_hours = lambda table: dict(sorted(table.items(), key=lambda kv: (-kv[1]["hours"], kv[0])))
    known = lambda xs: np.asarray([x for x in xs if x is not None], dtype=np.float64)
    values = {"duration": known(durations), "text_len": known(text_lens),
              "code_len": known(code_lens)}
    stats = {
        "out_dir": str(out_dir),
        "total": {"utterances": sum(s["utterances"] for s in splits.values()),
                  "hours": sum(s["hours"] for s in splits.values())},
        "splits": splits,
        "languages": by_hours(languages),
        "num_speakers": len(speakers),
        "speakers": by_hours(speakers),
        "duration_seconds": distribution(durations),
        "text_len": distribution(text_lens),
        "code_len": distribution(code_lens),
        "duration_sources": sources,
        "dropped_lines": dropped,
    }
    return stats, values


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    cells = [header] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    # first column left-aligned (names), numbers right-aligned
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_table(stats: dict, max_speakers: int = 20) -> str:
    """A plain-text summary: splits, length distributions, languages, the largest speakers."""
    out = [f"Dataset {stats['out_dir']}", ""]
    rows = [[name, s["utterances"], s["hours"]] for name, s in stats["splits"].items()]
    rows.append(["total", stats["total"]["utterances"], stats["total"]["hours"]])
    out += _table(["split", "utterances", "hours"], rows) + [""]
    keys = ["count", "min", "max", "mean", "p50", "p90", "p99"]
    rows = [[name] + [stats[key][k] for k in keys] for name, key in
            (("duration (s)", "duration_seconds"), ("text_len", "text_len"),
             ("code_len", "code_len"))]
    out += _table(["distribution"] + keys, rows) + [""]
    rows = [[lang or NO_VALUE, s["utterances"], s["hours"]]
            for lang, s in stats["languages"].items()]
    out += _table(["language", "utterances", "hours"], rows) + [""]
    shown = list(stats["speakers"].items())[:max_speakers]
    rows = [[spk or NO_VALUE, s["utterances"], s["hours"]] for spk, s in shown]
    title = f"speaker (top {len(shown)} of {stats['num_speakers']})"
    out += _table([title, "utterances", "hours"], rows) + [""]
    src = stats["duration_sources"]
    out.append("durations from: " + ", ".join(f"{k} {v}" for k, v in src.items()))
    torn = sum(stats["dropped_lines"].values())
    if torn:
        out.append(f"unreadable manifest lines skipped: {torn}")
    return "\n".join(out) + "\n"


def _figure(stats: dict, values: dict):
    # the object API with an explicit Agg canvas: no pyplot, no global backend switch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    for ax, (key, label) in zip(axes.flat, (("duration", "duration (s)"),
                                            ("text_len", "text_len (ids)"),
                                            ("code_len", "code_len (codes, 50/s)"))):
        data = values[key]
        if data.size:
            ax.hist(data, bins=min(60, max(1, int(np.sqrt(data.size)) * 2)), color="tab:blue")
        ax.set_xlabel(label)
        ax.set_ylabel("utterances")
    ax = axes.flat[3]
    langs = list(stats["languages"].items())[:30]  # the largest; more would be unreadable
    ax.bar([lang or NO_VALUE for lang, _ in langs], [s["hours"] for _, s in langs],
           color="tab:orange")
    ax.set_ylabel("hours")
    ax.set_title("hours per language")
    fig.suptitle(f"{stats['out_dir']}: {stats['total']['utterances']} utterances, "
                 f"{stats['total']['hours']:.2f} h")
    return fig


def write_stats_report(out_dir: str | os.PathLike, json_path: str | os.PathLike,
                       png_path: str | os.PathLike) -> dict:
    """Write the statistics as JSON and a PNG of histograms; returns the statistics."""
    stats, values = _compute(Path(out_dir))
    write_atomic(json_path, (json.dumps(stats, ensure_ascii=False, indent=2) + "\n")
                 .encode("utf-8"))
    fig = _figure(stats, values)
    tmp = f"{os.fspath(png_path)}.tmp"
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, png_path)
    return stats
