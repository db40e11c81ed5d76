"""The store interface (formats.py) and what goes through it: detecting a directory's format,
the job's writers, and adopting finished shards (merge_shards / merge_command), killed at each
of its durable steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from preprocess.contract import MANIFESTS, REJECTS, SHARDS, STATS
from preprocess.manifest import Reject
from preprocess.store import open as open_features
from preprocess.store.dataset import OutputDir
from preprocess.store.features import UtteranceFeatures
from preprocess.store.formats import detect_format, format_named, open_writer
from preprocess.store.journal import Journal
from preprocess.store.shards import merge_command
from preprocess.verify import verify_output

ROOT = Path(__file__).resolve().parents[1]
FP = "fingerprint-of-the-test"


def items(start: int, n: int, seed: int) -> list[UtteranceFeatures]:
    rng = np.random.default_rng(seed)
    return [UtteranceFeatures(f"spk{i % 2}_u{i:03d}", rng.integers(1, 100, rng.integers(1, 9)).astype(np.int32),
                              rng.integers(0, 8192, rng.integers(1, 60)).astype(np.int32),
                              rng.standard_normal((32, 1280)).astype(np.float32),
                              rng.standard_normal(1280).astype(np.float32))
            for i in range(start, start + n)]


def entries(batch):
    return [("val" if it.id.endswith(("3", "7")) else "train",
             {"id": it.id, "audio_path": f"a/{it.id}.wav", "text": "x", "speaker": it.id[:4],
              "language": "en", "duration": 1.0}, it.text_ids.size, it.codes.size,
             {"valid_frames": it.codes.size - 1}, it) for it in batch]


def make_shards(out: Path, fmt: str) -> list[UtteranceFeatures]:
    """OUT with two finished shards (as the device workers leave them), each with a reject and
    a stats.json recording its run; OUT itself holds a progress file only."""
    OutputDir(out, FP, open_writer(out, fmt)).close()
    all_items = []
    for k, (start, n) in enumerate(((0, 7), (7, 6))):
        shard = out / SHARDS / str(k)
        od = OutputDir(shard, FP, open_writer(shard, fmt))
        batch = items(start, n, seed=k)
        od.commit(entries(batch[:4]), [Reject(100 + k, f"bad{k}", "audio", "cannot decode")])
        od.commit(entries(batch[4:]))
        od.finalize()
        od.close()
        stats = {"total": n, "provenance": {"options": {"format": fmt, "latent_dtype": "float32"}},
                 "last_run": {"processed": n, "skipped_done": 0, "rejected": 1, "version": "0.1.0"}}
        (shard / STATS).write_text(json.dumps(stats))
        all_items += batch
    return all_items


def outputs(out: Path) -> dict:
    """What a merge must leave: manifests, rejects and each utterance's features."""
    with open_features(out) as reader:
        features = {it["id"]: [it[k].tolist() for k in ("text_ids", "codes", "emo_vec")] for it in reader}
    return {"manifests": {n: [{k: v for k, v in json.loads(x).items() if k != "row"}
                              for x in (out / n).read_text().splitlines()] for n in MANIFESTS.values()},
            "rejects": (out / REJECTS).read_text(), "features": features,
            "done": Journal.open(out, FP).done}


def test_detect_format(tmp_path):
    assert detect_format(tmp_path).name == "npy"  # nothing yet: the trainer's layout
    OutputDir(tmp_path / "z", FP, open_writer(tmp_path / "z", "zarr")).close()
    assert detect_format(tmp_path / "z").name == "npy"  # the packed store is made on first write
    w = open_writer(tmp_path / "z", "zarr")
    w.write(items(0, 1, 0))
    w.close()
    assert detect_format(tmp_path / "z").name == "zarr"
    assert detect_format(tmp_path, tmp_path / "z").name == "zarr"  # from a shard
    assert format_named("zarr").holds(tmp_path / "z") and not format_named("zarr").holds(tmp_path)
    with pytest.raises(ValueError, match="unknown store format"):
        format_named("hdf5")


def test_the_job_writers(tmp_path):
    z = open_writer(tmp_path / "z", "zarr", "float16")
    assert (z.format, z.latent_dtype, z.flush_rows) == ("zarr", "float16", 1024)
    assert open_writer(tmp_path / "n", "npy").format == "npy"
    z.write(items(0, 2, 0))
    z.close()
    again = format_named("zarr").reopen_writer(tmp_path / "z")  # the dtype comes from the store
    assert (again.latent_dtype, again.committed_rows) == ("float16", 2)


@pytest.mark.parametrize("fmt", ["npy", "zarr"])
def test_merge_adopts_every_shard_and_keeps_the_runs(fmt, tmp_path):
    out = tmp_path / "out"
    made = make_shards(out, fmt)
    assert merge_command(out) == len(made)
    assert not (out / SHARDS).exists()
    got = outputs(out)
    assert got["done"] == {it.id for it in made}
    assert sorted(x["id"] for m in got["manifests"].values() for x in m) == sorted(it.id for it in made)
    for it in made:
        assert got["features"][it.id][1] == it.codes.tolist()
    assert [json.loads(x)["id"] for x in got["rejects"].splitlines()] == ["bad0", "bad1"]
    stats = json.loads((out / STATS).read_text())
    assert stats["total"] == len(made) and stats["provenance"]["options"]["format"] == fmt
    assert stats["last_run"] == {"processed": 13, "skipped_done": 0, "rejected": 2,
                                 "version": "0.1.0", "shards": 2}
    assert verify_output(out).ok
    assert merge_command(out) == 0  # nothing left


MERGE = "import sys; from pathlib import Path; from preprocess.store.shards import merge_command; " \
        "merge_command(Path(sys.argv[1]))"


@pytest.mark.parametrize("fmt", ["npy", "zarr"])
@pytest.mark.parametrize("fault", ["after_manifest:1", "after_journal:1", "after_manifest:3"])
def test_a_merge_killed_anywhere_finishes_on_rerun(fmt, fault, tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    make_shards(ref, fmt)
    make_shards(cut, fmt)
    merge_command(ref)
    r = subprocess.run([sys.executable, "-c", MERGE, str(cut)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "PREPROCESS_FAULT": fault})
    assert r.returncode == 137, r.stderr
    assert (cut / SHARDS).is_dir()  # killed mid-merge: the shards are still there
    merge_command(cut)
    assert outputs(cut) == outputs(ref)
    assert json.loads((cut / STATS).read_text()) == json.loads((ref / STATS).read_text())
