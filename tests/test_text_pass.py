"""`preprocess prepare-text` and `preprocess-data --prepared-text`: text ids made ahead of the
job are taken instead of normalising, and the outputs are the same bytes as without them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_pipeline import GOOD, TIMEOUT, assert_same_output, invoke, read_lines, run_cli

from preprocess.cli import main
from preprocess.text_cache import entry_line, line_offsets

PROGRESS = ".preprocessing_progress.txt"


def pass_args(manifest, models, out, *extra):
    return ["prepare-text", "--manifest", str(manifest), "--tokenizer", str(models / "bpe.model"),
            "--workers", "1", "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def prepared(sample_corpus, tiny_models, tmp_path_factory):
    """An uninterrupted pass over the sample corpus with the job's tokenizer."""
    out = tmp_path_factory.mktemp("prepared") / "text.jsonl"
    r = invoke(main, pass_args(sample_corpus, tiny_models, out))
    assert r.returncode == 0, r.stderr
    assert f"Prepared the text of {len(GOOD)} records" in r.stdout
    return out


def lines_of(path: Path) -> tuple[bytes, list[dict]]:
    header, *rest = path.read_bytes().splitlines(keepends=True)
    return header, [json.loads(x) for x in rest]


def write_prepared(path: Path, header: bytes, entries: list[dict]) -> Path:
    path.write_bytes(header + b"".join(
        entry_line(e["id"], e["language"], e["text"], e.get("ids"), e.get("reject")) for e in entries))
    return path


def test_every_record_has_its_cleaned_text_and_ids(prepared):
    _, entries = lines_of(prepared)
    assert [e["id"] for e in entries] == [g[0] for g in GOOD]  # source order
    by_id = {e["id"]: e for e in entries}
    assert by_id["en_d_1"]["text"] == "She sells sea shells."  # cleaned (speaker tag), not normalised
    assert by_id["en_d_1"]["language"] == ""                   # the record's own code
    assert all(e["ids"] and all(isinstance(i, int) for i in e["ids"]) for e in entries)


def test_job_with_prepared_text_equals_job_alone(prepared, reference_run, sample_corpus, tiny_models, tmp_path):
    r = run_cli(sample_corpus, tmp_path, tiny_models, "--batch-size", "3", "--prepared-text", prepared)
    assert f"Text ids: {len(GOOD)} taken from the prepared text, 0 made here" in r.stdout
    assert_same_output(reference_run, tmp_path)
    # the same fingerprint: the file changes nothing the output records
    assert (tmp_path / PROGRESS).read_text().splitlines()[0] == \
        (reference_run / PROGRESS).read_text().splitlines()[0]
    stats = [json.loads((d / "stats.json").read_text())["provenance"] for d in (reference_run, tmp_path)]
    assert stats[0] == stats[1]


def test_two_devices_take_the_prepared_text_too(prepared, reference_run, sample_corpus, tiny_models,
                                                tmp_path):
    """Each device's process reads the file for its share; the counts come back to the launcher."""
    r = run_cli(sample_corpus, tmp_path, tiny_models, "--devices", "cpu,cpu", "--batch-size", "3",
                "--prepared-text", prepared)
    assert f"Text ids: {len(GOOD)} taken from the prepared text, 0 made here" in r.stdout
    for name in ("train_manifest.jsonl", "val_manifest.jsonl", "rejects.jsonl"):
        assert (reference_run / name).read_bytes() == (tmp_path / name).read_bytes(), name
    for line in read_lines(tmp_path / "train_manifest.jsonl") + read_lines(tmp_path / "val_manifest.jsonl"):
        assert (reference_run / line["text_ids_path"]).read_bytes() == \
            (tmp_path / line["text_ids_path"]).read_bytes()


def test_partial_prepared_text_makes_only_what_it_lacks(prepared, reference_run, sample_corpus, tiny_models,
                                                        tmp_path):
    header, entries = lines_of(prepared)
    # three records as the pass wrote them, one whose line was made for another language (with
    # ids that would show if they were used), four absent
    stale = {**entries[3], "language": "en", "ids": [7, 7, 7]}
    partial = write_prepared(tmp_path / "partial.jsonl", header, entries[:3] + [stale])
    out = tmp_path / "out"
    r = run_cli(sample_corpus, out, tiny_models, "--batch-size", "3", "--prepared-text", partial)
    assert ("Text ids: 3 taken from the prepared text, 5 made here (4 not in it, 1 whose text "
            "or language differs from its line there)") in r.stdout
    assert_same_output(reference_run, out)


