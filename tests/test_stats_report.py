import json

import pytest

from preprocess.stats_report import dataset_stats, format_table, write_stats_report
from preprocess.store.dataset import MANIFESTS, dumps_line, manifest_line
from preprocess.store.npy import relative_paths


def _line(id_, speaker, language, duration, text_len, code_len, packed, audio_duration=None):
    base = {"id": id_, "audio_path": f"{id_}.wav", "text": "x", "speaker": speaker,
            "language": language, "duration": duration}
    location = {"row": 0} if packed else relative_paths(id_)
    extras = {} if audio_duration is None else {"audio_duration": audio_duration}
    return dumps_line(manifest_line(base, text_len, code_len, location, extras))


@pytest.fixture(params=["npy", "packed"])
def out_dir(request, tmp_path):
    packed = request.param == "packed"
    train = [
        _line("a", "spkA", "en", 9.0, 10, 100, packed, audio_duration=2.0),  # measured wins
        _line("b", "spkA", "en", 4.0, 20, 200, packed),                      # input duration
        _line("c", "spkB", "fr", None, 30, 150, packed),                     # code_len / 50
    ]
    val = [_line("d", "spkC", "ja", None, 40, 50, packed, audio_duration=1.0)]
    (tmp_path / MANIFESTS["train"]).write_text("".join(train) + '{"id": "torn', encoding="utf-8")
    (tmp_path / MANIFESTS["val"]).write_text("".join(val), encoding="utf-8")
    return tmp_path


def test_numbers_on_a_hand_made_case(out_dir):
    stats = dataset_stats(out_dir)
    h = 1 / 3600
    assert stats["splits"]["train"]["utterances"] == 3
    assert stats["splits"]["train"]["hours"] == pytest.approx(9 * h)
    assert stats["splits"]["val"]["hours"] == pytest.approx(1 * h)
    assert stats["total"] == {"utterances": 4, "hours": pytest.approx(10 * h)}
    assert list(stats["languages"]) == ["en", "fr", "ja"]  # by hours, descending
    assert stats["languages"]["en"] == {"utterances": 2, "hours": pytest.approx(6 * h)}
    assert stats["speakers"]["spkB"]["hours"] == pytest.approx(3 * h)
    assert stats["num_speakers"] == 3
    # durations [2, 4, 3, 1]: numpy linear percentiles
    assert stats["duration_seconds"] == pytest.approx(
        {"count": 4, "min": 1.0, "max": 4.0, "mean": 2.5, "p50": 2.5, "p90": 3.7, "p99": 3.97})
    assert stats["text_len"] == pytest.approx(
        {"count": 4, "min": 10, "max": 40, "mean": 25, "p50": 25, "p90": 37, "p99": 39.7})
    assert stats["code_len"]["p50"] == pytest.approx(125.0)
    assert stats["duration_sources"] == {"audio_duration": 2, "duration": 1, "code_len": 1,
                                         "none": 0}
    assert stats["dropped_lines"] == {"train": 1, "val": 0}


def test_table_json_and_png(out_dir, tmp_path):
    text = format_table(dataset_stats(out_dir))
    assert "total" in text and "fr" in text and "p99" in text and "3.97" in text
    json_path, png_path = tmp_path / "stats_report.json", tmp_path / "stats.png"
    stats = write_stats_report(out_dir, json_path, png_path)
    assert json.loads(json_path.read_text())["total"]["utterances"] == stats["total"]["utterances"]
    data = png_path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_empty_directory(tmp_path):
    stats = dataset_stats(tmp_path)
    assert stats["total"]["utterances"] == 0 and stats["duration_seconds"]["p50"] is None
    assert "total" in format_table(stats)
    write_stats_report(tmp_path, tmp_path / "s.json", tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 0
