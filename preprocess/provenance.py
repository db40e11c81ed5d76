"""What produced an output: hashes of every model file and the tokenizer, package versions.

Hashing a full model set reads ~4 GB (~10 s), so digests are cached once per user, keyed by
path, size and modification time: a new output directory costs no hashing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
from pathlib import Path

from .store.fsutil import write_atomic
from .store.journal import fingerprint_of  # noqa: F401 - the journal's first line; made there

HASH_CACHE = "file_hashes.json"
PACKAGES = ("preprocess", "torch", "numpy", "transformers", "sentencepiece", "soundfile",
            "safetensors", "WeTextProcessing", "pynini", "zarr")


def sha256_file(path: str | os.PathLike, cache: dict | None = None) -> str:
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    if cache is not None and key in cache:
        return cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    if cache is not None:
        cache[key] = digest
    return digest


def changes(old: dict, new: dict) -> list[str]:
    """What differs between two provenances, in the terms of the fingerprint: each input file
    whose bytes changed, each option whose value changed ("name: old -> new")."""
    out = []
    old_files, new_files = old.get("files", {}), new.get("files", {})
    for name in sorted(set(old_files) | set(new_files)):
        a, b = (old_files.get(name) or {}).get("sha256"), (new_files.get(name) or {}).get("sha256")
        if a != b:
            out.append(f"{name}: {(a or 'absent')[:12]} -> {(b or 'absent')[:12]} "
                       f"({(new_files.get(name) or old_files.get(name))['path']})")
    old_opts, new_opts = old.get("options", {}), new.get("options", {})
    for name in sorted(set(old_opts) | set(new_opts)):
        if old_opts.get(name) != new_opts.get(name):
            out.append(f"{name}: {old_opts.get(name)!r} -> {new_opts.get(name)!r}")
    return out


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def cache_dir() -> Path:
    """$PREPROCESS_CACHE, else $XDG_CACHE_HOME/preprocess (default ~/.cache/preprocess)."""
    root = os.environ.get("PREPROCESS_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "preprocess"


def hash_files(files: dict[str, Path]) -> dict[str, dict]:
    """{name: {"path", "sha256", "bytes"}} for each file, digests from the per-user cache."""
    cache_path = cache_dir() / HASH_CACHE
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    before = len(cache)
    described = {name: {"path": str(p), "sha256": sha256_file(p, cache), "bytes": p.stat().st_size}
                 for name, p in files.items()}
    if len(cache) != before:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cache_path, json.dumps(cache, indent=1).encode(), fsync=False)
        except OSError:
            pass  # a read-only home costs a rehash next time, nothing else
    return described


def describe_inputs(models, tokenizer: str | os.PathLike) -> dict:
    """Provenance of a model set (a ModelPaths) and tokenizer."""
    described = hash_files({"tokenizer": Path(tokenizer), **models.files()})
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(tokenizer)).get_piece_size()
    return {"tokenizer": str(tokenizer), "gpt_checkpoint": str(models.gpt_checkpoint),
            "vocab_size": vocab, "files": described, "versions": package_versions()}
