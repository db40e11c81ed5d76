"""`stats.json`: counts, hours and length summaries of an output, plus what produced it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..manifest import read_output_manifest
from ..contract import MANIFESTS, REJECTS, STATS
from .fsutil import write_atomic


def summary(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    a = np.asarray(values, dtype=np.float64)
    return {"count": int(a.size), "min": float(a.min()), "max": float(a.max()),
            "mean": round(float(a.mean()), 4), "p50": float(np.percentile(a, 50)),
            "p95": float(np.percentile(a, 95))}


def seconds_of(line: dict) -> float:
    """Measured duration when we have it; the manifest's own value otherwise."""
    for key in ("audio_duration", "duration"):
        v = line.get(key)
        if isinstance(v, (int, float)):
            return float(v)
    return 0.0


def write_stats(out_dir: str | os.PathLike, provenance: dict, run: dict | None = None) -> dict:
    """Recount everything from the manifests (so a resumed run reports the whole output),
    then write stats.json atomically. The reference keys come first."""
    out_dir = Path(out_dir)
    splits = {s: read_output_manifest(out_dir / name)[0] for s, name in MANIFESTS.items()}
    rejects, _ = read_output_manifest(out_dir / REJECTS, require_id=False)
    lines = splits["train"] + splits["val"]
    by_stage: dict[str, int] = {}
    for r in rejects:
        by_stage[r.get("stage", "?")] = by_stage.get(r.get("stage", "?"), 0) + 1
    stats = {
        "total": len(lines),
        "train": len(splits["train"]),
        "val": len(splits["val"]),
        "tokenizer": provenance.get("tokenizer"),
        "gpt_checkpoint": provenance.get("gpt_checkpoint"),
        "rejected": len(rejects),
        "rejected_by_stage": dict(sorted(by_stage.items())),
        "hours": {s: round(sum(map(seconds_of, v)) / 3600, 6) for s, v in splits.items()},
        "text_len": summary([line["text_len"] for line in lines]),
        "code_len": summary([line["code_len"] for line in lines]),
        "provenance": provenance,
    }
    if run is not None:
        stats["last_run"] = run
    write_atomic(out_dir / STATS, (json.dumps(stats, indent=2, ensure_ascii=False) + "\n").encode())
    return stats
