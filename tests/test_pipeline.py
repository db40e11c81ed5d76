"""End to end: manifest in, trainer-ready output out; resume after kills; bad input; verify."""

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
import soundfile as sf

from preprocess.cli import main
from preprocess.manifest import is_val
from preprocess.verify import verify_output

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_sample import synthetic_voice  # noqa: E402

TRAINER_KEYS = ["id", "audio_path", "text", "speaker", "language", "duration", "text_ids_path",
                "text_len", "codes_path", "code_len", "condition_path", "condition_len", "emo_vec_path"]

GOOD = [  # (id, text, language, sample rate, seconds)
    ("en_a_0", "The quick brown fox jumps over the lazy dog.", "en", 16000, 2.1),
    ("en_a_1", "Please call me at 3:30 in the afternoon.", "en", 22050, 1.3),
    ("zh_b_0", "今天天气很好，我们一起去公园散步吧。", "zh", 24000, 2.6),
    ("zh_b_1", "这是一个测试句子。", "zh", 44100, 0.9),
    ("ja_c_0", "こんにちは、今日はいい天気ですね。", "ja", 48000, 1.7),
    ("ko_c_1", "안녕하세요, 반갑습니다.", "ko", 8000, 1.1),
    ("fr_d_0", "Bonjour tout le monde.", "fr", 32000, 3.3),
    ("en_d_1", "Speaker 1: She sells sea shells.", "", 16000, 0.5),
]


TIMEOUT = 600  # seconds for one CLI run


def write_clip(path: Path, sr: int, seconds: float, seed: int, stereo=False):
    audio = synthetic_voice("x" * 40, seed, sr)
    n = int(seconds * sr)
    audio = np.resize(audio, n).astype(np.float32)
    if stereo:
        audio = np.stack([audio, 0.3 * audio], axis=1)
    sf.write(path, audio, sr)


def make_corpus(root: Path) -> Path:
    """The GOOD records as audio files of several rates and formats, and their manifest."""
    (root / "wav").mkdir(parents=True)
    lines = []
    for k, (id_, text, lang, sr, secs) in enumerate(GOOD):
        ext = "flac" if k % 3 == 1 else "wav"
        write_clip(root / "wav" / f"{id_}.{ext}", sr, secs, k, stereo=(k == 2))
        lines.append({"id": id_, "text": text, "audio": f"wav/{id_}.{ext}", "speaker": id_[:4],
                      "language": lang, "duration": secs})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return manifest


@pytest.fixture(scope="module")
def corpus(sample_corpus):
    """The session's corpus (conftest.py), under the name the other test modules import."""
    return sample_corpus


def cli_args(manifest, out, models, *extra):
    return ["--manifest", str(manifest), "--output-dir", str(out),
            "--config", str(models / "config.yaml"), "--tokenizer", str(models / "bpe.model"),
            "--w2v-bert", str(models / "w2v-bert-2.0"),
            "--semantic-codec", str(models / "semantic_codec" / "model.safetensors"),
            "--workers", "1", "--val-ratio", "0.3", "--quiet", *extra]


