"""The same corpus through --format npy and --format zarr gives identical features."""

import subprocess
import sys

import numpy as np

from preprocess.store import open as open_features
from preprocess.verify import verify_output
from test_pipeline import GOOD, assert_same_output, corpus, read_lines, run_cli  # noqa: F401


def test_npy_and_zarr_hold_identical_features(corpus, tiny_models, tmp_path):  # noqa: F811
    run_cli(corpus, tmp_path / "npy", tiny_models, "--batch-size", "3")
    run_cli(corpus, tmp_path / "zarr", tiny_models, "--batch-size", "3", "--format", "zarr")
    zarr_lines = read_lines(tmp_path / "zarr" / "train_manifest.jsonl")
    assert all("row" in x and "codes_path" not in x for x in zarr_lines)
    assert verify_output(tmp_path / "zarr").ok
    a, b = open_features(tmp_path / "npy"), open_features(tmp_path / "zarr")
    assert len(a) == len(b) == len(GOOD)
    for id_ in (g[0] for g in GOOD):
        x, y = a[id_], b[id_]
        for key in ("text_ids", "codes", "condition", "emo_vec"):
            assert np.array_equal(x[key], y[key]), (id_, key)
    # export gives the trainer layout, byte for byte what the npy run wrote
    r = subprocess.run([sys.executable, "-m", "preprocess", "export", str(tmp_path / "zarr"),
                        "--to", "npy", str(tmp_path / "exported")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert_same_output(tmp_path / "npy", tmp_path / "exported")
    assert verify_output(tmp_path / "exported").ok
    # the export resumes as an npy output: nothing left to do
    r = run_cli(corpus, tmp_path / "exported", tiny_models, "--batch-size", "3")
    assert f"{len(GOOD)} already done" in r.stdout


def test_zarr_resume_after_fault(corpus, tiny_models, tmp_path):  # noqa: F811
    run_cli(corpus, tmp_path / "ref", tiny_models, "--batch-size", "3", "--format", "zarr")
    r = run_cli(corpus, tmp_path / "cut", tiny_models, "--batch-size", "3", "--format", "zarr",
                env={"PREPROCESS_FAULT": "after_store:2"}, check=False)
    assert r.returncode == 137
    run_cli(corpus, tmp_path / "cut", tiny_models, "--batch-size", "3", "--format", "zarr")
    for name in ("train_manifest.jsonl", "val_manifest.jsonl"):
        ref = {x["id"]: x for x in read_lines(tmp_path / "ref" / name)}
        cut = {x["id"]: x for x in read_lines(tmp_path / "cut" / name)}
        assert ref.keys() == cut.keys()
        for id_ in ref:  # rows may be in another order; everything else is the same
            assert {**ref[id_], "row": 0} == {**cut[id_], "row": 0}
    a, b = open_features(tmp_path / "ref"), open_features(tmp_path / "cut")
    for id_ in (g[0] for g in GOOD):
        for key in ("text_ids", "codes", "condition", "emo_vec"):
            assert np.array_equal(a[id_][key], b[id_][key])
    assert verify_output(tmp_path / "cut").ok
