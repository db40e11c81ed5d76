import json
from pathlib import Path

import pytest

from preprocess.manifest import (ManifestError, Record, Reject, is_val, read_manifest,
                                 read_output_manifest, resolve_audio, split_fraction)

EXAMPLES = Path(__file__).resolve().parents[1] / "manifests"


def test_examples_parse():
    jsonl = list(read_manifest(EXAMPLES / "example.jsonl"))
    csv = list(read_manifest(EXAMPLES / "example.csv"))
    assert all(isinstance(r, Record) for r in jsonl + csv)
    assert [r.id for r in csv] == [r.id for r in jsonl[:2]]
    assert csv[1].text == jsonl[1].text and csv[1].duration == 3.1
    assert jsonl[2].line == 3 and csv[1].line == 3


def test_split_rule_matches_sha1_definition():
    import hashlib
    for i in range(200):
        id_ = f"utt_{i}"
        v = int(hashlib.sha1(id_.encode()).hexdigest(), 16) % 1_000_000
        assert is_val(id_, 0.05) == (v / 1_000_000 < 0.05)
    assert not is_val("x", 0) and is_val("x", 1)
    assert 0 <= split_fraction("x") < 1
    frac = sum(is_val(f"u{i}", 0.1) for i in range(5000)) / 5000
    assert 0.08 < frac < 0.12


def test_bad_lines(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_bytes(b'{"id": "a", "text": "t", "audio": "a.wav"}\n\n{"id": 5, "text": "t", "audio": "x"}\n'
                  b'\xff\xfe\n{"id": "b", "text": "t", "audio": "b.wav", "duration": "long"}\n'
                  b'{"id": "a", "text": "t", "audio": "a.wav"}\n{"id": " c", "text": "t", "audio": "c"}\n')
    items = list(read_manifest(m))
    assert isinstance(items[0], Record)
    reasons = {r.line: r.reason for r in items if isinstance(r, Reject)}
    assert set(reasons) == {3, 4, 5, 6, 7}
    assert "id" in reasons[3] and "UTF-8" in reasons[4] and "duration" in reasons[5]
    assert "duplicate" in reasons[6] and "whitespace" in reasons[7]
    with pytest.raises(ManifestError):
        list(read_manifest(tmp_path / "absent.jsonl"))
    bad_csv = tmp_path / "m.csv"
    bad_csv.write_text("name,text\nx,y\n")
    with pytest.raises(ManifestError, match="audio"):
        list(read_manifest(bad_csv))


def test_resolve_audio_prefers_manifest_dir(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.wav").write_bytes(b"x")
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "a.wav").write_bytes(b"y")
    (tmp_path / "cwd" / "b.wav").write_bytes(b"y")
    monkeypatch.chdir(tmp_path / "cwd")
    assert resolve_audio("a.wav", tmp_path / "m") == tmp_path / "m" / "a.wav"
    assert resolve_audio("b.wav", tmp_path / "m").resolve() == (tmp_path / "cwd" / "b.wav").resolve()
    assert resolve_audio("c.wav", tmp_path / "m") is None


def test_torn_last_line_is_dropped(tmp_path):
    p = tmp_path / "train_manifest.jsonl"
    p.write_text(json.dumps({"id": "a"}) + "\n" + '{"id": "b", "te')
    lines, torn = read_output_manifest(p)
    assert [x["id"] for x in lines] == ["a"] and torn == 1
