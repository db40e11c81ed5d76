"""`preprocess text-ids`: re-tokenise finished outputs (npy and zarr) in place, resumably."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_pipeline import GOOD, cli_args, corpus, read_lines, run_cli  # noqa: F401 (corpus: fixture)

import preprocess.text_ids as text_ids
from preprocess.pairs import build_pairs
from preprocess.provenance import fingerprint_of, sha256_file
from preprocess.store.journal import ConfigMismatch, Journal
from preprocess.store.reader import FeatureReader
from preprocess.text import TextTokenizer
from preprocess.verify import verify_output

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_checkpoints import TOKENIZER_TEXT  # noqa: E402

# The base runs' limit: the tiny bpe.model gives at most 18 ids per GOOD text, the 300-piece
# tokenizer at most 23 (none rejected), the 120-piece one up to 49 (four rejected).
MAX_TEXT_LEN = 24
MANIFESTS = ("train_manifest.jsonl", "val_manifest.jsonl")


def train_tokenizer(path: Path, vocab: int) -> Path:
    import sentencepiece as spm

    from preprocess.text import TextNormalizer, normaliser_hint, split_cjk

    normalizer = TextNormalizer()
    lines = [split_cjk(normalizer.normalize(
        line, normaliser_hint("zh" if any("\u4e00" <= c <= "\u9fff" for c in line) else None)))
        for line in TOKENIZER_TEXT.splitlines()]
    text = path.with_suffix(".txt")
    text.write_text("\n".join(lines * 4) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(path.with_suffix("")), vocab_size=vocab,
        model_type="bpe", character_coverage=1.0, bos_id=0, eos_id=1, unk_id=2, pad_id=-1,
        hard_vocab_limit=False, minloglevel=2)
    return path


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {"mid": train_tokenizer(root / "mid.model", 300),
            "small": train_tokenizer(root / "small.model", 120)}


@pytest.fixture(scope="module")
def bases(corpus, tiny_models, tmp_path_factory):
    """Finished outputs of the real job, one per format; the npy one with pair files."""
    root = tmp_path_factory.mktemp("text_ids_bases")
    for fmt in ("npy", "zarr"):
        run_cli(corpus, root / fmt, tiny_models, "--format", fmt, "--max-text-len", str(MAX_TEXT_LEN))
    build_pairs([root / "npy"])
    assert (root / "npy" / "gpt_pairs_train.jsonl").exists()
    return {fmt: root / fmt for fmt in ("npy", "zarr")}


@pytest.fixture(scope="module")
def references(bases, tokenizers, tmp_path_factory):
    """Uninterrupted regenerations with the small tokenizer (which rejects four records)."""
    root = tmp_path_factory.mktemp("text_ids_refs")
    refs = {}
    for fmt, base in bases.items():
        refs[fmt] = root / fmt
        shutil.copytree(base, refs[fmt])
        text_ids.regenerate_text_ids(refs[fmt], tokenizers["small"], progress=False)
    return refs


def copy_of(base: Path, tmp_path: Path, name: str = "out") -> Path:
    dest = tmp_path / name
    shutil.copytree(base, dest)
    return dest


def all_lines(out: Path) -> list[dict]:
    return [line for name in MANIFESTS if (out / name).exists() for line in read_lines(out / name)]


def snapshot(out: Path) -> dict:
    """Every file's bytes and every directory (None), by relative path."""
    snap = {}
    for root, dirs, files in os.walk(out):
        for d in dirs:
            snap[os.path.relpath(os.path.join(root, d), out)] = None
        for f in files:
            snap[os.path.relpath(os.path.join(root, f), out)] = Path(root, f).read_bytes()
    return snap


