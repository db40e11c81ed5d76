"""Faults a user meets: damaged outputs (verify --repair), a full disk, signals, a run in
progress, and the messages each gives. Every test ends with a rerun that must equal an
uninterrupted run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_pipeline import (GOOD, assert_same_output, cli_args, corpus, invoke, read_lines,  # noqa: F401
                           run_cli)

import preprocess.store.faults as faults
from preprocess.cli import main
from preprocess.contract import MANIFESTS, PROGRESS_FILE
from preprocess.repair import repair_output
from preprocess.store.dataset import lock_output
from preprocess.store.journal import Journal
from preprocess.store.reader import FeatureReader
from preprocess.verify import RunInProgress, verify_output


def lines_of(out: Path) -> list[dict]:
    return [line for name in MANIFESTS.values() for line in read_lines(out / name)]


def write_manifest(path: Path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")


def unrowed(path: Path) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "row"} for line in read_lines(path)]


def assert_same_features(a: Path, b: Path, ordered: bool = True):
    """Same manifests (but for the rows of a packed store: a recomputed record is appended),
    same ids and codes bit for bit, latents within the batch-size bound (a record recomputed
    alone is not in the batch it was first computed in)."""
    def order(lines):  # `preprocess merge` has no corpus manifest to order the lines by
        return lines if ordered else sorted(lines, key=lambda line: line["id"])

    for name in MANIFESTS.values():
        assert order(unrowed(a / name)) == order(unrowed(b / name)), name
    with FeatureReader.open(a) as ra, FeatureReader.open(b) as rb:
        assert sorted(ra.ids) == sorted(rb.ids)
        for id_ in ra.ids:
            x, y = ra[id_], rb[id_]
            assert np.array_equal(x["text_ids"], y["text_ids"]) and np.array_equal(x["codes"], y["codes"]), id_
            np.testing.assert_allclose(x["condition"], y["condition"], atol=1e-4, rtol=0)
            np.testing.assert_allclose(x["emo_vec"], y["emo_vec"], atol=1e-4, rtol=0)


# -- verify --repair ---------------------------------------------------------------------------

def plant_npy_damage(out: Path) -> dict[str, str]:
    """One record per kind of damage verify finds; returns id -> kind."""
    train = read_lines(out / MANIFESTS["train"])
    val = read_lines(out / MANIFESTS["val"])
    a, b, c, d, e, f = (train + val)[:6]
    codes = out / a["codes_path"]
    codes.write_bytes(codes.read_bytes()[:100])                                  # truncated
    (out / b["condition_path"]).unlink()                                         # missing
    np.save(out / c["emo_vec_path"], np.zeros(1279, np.float32))                 # wrong shape
    np.save(out / d["text_ids_path"], np.load(out / d["text_ids_path"]).astype(np.float32))  # dtype
    e["text_len"] += 1                                                           # length edited
    f["codes_path"] = "codes/00/nowhere.npy"                                     # points nowhere
    gone = val.pop()                                                             # line deleted
    write_manifest(out / MANIFESTS["train"], train)
    write_manifest(out / MANIFESTS["val"], val)
    with open(out / MANIFESTS["val"], "a") as fh:
        fh.write('{"id": "torn", "text_len": 3')                                  # torn line
    return {a["id"]: "truncated", b["id"]: "missing", c["id"]: "shape", d["id"]: "dtype",
            e["id"]: "text_len", f["id"]: "nowhere", gone["id"]: "deleted"}


def test_repair_withdraws_each_kind_of_damage_and_a_rerun_restores_it(reference_run, corpus, tiny_models,
                                                                      tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    planted = plant_npy_damage(out)
    assert not verify_output(out).ok
    r = invoke(main, ["verify", "--repair", out])
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"withdrew {len(planted)} record(s)" in r.stdout and "1 malformed manifest line" in r.stdout
    for id_ in planted:
        assert id_ in r.stdout
    assert verify_output(out).ok                       # what is left is intact
    done = Journal.open(out, Journal.read_fingerprint(out)).done
    assert done.isdisjoint(planted) and len(done) == len(GOOD) - len(planted)
    again = invoke(main, ["verify", "--repair", out])
    assert again.returncode == 0 and "nothing to repair" in again.stdout
    r = run_cli(corpus, out, tiny_models, "--batch-size", "3")
    assert f"Processed {len(planted)} utterances" in r.stdout
    assert_same_features(reference_run, out)
    assert verify_output(out).ok


def test_repair_of_a_packed_store(corpus, tiny_models, tmp_path):
    reference = tmp_path / "reference"
    run_cli(corpus, reference, tiny_models, "--batch-size", "3", "--format", "zarr")
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    train = read_lines(out / MANIFESTS["train"])
    train[0]["code_len"] += 2                          # length edited
    train[1]["row"] = 999                              # a row the store does not hold
    write_manifest(out / MANIFESTS["train"], train)
    report, repair = repair_output(out)
    assert set(repair.withdrawn) == {train[0]["id"], train[1]["id"]} and not repair.left
    run_cli(corpus, out, tiny_models, "--batch-size", "3", "--format", "zarr")
    assert_same_features(reference, out)


def test_a_kill_inside_repair_leaves_a_directory_a_rerun_completes(reference_run, corpus, tiny_models,
                                                                  tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    plant_npy_damage(out)
    code = subprocess.run([sys.executable, "-m", "preprocess", "verify", "--repair", str(out)],
                          env={**os.environ, "PREPROCESS_FAULT": "repair_after_journal:1"},
                          capture_output=True, text=True).returncode
    assert code == 137                                 # journal rewritten, manifests not yet
    run_cli(corpus, out, tiny_models, "--batch-size", "3")
    assert_same_features(reference_run, out)


# -- a full disk ---------------------------------------------------------------------------------

# The n-th durable write of a run of the sample corpus at --batch-size 3 (8 utterances, three
# batches). npy: 1 the progress file, 5 an array file, 14 a manifest append, 16 the journal's,
# 44 the manifests rewritten in order, 46 stats.json. zarr: 3 array metadata, 20 a shard file,
# 51 the manifest lines of the one buffered flush, 53 the journal.
DISK_FULL_POINTS = [("npy", n) for n in (1, 5, 14, 16, 44, 46)] + [("zarr", n) for n in (3, 20, 51, 53)]


@pytest.fixture(scope="module")
def zarr_reference(corpus, tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("zarr_reference")
    run_cli(corpus, out, tiny_models, "--batch-size", "3", "--format", "zarr")
    return out


@pytest.mark.parametrize("fmt,n", DISK_FULL_POINTS)
def test_disk_full_stops_with_one_clear_error_and_a_rerun_completes(fmt, n, reference_run, zarr_reference,
                                                                    corpus, tiny_models, tmp_path,
                                                                    monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("PREPROCESS_FAULT", f"disk_full:{n}")
    monkeypatch.setattr(faults, "_counts", {})
    r = run_cli(corpus, out, tiny_models, "--batch-size", "3", "--format", fmt, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    error = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and str(out) in error[0] and "disk is full" in error[0], r.stderr
    assert "rerun the same command" in error[0]
    if 1 < n < 40:
        assert "more is needed for the" in error[0]
    # Nothing the manifests hold points at a partial file (a torn last line is dropped on resume).
    report = verify_output(out) if (out / PROGRESS_FILE).exists() else None
    assert report is None or not report.damaged, report.render()
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.partial"))
    monkeypatch.delenv("PREPROCESS_FAULT")
    run_cli(corpus, out, tiny_models, "--batch-size", "3", "--format", fmt)
    # A journal append cut short can mark part of a batch done: the rest is recomputed in a
    # smaller batch, hence latents within the batch-size bound rather than bit for bit.
    reference = reference_run if fmt == "npy" else zarr_reference
    assert_same_features(reference, out)
    assert (reference / "rejects.jsonl").read_bytes() == (out / "rejects.jsonl").read_bytes()
    assert verify_output(out).ok


def test_disk_full_during_merge_names_the_shards_and_a_rerun_finishes(zarr_reference, corpus, tiny_models,
                                                                      tmp_path, monkeypatch):
    out = tmp_path / "out"
    r = run_cli(corpus, out, tiny_models, "--devices", "cpu,cpu", "--batch-size", "3", "--format", "zarr",
                env={"PREPROCESS_FAULT": "before_merge:1"}, check=False)
    assert r.returncode == 137 and len(list((out / "shards").iterdir())) == 2   # shards left to merge
    monkeypatch.setenv("PREPROCESS_FAULT", "disk_full:4")
    monkeypatch.setattr(faults, "_counts", {})
    r = invoke(main, ["merge", out])
    assert r.returncode == 1 and "disk is full" in r.stderr and str(out / "shards") in r.stderr, r.stderr
    assert f"rerun `preprocess merge {out}`" in r.stderr
    monkeypatch.delenv("PREPROCESS_FAULT")
    r = invoke(main, ["merge", out])
    assert r.returncode == 0, r.stderr
    assert_same_features(zarr_reference, out, ordered=False)


# -- signals -------------------------------------------------------------------------------------

def start_run(corpus, out, models, *extra):
    cmd = [sys.executable, "-m", "preprocess", "data", *cli_args(corpus, out, models, "--batch-size", "3", *extra)]
    return subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_commits(proc, out: Path, n: int, timeout=300) -> None:
    progress = out / PROGRESS_FILE
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and len(progress.read_text().splitlines()) > n:
            return
        time.sleep(0.02)
    raise AssertionError(f"no {n} commits before the run ended (exit {proc.poll()})")


@pytest.mark.parametrize("signals", [(signal.SIGTERM,), (signal.SIGINT,), (signal.SIGTERM, signal.SIGTERM)])
def test_a_signal_stops_the_run_cleanly_and_a_rerun_completes(signals, reference_run, corpus, tiny_models,
                                                             tmp_path):
    out = tmp_path / "out"
    proc = start_run(corpus, out, tiny_models)
    wait_for_commits(proc, out, 1)
    sent = time.time()
    for s in signals:
        proc.send_signal(s)
        time.sleep(0.01)
    _, stderr = proc.communicate(timeout=60)
    took = time.time() - sent
    # One signal: the run winds down and says so. Two: the process ends at once, by our exit
    # (128 + signal) during the wind-down or by the signal itself just after it.
    assert proc.returncode in ((128 + signals[0],) if len(signals) == 1 else (128 + signals[0], -signals[0])), stderr
    assert took < 10, took
    if len(signals) == 1:
        assert "interrupted" in stderr and "rerun the same command" in stderr
    report = verify_output(out)
    assert not report.damaged and not report.general, report.render()
    run_cli(corpus, out, tiny_models, "--batch-size", "3")
    assert_same_output(reference_run, out)


# -- a run in progress, and the messages of bad input -----------------------------------------------

def test_verify_and_stats_say_a_run_is_in_progress(reference_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    lock = lock_output(out)
    try:
        with pytest.raises(RunInProgress):
            verify_output(out)
        r = invoke(main, ["verify", out])
        assert r.returncode == 2 and "a run is writing to this directory" in r.stderr
        r = invoke(main, ["verify", "--repair", out])
        assert r.returncode == 2 and "a run is writing to this directory" in r.stderr
        r = invoke(main, ["stats", out])
        assert r.returncode == 0 and "a run is writing to" in r.stderr
    finally:
        lock.close()
    assert verify_output(out).ok


def test_a_second_run_on_the_same_directory_is_refused(reference_run, corpus, tiny_models, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    lock = lock_output(out)  # as the first run holds it
    try:
        r = run_cli(corpus, out, tiny_models, "--batch-size", "3", check=False)
    finally:
        lock.close()
    assert r.returncode == 2 and "a run is writing to this directory now" in r.stderr
    assert_same_output(reference_run, out)


def test_a_directory_as_audio_and_a_non_utf8_line_are_named(corpus, tiny_models, tmp_path):
    base = read_lines(corpus)[0]
    (tmp_path / "adir").mkdir()
    manifest = tmp_path / "m.jsonl"
    lines = [json.dumps({**base, "audio": str(corpus.parent / base["audio"])}).encode(),
             json.dumps({**base, "id": "dir", "audio": "adir"}).encode(),
             b'{"id": "latin1", "text": "caf\xe9", "audio": "x.wav"}']
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    run_cli(manifest, tmp_path / "out", tiny_models)
    rejects = {r["line"]: r for r in read_lines(tmp_path / "out" / "rejects.jsonl")}
    assert "is a directory, not a file" in rejects[2]["reason"] and "adir" in rejects[2]["reason"]
    assert rejects[3]["id"] == "latin1"
    assert "line 3 is not valid UTF-8 (byte 0xe9 at byte 30)" in rejects[3]["reason"]


def test_a_torn_journal_tail_is_cut_off_so_the_next_append_starts_a_line(tmp_path):
    out = tmp_path
    Journal.open(out, "f" * 64).mark_done(["a", "b"])
    with open(out / PROGRESS_FILE, "a") as f:
        f.write("tor")                                 # a crash mid-append
    journal = Journal.open(out, "f" * 64)
    assert journal.done == {"a", "b"}
    journal.mark_done(["c"])
    assert Journal.open(out, "f" * 64).done == {"a", "b", "c"}
