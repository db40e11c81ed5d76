"""`preprocess verify`: every manifest line through the store interface, and the pair files the
trainer reads, with the trainer's own rules."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from preprocess.contract import PAIR_FILES
from preprocess.pairs import build_pairs
from preprocess.store.dataset import OutputDir
from preprocess.store.features import UtteranceFeatures
from preprocess.store.formats import open_writer
from preprocess.verify import verify_output


def write_output(out, fmt: str, n: int = 12):
    rng = np.random.default_rng(3)
    od = OutputDir(out, "fp", open_writer(out, fmt))
    entries = []
    for i in range(n):
        item = UtteranceFeatures(f"spk{i % 2}_u{i:02d}", rng.integers(1, 100, rng.integers(2, 9)).astype(np.int32),
                                 rng.integers(0, 8192, rng.integers(5, 60)).astype(np.int32),
                                 rng.standard_normal((32, 1280)).astype(np.float32),
                                 rng.standard_normal(1280).astype(np.float32))
        base = {"id": item.id, "audio_path": f"a/{item.id}.wav", "text": "t", "speaker": item.id[:4],
                "language": "en", "duration": 1.0}
        entries.append(("train", base, item.text_ids.size, item.codes.size, {}, item))
    od.commit(entries)
    od.finalize()
    od.close()
    return out


@pytest.fixture
def npy_with_pairs(tmp_path):
    out = write_output(tmp_path / "out", "npy")
    build_pairs([out])
    assert (out / PAIR_FILES["train"]).is_file()
    return out


def test_good_pairs_pass(npy_with_pairs):
    report = verify_output(npy_with_pairs)
    assert report.ok, report.render()
    assert report.checked == 12


def test_a_pair_the_trainer_would_misread_is_reported(npy_with_pairs):
    path = npy_with_pairs / PAIR_FILES["train"]
    pairs = [json.loads(x) for x in path.read_text().splitlines()]
    pairs[1]["target_text_len"] += 1  # the manifests stay right: only the pair file is wrong
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs) + "{torn\n")
    report = verify_output(npy_with_pairs)
    assert not report.ok
    text = "\n".join(report.problems)
    assert f"{PAIR_FILES['train']}: " in text and "line 2" in text and "but the pair says" in text
    assert f"line {len(pairs) + 1}: not valid JSON" in text  # the torn last line
    r = CliRunner().invoke(__import__("preprocess.cli", fromlist=["main"]).main, ["verify", str(npy_with_pairs)])
    assert r.exit_code == 1 and "but the pair says" in r.output


def test_an_empty_pair_file_is_not_a_problem(npy_with_pairs):
    (npy_with_pairs / PAIR_FILES["train"]).write_text("")
    assert verify_output(npy_with_pairs).ok


@pytest.mark.parametrize("fmt", ["npy", "zarr"])
def test_a_line_whose_data_is_gone_is_reported_per_line(fmt, tmp_path):
    out = write_output(tmp_path / "out", fmt, n=4)
    manifest = out / "train_manifest.jsonl"
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    if fmt == "npy":
        (out / lines[2]["codes_path"]).unlink()
    else:
        lines[2]["row"] = 99
        manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    report = verify_output(out)
    assert report.checked == 4 and len(report.problems) == 1
    assert lines[2]["id"] in report.problems[0]