def untouched_features(before: dict, out: Path, fmt: str, lines: list[dict]) -> None:
    """Codes, latents (and for zarr every array but the text ones) byte for byte as before."""
    after = snapshot(out)
    if fmt == "npy":
        keys = [line[k] for line in lines for k in ("codes_path", "condition_path", "emo_vec_path")]
    else:
        keys = [k for k, v in before.items() if k.startswith("features.zarr/") and v is not None
                and k.split("/")[1] not in ("text_ids", "text_offsets", "zarr.json")]
        assert any(k.startswith("features.zarr/condition/c.") for k in keys)
    assert keys
    for k in keys:
        assert after[k] == before[k], k


def assert_clean(out: Path, fmt: str) -> None:
    """No marker, progress, staging or *.new left; npy: only referenced text id files."""
    names = set(os.listdir(out))
    assert not names & {text_ids.MARKER, text_ids.PROGRESS, text_ids.STAGING}
    assert not [n for n in names if n.endswith((".new", ".tmp"))]
    if fmt == "npy":
        on_disk = {str(p.relative_to(out)) for p in (out / "text_ids").rglob("*") if p.is_file()}
        assert on_disk == {line["text_ids_path"] for line in all_lines(out)}


def run_text_ids(out: Path, tokenizer: Path, *extra, env=None):
    cmd = [sys.executable, "-m", "preprocess", "text-ids", str(out), "--tokenizer", str(tokenizer),
           "--quiet", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def run_data_with(tokenizer: Path, manifest, out, models, *extra):
    args = cli_args(manifest, out, models, *extra)
    args[args.index("--tokenizer") + 1] = str(tokenizer)
    return subprocess.run([sys.executable, "-m", "preprocess", "data", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("fmt", ["npy", "zarr"])
def test_regenerate_keeps_everything_but_the_text_ids(fmt, bases, tokenizers, corpus, tiny_models,
                                                      tmp_path):
    out = copy_of(bases[fmt], tmp_path)
    before, lines_before = snapshot(out), all_lines(out)
    summary = text_ids.regenerate_text_ids(out, tokenizers["mid"], progress=False)
    assert (summary.records, summary.rejected, summary.computed) == (len(GOOD), 0, len(GOOD))

    lines = all_lines(out)
    assert [x["id"] for x in lines] == [x["id"] for x in lines_before]  # none lost, same order
    for name in MANIFESTS:
        assert [x["id"] for x in read_lines(out / name)] == [x["id"] for x in read_lines(bases[fmt] / name)]
    changed = {"text_len", "text_ids_path"}
    for old, new in zip(lines_before, lines):
        assert list(new) == list(old)  # same keys, same order
        assert {k: v for k, v in new.items() if k not in changed} == \
               {k: v for k, v in old.items() if k not in changed}
    untouched_features(before, out, fmt, lines)

    fresh = TextTokenizer(tokenizers["mid"])
    with FeatureReader.open(out) as reader:
        for line in lines:
            ids = reader[line["id"]]["text_ids"]
            assert ids.tolist() == fresh.encode(line["text"], line["language"])
            assert ids.size == line["text_len"]
    assert sum(a["text_len"] != b["text_len"] for a, b in zip(lines_before, lines)) >= 3
    if fmt == "npy":  # new paths beside the fan-out, relative to the manifest's directory
        assert all(x["text_ids_path"].startswith("text_ids/g1/") for x in lines)
        pairs = read_lines(out / "gpt_pairs_train.jsonl")
        by_id = {x["id"]: x for x in lines}
        assert pairs
        for pair in pairs:
            target = by_id[pair["target_id"]]
            assert pair["target_text_ids_path"] == target["text_ids_path"]
            assert pair["target_text_len"] == target["text_len"] == \
                np.load(out / pair["target_text_ids_path"]).size
    report = verify_output(out)
    assert report.ok, report.render()

    stats = json.loads((out / "stats.json").read_text())
    prov = stats["provenance"]
    assert prov["files"]["tokenizer"] == {"path": str(tokenizers["mid"]),
                                          "sha256": sha256_file(tokenizers["mid"]),
                                          "bytes": tokenizers["mid"].stat().st_size}
    assert prov["tokenizer"] == str(tokenizers["mid"]) and prov["vocab_size"] == 300
    assert stats["total"] == len(GOOD) and stats["last_run"]["command"] == "text-ids"
    assert Journal.read_fingerprint(out) == fingerprint_of(prov) == summary.fingerprint
    assert Journal.open(out, fingerprint_of(prov)).done == {g[0] for g in GOOD}
    assert_clean(out, fmt)

    # the same command again changes nothing
    after = snapshot(out)
    again = text_ids.regenerate_text_ids(out, tokenizers["mid"], progress=False)
    assert again.up_to_date and snapshot(out) == after

    # the main job with the new tokenizer (same other settings) resumes instead of refusing
    r = run_data_with(tokenizers["mid"], corpus, out, tiny_models, "--format", fmt,
                      "--max-text-len", str(MAX_TEXT_LEN))
    assert r.returncode == 0, r.stderr
    assert "Processed 0 utterances" in r.stdout and f"{len(GOOD)} already done" in r.stdout
    for name in MANIFESTS:
        assert (out / name).read_bytes() == after[name]
    assert verify_output(out).ok


@pytest.mark.parametrize("fmt", ["npy", "zarr"])
def test_over_long_ids_become_rejects(fmt, bases, references, tokenizers):
    out, base = references[fmt], bases[fmt]
    small = TextTokenizer(tokenizers["small"])
    lengths = {x["id"]: len(small.encode(x["text"], x["language"])) for x in all_lines(base)}
    too_long = {i for i, n in lengths.items() if n > MAX_TEXT_LEN}
    assert 0 < len(too_long) < len(GOOD)

    lines = all_lines(out)
    assert {x["id"] for x in lines} == set(lengths) - too_long
    assert all(x["text_len"] == lengths[x["id"]] for x in lines)
    rejects = [r for r in read_lines(out / "rejects.jsonl") if r["stage"] == "text-ids"]
    assert {r["id"] for r in rejects} == too_long
    assert all(f"exceed the limit {MAX_TEXT_LEN}" in r["reason"] for r in rejects)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["total"] == len(lines) and stats["rejected_by_stage"] == {"text-ids": len(too_long)}
    assert Journal.open(out, Journal.read_fingerprint(out)).done == {x["id"] for x in lines}
    report = verify_output(out)
    assert report.ok, report.render()
    assert_clean(out, fmt)
    if fmt == "npy":  # pairs with a rejected side are gone, the others follow the new ids
        for pair in read_lines(out / "gpt_pairs_train.jsonl"):
            assert not {pair["target_id"], pair["prompt_id"]} & too_long
            assert pair["target_text_len"] == lengths[pair["target_id"]]


class Killed(BaseException):
    """Stands in for SIGKILL at a fault point (nothing after it runs but `finally`s, which
    only release the lock)."""


FAULTS = ["text_ids_after_stage:2", "text_ids_after_pending:1", "text_ids_before_marker:1",
          "text_ids_after_marker:1", "text_ids_after_swap:1", "text_ids_after_rename:1",
          "text_ids_after_rename:3", "text_ids_after_journal:1", "text_ids_after_stats:1",
          "text_ids_after_cleanup:1"]
# between these points the journal names no configuration preprocess-data could resume with
PENDING = {"text_ids_after_pending", "text_ids_before_marker", "text_ids_after_marker",
           "text_ids_after_swap", "text_ids_after_rename"}


@pytest.mark.parametrize("fmt,fault", [(fmt, fault) for fmt in ("npy", "zarr") for fault in FAULTS
                                       if fmt == "zarr" or "swap" not in fault])  # npy: no store swap
def test_kill_anywhere_then_rerun_equals_uninterrupted(fmt, fault, bases, references, tokenizers,
                                                       tmp_path, monkeypatch):
    name, count = fault.split(":")
    out = copy_of(bases[fmt], tmp_path)
    hits = {"n": 0}

    def fault_point(point):
        if point == name:
            hits["n"] += 1
            if hits["n"] == int(count):
                raise Killed(point)

    monkeypatch.setattr(text_ids, "fault_point", fault_point)
    with pytest.raises(Killed):
        text_ids.regenerate_text_ids(out, tokenizers["small"], progress=False, chunk=2)
    header = Journal.read_fingerprint(out)
    assert header.startswith(text_ids.PENDING) == (name in PENDING)
    if fmt == "npy":  # every manifest line consistent at the instant of the kill
        report = verify_output(out)
        assert report.ok, report.render()
    if name == "text_ids_after_stage":
        listed = (out / text_ids.PROGRESS).read_text().splitlines()[1:]
        assert len(listed) == 4  # two chunks of two

    monkeypatch.undo()
    # one resume tokenises in worker processes: same bytes as in-process
    workers = 2 if (fmt, name) == ("npy", "text_ids_after_stage") else 1
    summary = text_ids.regenerate_text_ids(out, tokenizers["small"], progress=False, chunk=2,
                                           workers=workers)
    if name == "text_ids_after_stage":
        assert (summary.resumed, summary.computed) == (4, len(GOOD) - 4)
    assert not summary.up_to_date and summary.rejected == 4
    assert snapshot(out) == snapshot(references[fmt])


def test_cli_kill_after_commit_blocks_the_main_job_until_rerun(bases, references, tokenizers,
                                                               tmp_path):
    out = copy_of(bases["zarr"], tmp_path)
    before = Journal.read_fingerprint(out)
    r = run_text_ids(out, tokenizers["small"], env={"PREPROCESS_FAULT": "text_ids_after_swap:1"})
    assert r.returncode == 137, r.stderr
    # store swapped, manifests not yet: preprocess-data (old or new settings) must refuse;
    # OutputDir opens the journal exactly so
    new = json.loads((out / text_ids.MARKER).read_text())["new_fingerprint"]
    for fingerprint in (before, new):
        with pytest.raises(ConfigMismatch, match="rerun that command"):
            Journal.open(out, fingerprint)
    r = run_text_ids(out, tokenizers["small"], "--strict")
    assert r.returncode == 1, r.stderr  # finished; --strict reports the rejects
    assert "after finishing an interrupted commit" in r.stdout and "4 rejected" in r.stdout
    assert snapshot(out) == snapshot(references["zarr"])


def invoke(*args):
    """The click command in this process (the subprocess path is tested above)."""
    from click.testing import CliRunner

    from preprocess.cli import main

    return CliRunner().invoke(main, ["text-ids", *map(str, args), "--quiet"])


def test_cli_language_override_and_errors(bases, tokenizers, tmp_path):
    out = copy_of(bases["npy"], tmp_path)
    r = invoke(out, "--tokenizer", tokenizers["mid"], "--language", "ja")
    assert r.exit_code == 0, r.output
    assert "--language ja" in r.output and "8 utterances kept" in r.output
    fresh = TextTokenizer(tokenizers["mid"])
    lines = all_lines(out)
    assert any(fresh.encode(x["text"], "ja") != fresh.encode(x["text"], x["language"]) for x in lines)
    for line in lines:
        assert np.load(out / line["text_ids_path"]).tolist() == fresh.encode(line["text"], "ja")
    prov = json.loads((out / "stats.json").read_text())["provenance"]
    assert prov["options"]["language"] == "ja"
    assert Journal.read_fingerprint(out) == fingerprint_of(prov)
    assert verify_output(out).ok

    r = invoke(out, "--tokenizer", tmp_path / "missing.model")
    assert r.exit_code == 2 and "not found" in r.output
    r = invoke(tmp_path / "nowhere", "--tokenizer", tokenizers["mid"])
    assert r.exit_code == 2 and "not a directory" in r.output
    r = invoke(out, "--tokenizer", tokenizers["mid"], "--language", "ja")
    assert r.exit_code == 0 and "nothing to do" in r.output