def test_ids_are_taken_from_the_file_and_the_job_applies_its_limits(prepared, sample_corpus, tiny_models,
                                                                    tmp_path):
    header, entries = lines_of(prepared)
    taken = {**entries[0], "ids": [5, 6, 7]}              # en_a_0: used as they are
    long = {**entries[1], "ids": list(range(1, 31))}      # en_a_1: 30 ids, over the limit below
    changed = write_prepared(tmp_path / "changed.jsonl", header, [taken, long, *entries[2:]])
    out = tmp_path / "out"
    run_cli(sample_corpus, out, tiny_models, "--batch-size", "3", "--max-text-len", "24",
            "--prepared-text", changed)
    lines = {x["id"]: x for x in read_lines(out / "train_manifest.jsonl") + read_lines(out / "val_manifest.jsonl")}
    assert np.load(out / lines["en_a_0"]["text_ids_path"]).tolist() == [5, 6, 7]
    assert lines["en_a_0"]["text_len"] == 3
    rejects = {x["id"]: x for x in read_lines(out / "rejects.jsonl")}
    assert rejects["en_a_1"]["stage"] == "limits"
    assert rejects["en_a_1"]["reason"] == "30 text ids exceed the limit 24"


def test_other_settings_are_refused_naming_what_differs(prepared, sample_corpus, tiny_models, tmp_path):
    header, entries = lines_of(prepared)
    made = json.loads(header)
    sha = made["made_by"]["tokenizer_sha256"]
    made["made_by"].update(tokenizer_sha256="0" * 64, text_pipeline=0)
    made["made_by"]["normaliser"]["version"] = "1.1.0"
    other = write_prepared(tmp_path / "other.jsonl",
                           (json.dumps(made) + "\n").encode(), entries)
    out = tmp_path / "out"
    r = run_cli(sample_corpus, out, tiny_models, "--prepared-text", other, check=False)
    assert r.returncode == 2
    for words in (f"tokenizer_sha256: 000000000000 -> {sha[:12]}", "text_pipeline: 0 -> 1",
                  "normaliser.version: '1.1.0' -> '1.2.0'", "preprocess prepare-text", "--prepared-text"):
        assert words in r.stderr, (words, r.stderr)
    assert not out.exists()  # refused before the output is touched

    # the language option is part of what made the ids
    r = run_cli(sample_corpus, out, tiny_models, "--language", "en", "--prepared-text", prepared, check=False)
    assert r.returncode == 2 and "language: None -> 'en'" in r.stderr
    # and the pass refuses to extend a file made with other settings, unless forced
    r = invoke(main, pass_args(sample_corpus, tiny_models, prepared, "--language", "en"))
    assert r.returncode == 2 and "language: None -> 'en'" in r.stderr and "--force" in r.stderr


def test_killed_pass_resumes_to_the_same_file(prepared, sample_corpus, tiny_models, tmp_path):
    out = tmp_path / "text.jsonl"
    code = ("import sys; from preprocess.text_pass import prepare_text; "
            "prepare_text(sys.argv[1], sys.argv[2], sys.argv[3], workers=1, block=3, progress=False)")
    r = subprocess.run([sys.executable, "-c", code, str(sample_corpus), str(tiny_models / "bpe.model"), str(out)],
                       env={**os.environ, "PREPROCESS_FAULT": "text_pass_after_append:2"},
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 137, r.stderr
    assert len(out.read_bytes().splitlines()) == 1 + 6  # header and two blocks of three
    with open(out, "ab") as f:  # and a write the kill cut short
        f.write(b'{"id": "en_d_1", "language": "", "te')
    assert len(line_offsets(out)) == 6  # readers drop the torn line
    r = invoke(main, pass_args(sample_corpus, tiny_models, out))
    assert r.returncode == 0, r.stderr
    assert "Prepared the text of 2 records" in r.stdout and "6 were already in" in r.stdout
    assert out.read_bytes() == prepared.read_bytes()


def test_a_changed_manifest_text_is_prepared_again(prepared, sample_corpus, tmp_path, tiny_models):
    """The pass reads no audio; an edited text gets a new line, and the last line holds."""
    out = tmp_path / "text.jsonl"
    out.write_bytes(prepared.read_bytes())
    lines = sample_corpus.read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    first["text"] = "An edited line."
    edited = tmp_path / "manifest.jsonl"
    edited.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n", encoding="utf-8")
    r = invoke(main, pass_args(edited, tiny_models, out))
    assert r.returncode == 0 and "Prepared the text of 1 records" in r.stdout, r.stderr
    offsets = line_offsets(out)
    with open(out, "rb") as f:
        f.seek(offsets[first["id"]])
        assert json.loads(f.readline())["text"] == "An edited line."  # the last line holds
