"""What a `--device` value runs on, known before torch is imported where that is possible."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path


def device_kind(name: str) -> str:
    """What `--device NAME` runs on, "cpu" or "cuda"; an unknown name or a missing GPU is an error.

    Imports torch only where CUDA may be present: a CPU-only build of torch cannot have it, and
    its version file says so without the import (1.3 s), so that a CPU job starts its workers
    before it (executors/inprocess.py)."""
    if name == "cpu" or (name == "auto" and not _torch_may_have_gpu()):
        return "cpu"
    from .device import resolve_device

    return resolve_device(name).type


def _torch_may_have_gpu() -> bool:
    """False only for an installed torch whose version.py names no CUDA and no HIP (ROCm) build."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return True  # let the import say what is wrong
    try:
        text = (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text()
    except OSError:
        return True
    return not all(re.search(rf"^{key}\s*(:[^=]*)?=\s*None\s*$", text, re.M) for key in ("cuda", "hip"))