def invoke(command, args) -> subprocess.CompletedProcess:
    """A click command run in this process, reported as a finished process would be. An
    exception that escapes the command is raised here: it would be a traceback on stderr.
    The job sets torch's thread count for its device loop; the tests after it keep theirs. A
    run that hangs ends the test session after TIMEOUT s, with every thread's traceback."""
    import faulthandler

    import torch
    from click.testing import CliRunner

    args = [str(a) for a in args]
    threads = torch.get_num_threads()
    faulthandler.dump_traceback_later(TIMEOUT, exit=True, file=sys.__stderr__)
    try:
        result = CliRunner().invoke(command, args, catch_exceptions=False)
    finally:
        faulthandler.cancel_dump_traceback_later()
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def run_process(args, env=None) -> subprocess.CompletedProcess:
    """`python -m preprocess ARGS` in a child process."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "preprocess", *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=TIMEOUT)


def run_cli(manifest, out, models, *extra, env=None, check=True):
    """preprocess-data in this process; in a child process when `env` is given (PREPROCESS_FAULT
    points end the process they run in, as a kill would)."""
    args = cli_args(manifest, out, models, *extra)
    if env is None:
        from preprocess.cli import preprocess_data
        r = invoke(preprocess_data, args)
    else:
        r = run_process(["data", *args], env)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def read_lines(path):
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def assert_same_output(a: Path, b: Path):
    """Same manifests byte for byte, same arrays byte for byte (CPU is deterministic)."""
    for name in ("train_manifest.jsonl", "val_manifest.jsonl", "rejects.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for line in read_lines(a / "train_manifest.jsonl") + read_lines(a / "val_manifest.jsonl"):
        for key in ("text_ids_path", "codes_path", "condition_path", "emo_vec_path"):
            assert (a / line[key]).read_bytes() == (b / line[key]).read_bytes(), line[key]
    ids_a = sorted(Path(a / ".preprocessing_progress.txt").read_text().splitlines()[1:])
    ids_b = sorted(Path(b / ".preprocessing_progress.txt").read_text().splitlines()[1:])
    assert ids_a == ids_b


def test_output_layout_and_contract(reference_run, corpus):
    out = reference_run
    train, val = read_lines(out / "train_manifest.jsonl"), read_lines(out / "val_manifest.jsonl")
    assert len(train) + len(val) == len(GOOD)
    for line in train + val:
        assert list(line)[:13] == TRAINER_KEYS
        assert is_val(line["id"], 0.3) == (line in val)
        ids = np.load(out / line["text_ids_path"], allow_pickle=False)
        codes = np.load(out / line["codes_path"], allow_pickle=False)
        cond = np.load(out / line["condition_path"], allow_pickle=False)
        emo = np.load(out / line["emo_vec_path"], allow_pickle=False)
        assert ids.dtype == np.int32 and ids.ndim == 1 and line["text_len"] == ids.size > 0
        assert codes.dtype == np.int32 and line["code_len"] == codes.size
        assert cond.shape == (32, 1280) and cond.dtype == np.float32 and line["condition_len"] == 32
        assert emo.shape == (1280,) and emo.dtype == np.float32
        assert 0 <= codes.min() and codes.max() < 8192
        # 50 codes per second, ceil(F/2) frames of the 16 kHz signal
        assert abs(line["code_len"] - 50 * line["audio_duration"]) <= 2
    by_id = {x["id"]: x for x in train + val}
    assert by_id["en_d_1"]["text"] == "She sells sea shells."  # speaker tag cleaned, not normalised
    assert by_id["zh_b_0"]["audio_path"] == "wav/zh_b_0.wav"   # stored unmangled
    stats = json.loads((out / "stats.json").read_text())
    assert stats["total"] == len(GOOD) and stats["train"] == len(train) and stats["val"] == len(val)
    assert stats["provenance"]["files"]["gpt_checkpoint"]["sha256"]
    assert stats["provenance"]["options"]["resample"] == "reference"
    # source-line order, whatever the processing order was
    order = [g[0] for g in GOOD]
    assert [x["id"] for x in train] == [i for i in order if i in {t["id"] for t in train}]
    assert verify_output(out).ok


@pytest.mark.parametrize("settings", [("--batch-size", "1", "--workers", "2"), ("--batch-size", "0")],
                         ids=["bs1-2workers", "automatic"])
def test_what_holds_across_batch_sizes_and_worker_counts(settings, reference_run, corpus, tiny_models,
                                                        tmp_path):
    """README's invariance statement: manifests, text ids and codes bit-identical; latents
    within 1e-4 (fp32 on CPU)."""
    run_cli(corpus, tmp_path, tiny_models, *settings)
    for name in ("train_manifest.jsonl", "val_manifest.jsonl", "rejects.jsonl"):
        assert (reference_run / name).read_bytes() == (tmp_path / name).read_bytes(), name
    for line in read_lines(reference_run / "train_manifest.jsonl") + read_lines(reference_run / "val_manifest.jsonl"):
        for key in ("text_ids_path", "codes_path"):
            assert (reference_run / line[key]).read_bytes() == (tmp_path / line[key]).read_bytes(), line[key]
        for key in ("condition_path", "emo_vec_path"):
            np.testing.assert_allclose(np.load(reference_run / line[key]), np.load(tmp_path / line[key]),
                                       atol=1e-4, rtol=0)


@pytest.mark.parametrize("fault", ["after_store:1", "after_manifest:2", "after_journal:2"])
def test_resume_after_fault_equals_uninterrupted(fault, reference_run, corpus, tiny_models, tmp_path):
    r = run_cli(corpus, tmp_path, tiny_models, "--batch-size", "3",
                env={"PREPROCESS_FAULT": fault}, check=False)
    assert r.returncode == 137, r.stderr
    run_cli(corpus, tmp_path, tiny_models, "--batch-size", "3")
    assert_same_output(reference_run, tmp_path)
    assert verify_output(tmp_path).ok


def test_resume_after_sigkill(reference_run, corpus, tiny_models, tmp_path):
    cmd = [sys.executable, "-m", "preprocess", "data",
           *cli_args(corpus, tmp_path, tiny_models, "--batch-size", "3")]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = tmp_path / ".preprocessing_progress.txt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and len(progress.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(progress.read_text().splitlines()) - 1
    assert 0 < done_before < len(GOOD)
    r = run_cli(corpus, tmp_path, tiny_models, "--batch-size", "3")
    assert f"{done_before} already done were skipped" in r.stdout
    assert_same_output(reference_run, tmp_path)


def test_rerun_is_a_noop_and_changed_settings_are_refused(reference_run, corpus, tiny_models, tmp_path):
    shutil.copytree(reference_run, tmp_path, dirs_exist_ok=True)  # a finished run of these settings
    r = run_cli(corpus, tmp_path, tiny_models, "--batch-size", "3")
    assert "Processed 0 utterances" in r.stdout and f"{len(GOOD)} already done" in r.stdout
    assert_same_output(reference_run, tmp_path)
    r = run_cli(corpus, tmp_path, tiny_models, "--val-ratio", "0.5", check=False)
    assert r.returncode == 2 and "--force" in r.stderr and "other settings" in r.stderr
    assert "val_ratio: 0.3 -> 0.5" in r.stderr  # which setting changed, old -> new
    r = run_cli(corpus, tmp_path, tiny_models, "--val-ratio", "0.5", "--force")
    val = read_lines(tmp_path / "val_manifest.jsonl")
    assert {x["id"] for x in val} == {g[0] for g in GOOD if is_val(g[0], 0.5)}


def test_bad_input_becomes_rejects(corpus, tiny_models, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    write_clip(bad / "short.wav", 16000, 0.05, 1)
    write_clip(bad / "long.wav", 16000, 9.0, 2)
    write_clip(bad / "ok.wav", 16000, 1.5, 3)
    (bad / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    ok = str(bad / "ok.wav")
    good = json.dumps({"id": "good", "text": "A good line.", "audio": ok, "speaker": "s"})
    lines = [
        good,
        "{not json",
        json.dumps({"id": "no_audio_field", "text": "hello"}),
        json.dumps({"id": "missing", "text": "hello there", "audio": "nowhere.wav"}),
        json.dumps({"id": "corrupt", "text": "hello there", "audio": str(bad / "corrupt.wav")}),
        json.dumps({"id": "empty_text", "text": "   ", "audio": ok}),
        json.dumps({"id": "tag_only", "text": "spk 3: ", "audio": ok}),
        json.dumps({"id": "short", "text": "hello there", "audio": str(bad / "short.wav")}),
        json.dumps({"id": "long", "text": "hello there", "audio": str(bad / "long.wav")}),
        json.dumps({"id": "wordy", "text": "word " * 80, "audio": ok}),
        json.dumps({"id": "good", "text": "Duplicate id.", "audio": ok}),
        json.dumps({"id": "../escape", "text": "hello there", "audio": ok}),
        json.dumps({"id": "a/b", "text": "hello there", "audio": ok}),
        "",
        json.dumps(["a", "list"]),
    ]
    manifest = bad / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    r = run_cli(manifest, out, tiny_models, "--max-duration", "6", "--max-text-len", "40",
                "--strict", check=False)
    assert r.returncode == 1, r.stderr
    rejects = {(x["line"]): x for x in read_lines(out / "rejects.jsonl")}
    expect = {2: ("manifest", "malformed JSON"), 3: ("manifest", "'audio'"),
              4: ("audio", "not found"), 5: ("audio", "corrupt.wav"), 6: ("manifest", "'text'"),
              7: ("text", "empty"), 8: ("limits", "duration"), 9: ("limits", "duration"),
              10: ("limits", "text ids exceed"), 11: ("manifest", "duplicate id"),
              12: ("manifest", "unsafe id"), 13: ("manifest", "unsafe id"),
              15: ("manifest", "JSON object")}
    assert set(rejects) == set(expect)
    for line, (stage, words) in expect.items():
        assert rejects[line]["stage"] == stage, rejects[line]
        assert words in rejects[line]["reason"], rejects[line]
    assert [x["id"] for x in read_lines(out / "train_manifest.jsonl") + read_lines(out / "val_manifest.jsonl")] == ["good"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rejected"] == len(expect)
    assert "13 rejects in all" in r.stdout
    # a rerun neither retries nor duplicates the rejects
    run_cli(manifest, out, tiny_models, "--max-duration", "6", "--max-text-len", "40")
    assert len(read_lines(out / "rejects.jsonl")) == len(expect)


def test_code_limit_rejects(corpus, tiny_models, tmp_path):
    run_cli(corpus, tmp_path, tiny_models, "--max-code-len", "100")
    rejected = {x["id"] for x in read_lines(tmp_path / "rejects.jsonl")}
    assert rejected == {g[0] for g in GOOD if g[4] * 50 > 100}
    assert all("codes exceed" in x["reason"] for x in read_lines(tmp_path / "rejects.jsonl"))


def test_missing_model_file_names_the_flag(corpus, tiny_models, tmp_path):
    r = run_cli(corpus, tmp_path / "o", tiny_models, "--gpt-checkpoint", str(tmp_path / "nope.pth"),
                check=False)
    assert r.returncode == 2
    assert "--gpt-checkpoint" in r.stderr and "nope.pth" in r.stderr
    assert "Traceback" not in r.stderr


def test_verify_catches_planted_corruption(reference_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    lines = read_lines(out / "train_manifest.jsonl")
    a, b, c, d = lines[0], lines[1], lines[2], lines[3]
    codes = out / a["codes_path"]
    codes.write_bytes(codes.read_bytes()[:100])                      # truncated file
    (out / b["condition_path"]).unlink()                             # missing file
    emo = np.load(out / c["emo_vec_path"]); emo[3] = np.nan          # NaN
    np.save(out / c["emo_vec_path"], emo)
    d["text_len"] += 1                                               # length mismatch
    lines.append(dict(lines[4]))                                     # duplicate id
    (out / "train_manifest.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    report = verify_output(out)
    text = report.render()
    assert not report.ok
    assert "unreadable" in text and a["id"] in text
    assert "missing" in text and b["id"] in text
    assert "NaN" in text and c["id"] in text
    assert "text_len" in text and d["id"] in text
    assert "twice" in text
    r = invoke(main, ["verify", out])
    assert r.returncode == 1 and "problem" in r.stdout


def test_worker_crash_becomes_a_reject(corpus, tiny_models, tmp_path, monkeypatch):
    # The CPU worker preparing zh_b_0 exits; the workers are processes of their own (spawned),
    # so the job can run in this one.
    monkeypatch.setenv("PREPROCESS_FAULT", "prepare:zh_b_0")
    run_cli(corpus, tmp_path, tiny_models, "--batch-size", "3")
    rejects = read_lines(tmp_path / "rejects.jsonl")
    assert [(x["id"], x["stage"]) for x in rejects] == [("zh_b_0", "prepare")]
    assert "worker process died" in rejects[0]["reason"]
    done = read_lines(tmp_path / "train_manifest.jsonl") + read_lines(tmp_path / "val_manifest.jsonl")
    assert len(done) == len(GOOD) - 1
