"""Shard files written by the packed store's own codec, read through zarr itself: the zarr
installed here, and every other zarr release the pin in pyproject.toml allows, each in its own
interpreter (PREPROCESS_ZARR_PYTHONS: a colon-separated list of python executables, each with
one zarr version importable)."""

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from preprocess.store.features import UtteranceFeatures
from preprocess.store.zarr import layout as zarr_layout
from preprocess.store.zarr.codec import shard_index
from preprocess.store.zarr.reader import PackedArrays
from preprocess.store.zarr.writer import ZarrWriter

ROOT = Path(__file__).resolve().parents[1]
DIM = 48


def small_shards(monkeypatch):
    """Shards of a few chunks, so a small store has several shards, partly filled last chunks
    and shards rewritten over earlier appends."""
    full = zarr_layout.array_specs

    def specs(latent_dtype="float32", condition_len=32, dim=1280):
        s = full(latent_dtype, condition_len, dim)
        S = zarr_layout.ArraySpec
        s["id_utf8"] = S("id_utf8", "uint8", (), 64, 512, 3)
        s["text_ids"] = S("text_ids", "int32", (), 32, 256, 3)
        s["codes"] = S("codes", "int16", (), 128, 1024, 3)
        for off in zarr_layout.OFFSETS:
            s[off] = S(off, "int64", (), 8, 32, 3)
        s["condition"] = S("condition", latent_dtype, (condition_len, dim), 1, 8, 1)
        s["emo_vec"] = S("emo_vec", latent_dtype, (dim,), 4, 16, 1)
        return s
    monkeypatch.setattr(zarr_layout, "array_specs", specs)


def write(out: Path, latent_dtype: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A store of 61 rows written in uneven appends; returns what each array must hold."""
    rng = np.random.default_rng(seed)
    items = [UtteranceFeatures(f"utt-{i:03d}-{'é' * (i % 3)}",
                               rng.integers(0, 12000, rng.integers(1, 20)).astype(np.int32),
                               rng.integers(0, 8192, rng.integers(1, 90)).astype(np.int32),
                               rng.standard_normal((32, DIM)).astype(np.float32),
                               rng.standard_normal(DIM).astype(np.float32)) for i in range(61)]
    store = ZarrWriter(out, latent_dtype, dim=DIM)
    for a, b in ((0, 5), (5, 6), (6, 30), (30, 47), (47, 61)):
        store.write(items[a:b])
    store.close()
    ids = [it.id.encode("utf-8") for it in items]

    def offsets(lens):
        return np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return {
        "id_utf8": np.frombuffer(b"".join(ids), np.uint8),
        "id_offsets": offsets([len(i) for i in ids]),
        "text_ids": np.concatenate([it.text_ids for it in items]),
        "text_offsets": offsets([it.text_ids.size for it in items]),
        "codes": np.concatenate([it.codes for it in items]).astype(np.int16),
        "code_offsets": offsets([it.codes.size for it in items]),
        "condition": np.stack([it.condition for it in items]).astype(latent_dtype),
        "emo_vec": np.stack([it.emo_vec for it in items]).astype(latent_dtype),
    }


def digests(arrays) -> dict[str, str]:
    return {name: f"{a.dtype.str}{list(a.shape)}:" + hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
            for name, a in arrays.items()}


READ_WITH_ZARR = """
import hashlib, json, sys
import numpy as np, zarr
group = zarr.open_group(sys.argv[1], mode="r")
out = {}
for name in json.loads(sys.argv[2]):
    a = np.ascontiguousarray(group[name][:])
    a = a.astype(a.dtype.newbyteorder("<"))
    out[name] = f"{a.dtype.str}{list(a.shape)}:" + hashlib.sha256(a.tobytes()).hexdigest()
print(json.dumps({"zarr": zarr.__version__, "arrays": out}))
"""


@pytest.mark.parametrize("latent_dtype", ["float32", "float16"])
def test_installed_zarr_reads_what_the_codec_wrote(latent_dtype, tmp_path, monkeypatch):
    import zarr

    small_shards(monkeypatch)
    want = write(tmp_path, latent_dtype)
    files = list((tmp_path / "features.zarr" / "condition").glob("c.*"))
    assert len(files) == 8  # 61 rows, 8 per shard: the codec wrote every condition shard
    group = zarr.open_group(tmp_path / "features.zarr", mode="r")
    for name, expected in want.items():
        got = group[name][:]
        assert got.dtype == expected.dtype and np.array_equal(got, expected), name
    packed = PackedArrays(tmp_path)  # and the codec's own reader agrees
    for name, expected in want.items():
        assert np.array_equal(packed.read(name, 0, len(expected)), expected), name
    packed.close()


def allowed_zarr_range() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return re.search(r'"zarr([^"]*)"', text).group(1)


def test_every_allowed_zarr_reads_what_the_codec_wrote(tmp_path, monkeypatch):
    pythons = [p for p in os.environ.get("PREPROCESS_ZARR_PYTHONS", "").split(":") if p]
    if not pythons:
        pytest.skip(f"PREPROCESS_ZARR_PYTHONS names no interpreters with other zarr releases "
                    f"(pin: zarr{allowed_zarr_range()})")
    small_shards(monkeypatch)
    want = digests(write(tmp_path, "float16"))
    seen = []
    for python in pythons:
        r = subprocess.run([python, "-c", READ_WITH_ZARR, str(tmp_path / "features.zarr"),
                            json.dumps(sorted(want))], capture_output=True, text=True, timeout=120,
                           env={"PATH": "/usr/bin:/bin"})
        assert r.returncode == 0, (python, r.stderr)
        got = json.loads(r.stdout)
        assert got["arrays"] == want, got["zarr"]
        seen.append(got["zarr"])
    print(f"\nread by zarr {', '.join(seen)} (pin: zarr{allowed_zarr_range()})")


def test_a_damaged_shard_index_is_refused(tmp_path, monkeypatch):
    small_shards(monkeypatch)
    write(tmp_path, "float32")
    shard = tmp_path / "features.zarr" / "codes" / "c.0"
    data = bytearray(shard.read_bytes())
    tail = bytes(data[-(8 * 16 + 4):])
    assert shard_index(tail, shard, 8).shape == (8, 2)
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged shard index"):
        shard_index(bytes(data[-(8 * 16 + 4):]), shard, 8)
    packed = PackedArrays(tmp_path)
    with pytest.raises(ValueError, match="damaged shard index"):
        packed.read("codes", 0, 10)
    packed.close()
