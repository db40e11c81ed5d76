"""The packed (zarr) store against the .npy store: read-back, export, crash recovery, merge."""

import json
import os
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import preprocess.store
from preprocess.manifest import Reject, is_val
from preprocess.store import dataset
from preprocess.store.zarr import layout as zarr_layout
from preprocess.store.zarr import writer as zarr_writer
from preprocess.store.dataset import MANIFESTS, PATH_KEYS, STATS, OutputDir
from preprocess.store.export import export_npy
from preprocess.store.fsutil import write_atomic
from preprocess.store.npy import NpyWriter, UtteranceFeatures, relative_paths
from preprocess.store.reader import FeatureReader
from preprocess.store.zarr import STORE_DIR, estimate_file_count
from preprocess.store.zarr.merge import merge_zarr_stores
from preprocess.store.zarr.reader import PackedArrays
from preprocess.store.zarr.writer import ZarrWriter as ZarrStore

DIM = 64  # small latents keep the tests fast; the layout does not depend on the width
VAL_RATIO = 0.25


def make_items(rng, n, start=0, dim=DIM, max_codes=300):
    return [UtteranceFeatures(
        id=f"spk{(start + i) % 3}_utt{start + i:05d}",
        text_ids=rng.integers(0, 12000, rng.integers(1, 60)).astype(np.int32),
        codes=rng.integers(0, 8192, rng.integers(1, max_codes)).astype(np.int32),
        condition=rng.standard_normal((32, dim)).astype(np.float32),
        emo_vec=rng.standard_normal(dim).astype(np.float32)) for i in range(n)]


def entries(items):
    out = []
    for it in items:
        base = {"id": it.id, "audio_path": f"wavs/{it.id}.wav", "text": "héllo wörld",
                "speaker": it.id.split("_")[0], "language": "en", "duration": 1.25}
        extras = {"valid_frames": len(it.codes) - 1, "feature_version": 1}
        split = "val" if is_val(it.id, VAL_RATIO) else "train"
        out.append((split, base, len(it.text_ids), len(it.codes), extras, it))
    return out


def write_output(path, store, batches):
    od = OutputDir(path, "fingerprint-1", store)
    for k, batch in enumerate(batches):
        od.commit(entries(batch), [Reject(1000 + k, f"bad{k}", "audio", "cannot decode")])
    order = {it.id: i for i, it in enumerate(it for b in batches for it in b)}
    od.finalize(order)
    od.close()
    write_atomic(Path(path) / STATS, b'{"total": 1}\n')


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in (".lock", ".preprocessing_progress.txt")}


def assert_same_item(a: dict, b: dict):
    assert a["id"] == b["id"] and a["split"] == b["split"]
    for key in ("text_ids", "codes", "condition", "emo_vec"):
        assert a[key].dtype == b[key].dtype, key
        assert np.array_equal(a[key], b[key]), (a["id"], key)


def test_zarr_writer_imports_the_zarr_package():
    assert zarr_writer.zarr.__name__ == "zarr" and hasattr(zarr_writer.zarr, "open_group")


