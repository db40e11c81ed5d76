"""Several datasets in one run; one worker per device with shards merged; `preprocess merge`."""

import json

import numpy as np
import pytest

from preprocess.cli import main, preprocess_data
from preprocess.executors.devices import deal_shares
from preprocess.launch import parse_dataset
from preprocess.verify import verify_output
from test_pipeline import GOOD, assert_same_output, cli_args, corpus, invoke, read_lines, run_cli  # noqa: F401


def split_corpus(corpus, tmp_path):
    """Two manifests (en-ish first half, rest) sharing the corpus' audio directory."""
    lines = corpus.read_text(encoding="utf-8").splitlines()
    a, b = corpus.parent / "first.jsonl", corpus.parent / "second.jsonl"
    a.write_text("\n".join(lines[:4]) + "\n", encoding="utf-8")
    b.write_text("\n".join(lines[4:]) + "\n", encoding="utf-8")
    return a, b


def model_flags(models):
    return cli_args("M", "O", models)[4:]  # everything after --manifest/--output-dir


def test_two_datasets_in_one_run_equal_separate_runs(corpus, tiny_models, tmp_path):
    a, b = split_corpus(corpus, tmp_path)
    # a fixed batch size: same batches, so the bytes must be equal (the automatic budget is
    # timed, and two runs may choose differently)
    r = invoke(preprocess_data, ["--dataset", f"en={a}={tmp_path / 'one_a'}",
                                 "--dataset", f"zh={b}={tmp_path / 'one_b'}", *model_flags(tiny_models),
                                 "--batch-size", "3"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Processed") == 2
    run_cli(a, tmp_path / "sep_a", tiny_models, "--language", "en", "--batch-size", "3")
    run_cli(b, tmp_path / "sep_b", tiny_models, "--language", "zh", "--batch-size", "3")
    assert_same_output(tmp_path / "one_a", tmp_path / "sep_a")
    assert_same_output(tmp_path / "one_b", tmp_path / "sep_b")
    stats = json.loads((tmp_path / "one_b" / "stats.json").read_text())
    assert stats["provenance"]["options"]["language"] == "zh"


def test_parse_dataset(tmp_path):
    spec = parse_dataset("EN=data/m.jsonl", tmp_path)
    assert spec.output_dir == tmp_path / "en_processed_data" and str(spec.manifest) == "data/m.jsonl"
    spec = parse_dataset("ko=m.jsonl=/out/ko", tmp_path)
    assert str(spec.output_dir) == "/out/ko" and spec.language == "ko"
    with pytest.raises(ValueError):
        parse_dataset("m.jsonl", tmp_path)


def test_shares_are_duration_balanced():
    frames = sorted(np.random.default_rng(0).integers(50, 1500, size=1000).tolist(), reverse=True)
    shares = deal_shares(frames, 3)
    assert sorted(i for s in shares for i in s) == list(range(1000))
    totals = [sum(frames[i] for i in s) for s in shares]
    assert max(totals) - min(totals) <= max(frames)


def _features(out):
    lines = read_lines(out / "train_manifest.jsonl") + read_lines(out / "val_manifest.jsonl")
    return {x["id"]: {k: np.load(out / x[k]) for k in ("codes_path", "condition_path", "emo_vec_path")}
            for x in lines}


def test_two_devices_equal_one_and_survive_a_crash(reference_run, corpus, tiny_models, tmp_path,
                                                  monkeypatch):
    # Every worker dies in its second batch: what they finished is merged, the run fails. The
    # workers are processes the launcher spawns, so the launcher can run in this one.
    with monkeypatch.context() as m:
        m.setenv("PREPROCESS_FAULT", "after_store:2")
        r = run_cli(corpus, tmp_path / "two", tiny_models, "--devices", "cpu,cpu", "--batch-size", "2",
                    check=False)
    assert r.returncode == 1 and "rerun" in r.stderr
    partial = read_lines(tmp_path / "two" / "train_manifest.jsonl")
    assert 0 < len(partial) < len(GOOD)
    assert not (tmp_path / "two" / "shards").exists()
    r = run_cli(corpus, tmp_path / "two", tiny_models, "--devices", "cpu,cpu")
    one, two = _features(reference_run), _features(tmp_path / "two")
    assert one.keys() == two.keys() == {g[0] for g in GOOD}
    for id_ in one:
        assert np.array_equal(one[id_]["codes_path"], two[id_]["codes_path"])
        np.testing.assert_allclose(one[id_]["condition_path"], two[id_]["condition_path"], atol=1e-4)
        np.testing.assert_allclose(one[id_]["emo_vec_path"], two[id_]["emo_vec_path"], atol=1e-4)
    for name in ("train_manifest.jsonl", "val_manifest.jsonl"):
        assert (reference_run / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert verify_output(tmp_path / "two").ok


def test_merge_command_finishes_an_interrupted_merge(corpus, tiny_models, tmp_path):
    out = tmp_path / "out"
    r = run_cli(corpus, out, tiny_models, "--devices", "cpu,cpu",
                env={"PREPROCESS_FAULT": "before_merge:1"}, check=False)
    assert r.returncode == 137
    assert (out / "shards").is_dir()
    r = invoke(main, ["merge", out])
    assert r.returncode == 0, r.stderr
    assert f"merged {len(GOOD)} utterances" in r.stdout
    assert not (out / "shards").exists()
    assert verify_output(out).ok
    again = invoke(main, ["merge", out])
    assert again.returncode == 0 and "merged 0 utterances" in again.stdout
    # the job itself now finds everything done
    r = run_cli(corpus, out, tiny_models, "--devices", "cpu,cpu")
    assert f"{len(GOOD)} already done" in r.stdout


def test_two_devices_with_the_packed_format(reference_run, corpus, tiny_models, tmp_path):
    from preprocess.store import open as open_features

    run_cli(corpus, tmp_path / "two", tiny_models, "--devices", "cpu,cpu", "--format", "zarr")
    assert verify_output(tmp_path / "two").ok
    a, b = open_features(reference_run), open_features(tmp_path / "two")
    assert sorted(a.ids) == sorted(b.ids)
    for id_ in a.ids:
        assert np.array_equal(a[id_]["codes"], b[id_]["codes"])
        assert np.array_equal(a[id_]["text_ids"], b[id_]["text_ids"])
        np.testing.assert_allclose(a[id_]["condition"], b[id_]["condition"], atol=1e-4)
