"""`--shard K/N`: independent jobs on one shared output directory, then `preprocess merge`."""

import fcntl
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from preprocess.cli import main
from preprocess.manifest import Record
from preprocess.partition import Partition, deal, parse_shard, weights_ms
from preprocess.verify import verify_output
from test_pipeline import GOOD, cli_args, corpus, invoke, read_lines, run_cli  # noqa: F401

FEATURES = ("text_ids_path", "codes_path", "condition_path", "emo_vec_path")


def test_parse_shard():
    assert parse_shard("0/8") == (0, 8) and parse_shard(" 7 / 8 ") == (7, 8)
    for bad in ("8/8", "1/0", "-1/3", "3", "a/b"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_partition_is_balanced_and_covers_every_record_once(tmp_path):
    rng = np.random.default_rng(0)
    durations = rng.uniform(0.5, 30, size=997).round(3).tolist()
    durations[5] = None   # no duration: weighs the mean of the others
    lines = [json.dumps({"id": f"u{i}", "text": "t", "audio": "a.wav", "duration": d})
             for i, d in enumerate(durations)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    p = Partition.of_manifest(manifest, 7)
    assert sorted(p.ids) == sorted(f"u{i}" for i in range(997))
    shares = [p.ids_of(k) for k in range(7)]
    assert sum(map(len, shares)) == 997 and frozenset().union(*shares) == set(p.ids)
    totals = [sum(s for s, k in zip(p.seconds, p.share) if k == j) for j in range(7)]
    assert max(totals) - min(totals) <= 30
    given = [d for d in durations if d is not None]
    assert p.seconds[5] == round(1000 * sum(given) / len(given)) / 1000
    # The same manifest gives the same partition; another N or other durations another digest.
    assert Partition.of_manifest(manifest, 7).share == p.share
    assert Partition.of_manifest(manifest, 6).digest != p.digest
    manifest.write_text("\n".join(lines[:-1] + [lines[-1].replace('"u996"', '"u996b"')]) + "\n")
    assert Partition.of_manifest(manifest, 7).digest != p.digest


def test_deal_breaks_ties_by_position_and_share_index():
    assert deal([5, 5, 5, 5], 2) == [0, 1, 0, 1]
    assert deal([1, 9, 3], 3) == [2, 0, 1]
    recs = [Record("a", "t", "x", duration=float("nan")), Record("b", "t", "x", duration=2.0)]
    assert weights_ms(recs) == [2000, 2000]


@pytest.fixture(scope="module")
def dirty_corpus(corpus):  # noqa: F811
    """The session corpus plus a malformed line, a duplicate id and a missing audio file: the
    rejects every kind of share must report once."""
    text = corpus.read_text(encoding="utf-8")
    extra = ['{"id": "broken", "text": ',
             text.splitlines()[0],
             json.dumps({"id": "gone_0", "text": "Missing audio.", "audio": "wav/gone.wav",
                         "duration": 1.0})]
    path = corpus.parent / "dirty.jsonl"
    path.write_text(text + "\n".join(extra) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def dirty_reference(dirty_corpus, tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("dirty_reference")
    run_cli(dirty_corpus, out, tiny_models, "--batch-size", "3")
    return out


def shard_process(manifest, out, models, k, n, *extra, env=None):
    args = ["data", *cli_args(manifest, out, models, "--batch-size", "3", "--shard", f"{k}/{n}", *extra)]
    return subprocess.Popen([sys.executable, "-m", "preprocess", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def finish(proc) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def assert_equal_features(a, b):
    """Same manifests and rejects byte for byte; text ids and codes identical; latents within
    1e-5 (each share batches its utterances with others than a single run does)."""
    for name in ("train_manifest.jsonl", "val_manifest.jsonl", "rejects.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for line in read_lines(a / "train_manifest.jsonl") + read_lines(a / "val_manifest.jsonl"):
        for key in FEATURES[:2]:
            assert (a / line[key]).read_bytes() == (b / line[key]).read_bytes(), line[key]
        for key in FEATURES[2:]:
            np.testing.assert_allclose(np.load(a / line[key]), np.load(b / line[key]), atol=1e-5, rtol=0)


def test_three_shards_in_three_processes_then_merge_equal_one_run(dirty_corpus, dirty_reference,
                                                                 tiny_models, tmp_path):
    out = tmp_path / "out"
    # Shards 0 and 2 at the same time; the first merge adopts them and names share 1.
    first = [shard_process(dirty_corpus, out, tiny_models, k, 3) for k in (0, 2)]
    for proc in first:
        r = finish(proc)
        assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["0of3", "2of3", "array.json"]
    r = invoke(main, ["merge", out])
    assert r.returncode == 1
    assert "shard 1of3 is missing" in r.stdout and "--shard 1/3" in r.stdout
    assert "0of3" not in r.stdout.split("\n", 1)[1] and "2of3" not in r.stdout.split("\n", 1)[1]
    assert not (out / "stats.json").exists()
    # A requeued job whose share is merged finds nothing to do and makes no sub-store.
    r = run_cli(dirty_corpus, out, tiny_models, "--batch-size", "3", "--shard", "0/3")
    assert "already merged" in r.stdout and not (out / "shards" / "0of3").exists()
    run_cli(dirty_corpus, out, tiny_models, "--batch-size", "3", "--shard", "1/3")  # the third process
    r = invoke(main, ["merge", out])
    assert r.returncode == 0, r.stdout
    assert not (out / "shards").exists()
    assert_equal_features(dirty_reference, out)
    rejects = {x["id"] or "": x["stage"] for x in read_lines(out / "rejects.jsonl")}
    assert rejects == {"": "manifest", GOOD[0][0]: "manifest", "gone_0": "audio"}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["last_run"]["shards"] == 3 and stats["total"] == len(GOOD)
    assert stats["provenance"]["options"] == json.loads(
        (dirty_reference / "stats.json").read_text())["provenance"]["options"]
    assert verify_output(out).ok


def test_unfinished_running_and_mismatched_shards_are_named(corpus, tiny_models, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    # Stopped after one utterance: started, not all of its share done.
    run_cli(corpus, out, tiny_models, "--batch-size", "1", "--shard", "0/2", "--max-samples", "1")
    run_cli(corpus, out, tiny_models, "--batch-size", "3", "--shard", "1/2")
    # A job with other settings is refused when it starts, and says what differs.
    r = run_cli(corpus, out, tiny_models, "--batch-size", "3", "--shard", "1/2", "--val-ratio", "0.5",
                check=False)
    assert r.returncode == 2 and "other settings" in r.stderr and "val_ratio: 0.3 -> 0.5" in r.stderr
    r = run_cli(corpus, out, tiny_models, "--shard", "0/3", check=False)
    assert r.returncode == 2 and "2 shards, not 3" in r.stderr
    # Sub-stores copied in from elsewhere: one of an array of another N, one whose progress
    # file names other settings.
    shutil.copytree(out / "shards" / "1of2", tmp_path / "stray")
    shutil.copytree(tmp_path / "stray", out / "shards" / "0of3")
    progress = tmp_path / "stray" / ".preprocessing_progress.txt"
    progress.write_text(progress.read_text().replace("# fingerprint ", "# fingerprint 0", 1))
    with open(out / "shards" / "1of2" / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # as a job still writing to it would hold it
        r = invoke(main, ["merge", out])
    assert r.returncode == 1
    assert "shard 0of2 is unfinished" in r.stdout and "--shard 0/2" in r.stdout
    assert "shard 1of2 is still running" in r.stdout
    assert "shard 0of3 belongs to an array of 3 shards, not 2" in r.stdout
    assert "merged 0 utterances" in r.stdout
    # The lock released, share 1 is adopted; share 0 is still unfinished.
    r = invoke(main, ["merge", out])
    assert r.returncode == 1 and "merged" in r.stdout and "from 1 shard(s)" in r.stdout
    assert "0of2 is unfinished" in r.stdout and not (out / "shards" / "1of2").exists()
    shutil.copytree(tmp_path / "stray", out / "shards" / "1of2")
    r = run_cli(corpus, out, tiny_models, "--batch-size", "3", "--shard", "0/2")  # resumes share 0
    assert "1 already done were skipped" in r.stdout
    r = invoke(main, ["merge", out])
    assert r.returncode == 1  # complete, but the strays are named and left in place
    assert "1of2 was made with other settings" in r.stdout and "0of3 belongs" in r.stdout
    assert "not complete" not in r.stdout
    assert (out / "shards" / "1of2").is_dir() and (out / "shards" / "0of3").is_dir()
    assert len(read_lines(out / "train_manifest.jsonl")) + len(read_lines(out / "val_manifest.jsonl")) \
        == len(GOOD)
    assert verify_output(out).ok