def test_npy_and_zarr_read_back_the_same_and_export_equals_npy(tmp_path):
    rng = np.random.default_rng(0)
    batches = [make_items(rng, 16), make_items(rng, 30, 16), make_items(rng, 24, 46)]
    items = [it for b in batches for it in b]
    write_output(tmp_path / "npy", NpyWriter(tmp_path / "npy"), batches)
    store = ZarrStore(tmp_path / "zarr", dim=DIM)
    write_output(tmp_path / "zarr", store, batches)

    line = json.loads((tmp_path / "zarr" / MANIFESTS["train"]).read_text().splitlines()[0])
    assert "row" in line and not any(k in line for k in PATH_KEYS)

    r_npy, r_zarr = FeatureReader.open(tmp_path / "npy"), preprocess.store.open(tmp_path / "zarr")
    assert (r_npy.format, r_zarr.format) == ("npy", "zarr")
    assert len(r_zarr) == len(r_npy) == len(items) and r_zarr.ids == r_npy.ids
    by_id = {it.id: it for it in items}
    for i in range(len(r_zarr)):
        a, b = r_npy[i], r_zarr[i]
        assert_same_item(a, b)
        it = by_id[b["id"]]
        assert np.array_equal(b["codes"], it.codes) and np.array_equal(b["condition"], it.condition)
        assert b["split"] == ("val" if is_val(it.id, VAL_RATIO) else "train")
    some = items[17].id
    assert_same_item(r_zarr[some], r_zarr[r_zarr.index_of(some)])
    assert_same_item(r_zarr[-1], r_npy[len(r_npy) - 1])
    assert np.array_equal(r_zarr.code_lens(), [len(c) for c in r_zarr.all_codes()])
    assert np.array_equal(r_zarr.text_lens(), r_npy.text_lens())
    for x, y in zip(r_zarr.all_codes() + r_zarr.all_text_ids(), r_npy.all_codes() + r_npy.all_text_ids()):
        assert x.dtype == y.dtype == np.int32 and np.array_equal(x, y)
    first = next(iter(torch.utils.data.DataLoader(r_zarr, batch_size=None)))
    assert torch.equal(first["codes"], torch.from_numpy(r_npy[0]["codes"]))
    r_npy.close(), r_zarr.close()

    # the direct shard reader agrees with zarr's own reading of every array
    packed = PackedArrays(tmp_path / "zarr")
    for name, arr in packed.arrays.items():
        assert np.array_equal(packed.read(name, 0, arr.shape[0]), arr[:]), name
    packed.close()

    assert export_npy(tmp_path / "zarr", tmp_path / "export") == {
        "utterances": len(items), "written": len(items), "skipped": 0}
    want, got = files_under(tmp_path / "npy"), files_under(tmp_path / "export")
    assert sorted(got) == sorted(want) and len(want) == 4 * len(items) + 4
    assert all(got[k] == want[k] for k in want)
    assert export_npy(tmp_path / "zarr", tmp_path / "export")["skipped"] == len(items)
    assert files_under(tmp_path / "export") == want


def test_float16_latents(tmp_path):
    rng = np.random.default_rng(1)
    items = make_items(rng, 20)
    store = ZarrStore(tmp_path / "out", "float16", dim=DIM)
    write_output(tmp_path / "out", store, [items])
    packed = PackedArrays(tmp_path / "out")
    assert packed.arrays["condition"].dtype == np.float16 and packed.arrays["codes"].dtype == np.int16
    packed.close()
    with FeatureReader.open(tmp_path / "out") as reader:
        for it in items:
            got = reader[it.id]
            assert got["condition"].dtype == np.float32
            assert np.array_equal(got["condition"], it.condition.astype(np.float16).astype(np.float32))
            assert np.array_equal(got["emo_vec"], it.emo_vec.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match="float16"):
        ZarrStore(tmp_path / "out", "float32", dim=DIM).write(items[:1])


def test_crash_before_commit_is_cut_back_and_resume_appends(tmp_path):
    rng = np.random.default_rng(2)
    b1, b2, b3 = make_items(rng, 20), make_items(rng, 25, 20), make_items(rng, 15, 45)
    out = tmp_path / "out"
    store = ZarrStore(out, dim=DIM)
    od = OutputDir(out, "fp", store)
    od.commit(entries(b1))
    od.commit(entries(b2))

    def power_cut(attrs):
        raise RuntimeError("power cut")
    # the arrays of b3 get written, the commit point is never reached
    store._group = types.SimpleNamespace(update_attributes=power_cut)
    with pytest.raises(RuntimeError):
        od.commit(entries(b3))
    od._lock.close()  # the process dies: no close(), no flush
    zdir = out / STORE_DIR
    assert json.loads((zdir / "condition" / "zarr.json").read_text())["shape"][0] == 60
    (zdir / "condition" / "c.3.0.0").write_bytes(b"torn shard beyond the end")
    (zdir / "codes" / "c.0.0123abcd.partial").write_bytes(b"temp file of a killed write")

    store = ZarrStore(out, dim=DIM)
    od = OutputDir(out, "fp", store)
    assert od.done == {it.id for it in b1 + b2}
    assert store.committed_rows == 45
    assert json.loads((zdir / "condition" / "zarr.json").read_text())["shape"][0] == 45
    assert not (zdir / "condition" / "c.3.0.0").exists()
    assert not list(zdir.rglob("*.partial"))
    assert store.record_present({"id": b1[0].id, "row": 0})
    assert not store.record_present({"id": b1[1].id, "row": 0})   # another id at that row
    assert not store.record_present({"id": b3[0].id, "row": 45})  # uncommitted row
    assert not store.record_present({"id": b1[0].id})             # no row at all
    od.commit(entries(b3))
    od.finalize()
    od.close()

    with FeatureReader.open(out) as reader:
        rows = sorted(reader._locations)
        assert rows == list(range(60))  # resumed rows continue right after the commit
        for it in b1 + b2 + b3:
            got = reader[it.id]
            assert np.array_equal(got["codes"], it.codes) and np.array_equal(got["text_ids"], it.text_ids)
            assert np.array_equal(got["condition"], it.condition)


