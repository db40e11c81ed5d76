"""tools/bench_store.py: both shard codecs write the same store, and the report says which."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_store  # noqa: E402

from preprocess.store import open as open_features  # noqa: E402


def test_own_and_api_codecs_write_the_same_store(tmp_path, capsys):
    reports = {}
    for codec in ("own", "api"):
        reports[codec] = bench_store.main(["--format", "zarr", "--zarr-codec", codec, "--generate", "40",
                                           "--batch-size", "16", "--reads", "5", "--out", str(tmp_path / codec)])
        capsys.readouterr()
    assert reports["own"]["store"]["zarr"]["codec"] == "own" and reports["api"]["store"]["zarr"]["codec"] == "api"
    assert reports["api"]["store"]["zarr"]["version"] == __import__("zarr").__version__
    with open_features(tmp_path / "own" / "store") as a, open_features(tmp_path / "api" / "store") as b:
        assert len(a) == len(b) == 40
        for i in range(40):
            x, y = a[i], b[i]
            assert x["id"] == y["id"]
            for key in ("text_ids", "codes", "condition", "emo_vec"):
                assert np.array_equal(x[key], y[key]), (i, key)