def test_rows_committed_without_manifest_lines_are_orphans(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    b1, b2 = make_items(rng, 10), make_items(rng, 12, 10)
    out = tmp_path / "out"
    store = ZarrStore(out, dim=DIM)
    od = OutputDir(out, "fp", store)
    od.commit(entries(b1))

    def killed(path, data):
        raise RuntimeError("killed before the manifest append")
    monkeypatch.setattr(dataset, "append_durable", killed)
    with pytest.raises(RuntimeError):
        od.commit(entries(b2))  # b2's rows are committed, its manifest lines never written
    od._lock.close()
    monkeypatch.undo()

    store = ZarrStore(out, dim=DIM)
    od = OutputDir(out, "fp", store)
    assert od.done == {it.id for it in b1} and store.committed_rows == 22
    od.commit(entries(b2))  # recomputed: new rows 22..33; rows 10..21 stay as orphans
    od.finalize()
    od.close()
    with FeatureReader.open(out) as reader:
        assert len(reader) == 22 and sorted(reader._locations)[-12:] == list(range(22, 34))
        for it in b1 + b2:
            assert np.array_equal(reader[it.id]["condition"], it.condition)
    export_npy(out, tmp_path / "export")
    with FeatureReader.open(tmp_path / "export") as exported:
        assert len(exported) == 22 and np.array_equal(exported[b2[3].id]["codes"], b2[3].codes)


def test_buffered_rows_lost_in_a_crash_are_recomputed(tmp_path):
    rng = np.random.default_rng(3)
    batches = [make_items(rng, 16, 16 * k) for k in range(6)]
    out = tmp_path / "out"
    store = ZarrStore(out, dim=DIM, flush_rows=64)
    od = OutputDir(out, "fp", store)
    for k in range(3):
        od.commit(entries(batches[k]))
    assert store.committed_rows == 0 and store.rows == 48  # buffered, not yet durable
    od.commit(entries(batches[3]))
    assert store.committed_rows == 64  # crossing a multiple of 64 flushes
    od.commit(entries(batches[4]))
    od._lock.close()  # crash with batch 4 buffered and already in the manifest and journal

    store = ZarrStore(out, dim=DIM, flush_rows=64)
    od = OutputDir(out, "fp", store)
    assert od.done == {it.id for b in batches[:4] for it in b}
    for b in batches[4:]:
        od.commit(entries(b))
    od.close()
    with FeatureReader.open(out) as reader:
        assert len(reader) == 96
        for it in (it for b in batches for it in b):
            assert np.array_equal(reader[it.id]["emo_vec"], it.emo_vec)


def test_file_count_stays_small(tmp_path):
    rng = np.random.default_rng(4)
    n = 3000
    items = [UtteranceFeatures(f"u{i:06d}", rng.integers(0, 12000, rng.integers(5, 300)).astype(np.int32),
                               rng.integers(0, 8192, rng.integers(50, 1500)).astype(np.int32),
                               rng.standard_normal((32, 16)).astype(np.float32),
                               rng.standard_normal(16).astype(np.float32)) for i in range(n)]
    store = ZarrStore(tmp_path, dim=16)
    for k in range(0, n, 500):
        store.write(items[k:k + 500])
    store.close()
    files = [p for p in (tmp_path / STORE_DIR).rglob("*") if p.is_file()]
    expected = estimate_file_count(n, sum(len(it.text_ids) for it in items),
                                   sum(len(it.codes) for it in items), sum(len(it.id) for it in items))
    assert len(files) == expected <= 25
    for seconds in (10, 30):  # 100k utterances of 10 s / 30 s: 50 codes/s, ~15 text ids/s, 24-byte ids
        big = estimate_file_count(100_000, 15 * seconds * 100_000, 50 * seconds * 100_000, 2_400_000)
        print(f"\n100k utterances of {seconds} s: {big} files (3,000 here: {len(files)})")
        assert big < 200


def test_merge_equals_one_store_with_all_rows(tmp_path, monkeypatch):
    small = zarr_layout.array_specs

    def specs(latent_dtype="float32", condition_len=32, dim=1280):  # small shards: several blocks
        s = small(latent_dtype, condition_len, dim)
        s["condition"] = zarr_layout.ArraySpec("condition", latent_dtype, (condition_len, dim), 1, 16, 1)
        s["emo_vec"] = zarr_layout.ArraySpec("emo_vec", latent_dtype, (dim,), 4, 32, 1)
        return s
    monkeypatch.setattr(zarr_layout, "array_specs", specs)
    rng = np.random.default_rng(5)
    a, b = make_items(rng, 30), make_items(rng, 25, 30)
    for name, batches in (("a", [a[:12], a[12:]]), ("b", [b]), ("all", [a[:12], a[12:], b])):
        store = ZarrStore(tmp_path / name, dim=DIM)
        for batch in batches:
            store.write(batch)
        store.close()

    mapping = merge_zarr_stores([tmp_path / "a", tmp_path / "b" / STORE_DIR], tmp_path / "merged")
    assert len(mapping) == 55 and mapping[(0, 29)] == 29 and mapping[(1, 0)] == 30
    with pytest.raises(KeyError):
        mapping[(1, 25)]
    merged, single = PackedArrays(tmp_path / "merged"), PackedArrays(tmp_path / "all")
    assert merged.rows == single.rows == 55 and merged.ids == single.ids
    for name in single.arrays:
        n = single.arrays[name].shape[0]
        assert merged.arrays[name].shape[0] == n
        assert np.array_equal(merged.read(name, 0, n), single.read(name, 0, n)), name
    merged.close(), single.close()
    dest = ZarrStore(tmp_path / "merged", dim=DIM)  # rerun into an open store: nothing to add
    again = merge_zarr_stores([tmp_path / "a", tmp_path / "b"], dest)
    assert again.spans == mapping.spans and dest.committed_rows == 55
    dest.write(make_items(rng, 1, 99))  # the open store goes on appending after the merged rows
    assert dest.committed_rows == 56 and dest.record_present({"id": "spk0_utt00099", "row": 55})


def test_timings_full_size(tmp_path):
    """Full-size latents [32, 1280]: prints write and read-back timings (not asserted)."""
    rng = np.random.default_rng(6)
    batches = [make_items(rng, 64, 64 * k, dim=1280, max_codes=1000) for k in range(4)]
    n = sum(map(len, batches))
    report = []
    stores = (("npy", NpyWriter(tmp_path / "npy")), ("zarr", ZarrStore(tmp_path / "zarr")),
              ("zarr flush_rows=1024", ZarrStore(tmp_path / "buffered", flush_rows=1024)))
    for name, store in stores:
        t = time.perf_counter()
        for batch in batches:
            store.write(batch)
        store.close()
        report.append(f"{name} write: {n / (time.perf_counter() - t):.0f} utt/s (batches of 64)")
    # minimal manifests, enough for the reader
    for name in ("npy", "zarr"):
        lines = []
        for row, it in enumerate(it for b in batches for it in b):
            loc = ({"row": row} if name == "zarr" else
                   relative_paths(it.id))
            lines.append(json.dumps({"id": it.id, "text_len": len(it.text_ids),
                                     "code_len": len(it.codes), **loc}) + "\n")
        (tmp_path / name / MANIFESTS["train"]).write_text("".join(lines))
    order = rng.permutation(n)
    for name in ("npy", "zarr"):
        with FeatureReader.open(tmp_path / name) as reader:
            reader[0]
            t = time.perf_counter()
            for i in order:
                reader[int(i)]
            report.append(f"{name} read: {1000 * (time.perf_counter() - t) / n:.2f} ms per utterance "
                          "(random order, page cache warm)")
    print("\n" + "\n".join(report) + f"\nload average {os.getloadavg()[0]:.1f}")
