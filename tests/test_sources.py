"""Corpus sources: tar shards, Parquet/Arrow tables and Lhotse manifests read into the records
the pipeline uses; their audio decodes to the loose files' samples, their features are equal."""

import gzip
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from preprocess.audio import AudioError, decode, load_audio, probe_duration, to_16k
from preprocess.frontend import fbank, stack_frames
from preprocess.manifest import AudioRef, ManifestError, Record, Reject, read_manifest
from preprocess.options import JobOptions
from preprocess.plan import make_plan
from preprocess.sources import detect_source, parse_fields, read_source
from preprocess.verify import verify_output

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from repack import add_member, lhotse_recording, repack, write_jsonl_gz  # noqa: E402
from test_pipeline import read_lines, run_cli, write_clip  # noqa: E402

FORMATS = [  # (extension, libsndfile format, subtype, rate)
    ("wav", "WAV", "PCM_16", 16000), ("flac", "FLAC", "PCM_16", 22050),
    ("ogg", "OGG", "VORBIS", 44100), ("opus", "OGG", "OPUS", 48000), ("mp3", "MP3", None, 44100),
]


def tone(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    x = x.astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def member_ref(shard: Path, name: str) -> AudioRef:
    with tarfile.open(shard) as tf:
        m = tf.getmember(name)
    return AudioRef(str(shard), member=name, offset=m.offset_data, size=m.size)


def cpu_features(src) -> np.ndarray:
    """What the CPU stage gives the models for this audio (reference resampling, stacked fbank)."""
    wave, sr = load_audio(src)
    return stack_frames(fbank(to_16k(wave, sr)))


# -- decoding --------------------------------------------------------------------------------

@pytest.mark.parametrize("ext,fmt,subtype,sr", FORMATS, ids=[f[0] for f in FORMATS])
def test_bytes_and_tar_members_decode_like_the_file(tmp_path, ext, fmt, subtype, sr):
    path = tmp_path / f"clip.{ext}"
    sf.write(path, tone(0.6, sr), sr, format=fmt, subtype=subtype)
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tf:
        add_member(tf, "before.txt", b"x" * 700)  # the audio member does not start the archive
        add_member(tf, path.name, path.read_bytes())
    ref = member_ref(shard, path.name)
    assert ref.offset > 512
    from_file, from_bytes, from_member = decode(path), decode(path.read_bytes()), decode(ref)
    assert from_file[1] == from_bytes[1] == from_member[1] == sr
    assert from_file[0].shape[0] > 0.5 * sr
    assert np.array_equal(from_file[0], from_bytes[0]) and np.array_equal(from_file[0], from_member[0])
    assert probe_duration(ref) == probe_duration(path) == pytest.approx(from_file[0].shape[0] / sr)


def test_segments_are_exact_sample_ranges(tmp_path):
    sr = 16000
    pcm = (tone(1.0, sr, channels=2) * 32767).astype(np.int16)
    for ext in ("wav", "flac", "mp3"):
        path = tmp_path / f"rec.{ext}"
        sf.write(path, pcm, sr)
        whole = decode(path)[0]
        seg, got_sr = decode(AudioRef(str(path), start=0.25, duration=0.5))
        assert got_sr == sr and np.array_equal(seg, whole[4000:12000]), ext
        assert probe_duration(AudioRef(str(path), start=0.25, duration=0.5)) == 0.5
    wav = str(tmp_path / "rec.wav")
    right = decode(AudioRef(wav, start=0.25, duration=0.5, channels=(1,)))[0]
    assert right.shape == (8000, 1) and np.array_equal(right[:, 0], decode(wav)[0][4000:12000, 1])
    # an end a little past the recording's (a rounded duration) is cut there; further is an error
    assert probe_duration(AudioRef(wav, start=0.99, duration=0.02)) == pytest.approx(0.01)
    for start, duration in ((0.9, 0.2), (1.0, 0.1), (3.0, 1.0)):
        with pytest.raises(AudioError, match="past the end of its recording"):
            probe_duration(AudioRef(wav, start=start, duration=duration))
        with pytest.raises(AudioError, match="past the end of its recording"):
            decode(AudioRef(wav, start=start, duration=duration))
    with pytest.raises(AudioError, match="channel"):
        decode(AudioRef(wav, channels=(2,)))


# -- a small corpus of loose files, and the same corpus in every source kind ------------------

@pytest.fixture(scope="module")
def loose(tmp_path_factory, arctic_dir):
    """Four clips as loose files and their JSONL manifest: two real 16 kHz recordings, a flac
    at 22.05 kHz and an mp3 at 44.1 kHz."""
    root = tmp_path_factory.mktemp("loose")
    (root / "audio").mkdir()
    rows = []
    for name in ("arctic_a0007", "arctic_a0009"):
        (root / "audio" / f"{name}.wav").write_bytes((arctic_dir / f"{name}.wav").read_bytes())
        rows.append((name, "Author of the danger trail.", "audio/" + name + ".wav"))
    write_clip(root / "audio" / "syn_flac.flac", 22050, 1.2, 3)
    rows.append(("syn_flac", "A clip in flac.", "audio/syn_flac.flac"))
    sf.write(root / "audio" / "syn_mp3.mp3", tone(1.4, 44100, seed=4), 44100)
    rows.append(("syn_mp3", "A clip in mp3.", "audio/syn_mp3.mp3"))
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"id": i, "text": t, "audio": a, "speaker": i[:6],
                                            "language": "en"}) + "\n" for i, t, a in rows))
    return manifest


def loose_audio(manifest: Path) -> dict[str, Path]:
    return {r.id: manifest.parent / r.audio for r in read_manifest(manifest)}


def plan_of(source, **kw):
    opts = JobOptions(manifest=source, output_dir=Path("-"), models=None, tokenizer=Path("-"), **kw)
    return make_plan(opts, set(), set())


def assert_same_audio(records, manifest):
    files = loose_audio(manifest)
    for rec in records:
        ref_wave, ref_sr = load_audio(files[rec.id])
        wave, sr = load_audio(rec.ref)
        assert sr == ref_sr and np.array_equal(wave, ref_wave), rec.id
        assert np.array_equal(cpu_features(rec.ref), cpu_features(files[rec.id])), rec.id


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            add_member(tf, name, data)
    return buf.getvalue()


def bad_shards(root: Path, wav: bytes, repeated_id: str, text_before_damage: bytes) -> None:
    """Shards with what goes wrong in real ones: a corrupt audio member, a sample without text,
    one without audio, a repeated id; a shard whose second header is corrupt (the sample before
    it has `text_before_damage`); a file that is not a tar at all."""
    meta = {"text": "fine", "speaker": "s", "language": "en"}
    (root / "shard-000900.tar").write_bytes(tar_bytes([
        ("bad_audio.flac", b"fLaC" + b"\x13" * 3000), ("bad_audio.json", json.dumps({"id": "bad_audio", **meta}).encode()),
        ("no_text.wav", wav), ("no_text.json", json.dumps({"id": "no_text", "speaker": "s"}).encode()),
        ("no_audio.json", json.dumps({"id": "no_audio", **meta}).encode()),
        ("again.wav", wav), ("again.json", json.dumps({"id": repeated_id, **meta}).encode()),
    ]))
    data = bytearray(tar_bytes([("cut_a.wav", wav), ("cut_a.txt", text_before_damage),
                                ("cut_b.wav", wav), ("cut_b.txt", b"lost")]))
    second = 512 + (len(wav) + 511) // 512 * 512 + 512 + 512  # header of cut_b.wav
    data[second:second + 100] = b"\xff" * 100
    (root / "shard-000901.tar").write_bytes(bytes(data))
    (root / "shard-000902.tar").write_bytes(b"this is not a tar archive" * 40)


def test_tar_shards(tmp_path, loose):
    shards = tmp_path / "shards"
    repack(loose, shards, "tar", per_shard=3)
    wav = (loose.parent / "audio" / "arctic_a0007.wav").read_bytes()
    bad_shards(shards, wav, "arctic_a0007", b"kept before the damage\n")
    assert detect_source(shards) == "tar" and detect_source(shards / "shard-000000.tar") == "tar"
    items = list(read_source(shards))
    records = [i for i in items if isinstance(i, Record)]
    rejects = {i.where.rpartition("/")[2]: i for i in items if isinstance(i, Reject)}
    assert [r.id for r in records] == ["arctic_a0007", "arctic_a0009", "syn_flac", "syn_mp3",
                                       "bad_audio", "cut_a"]
    assert [r.line for r in items] == list(range(1, 12))  # positions in the source, in order
    assert records[0].where.endswith("shard-000000.tar:arctic_a0007.wav")
    assert records[0].audio.endswith("shard-000000.tar:arctic_a0007.wav")
    assert records[-1].text == "kept before the damage"
    assert "missing or empty 'text'" in rejects["shard-000900.tar:no_text.wav"].reason
    assert "no audio member" in rejects["shard-000900.tar:no_audio.json"].reason
    assert "duplicate id (first at " in rejects["shard-000900.tar:again.wav"].reason
    assert "members after it are lost" in rejects["shard-000901.tar"].reason
    assert "cannot read the tar shard" in rejects["shard-000902.tar"].reason
    assert rejects["shard-000902.tar"].to_json()["where"].endswith("shard-000902.tar")
    assert_same_audio(records[:4], loose)
    plan = plan_of(shards)
    assert sorted(w.record.id for w in plan.items) == sorted(r.id for r in records if r.id != "bad_audio")
    planned = {r.id: r for r in plan.rejects}
    assert planned["bad_audio"].stage == "audio" and planned["bad_audio"].where.endswith(
        "shard-000900.tar:bad_audio.flac")
    two = list(read_source([shards / "shard-000001.tar", shards / "shard-000000.tar"]))
    assert [r.id for r in two] == ["syn_mp3", "arctic_a0007", "arctic_a0009", "syn_flac"]
    picked = tmp_path / "two.tar"
    picked.write_bytes(tar_bytes([("u.wav", wav), ("u.flac", wav), ("u.txt", b"two audio members")]))
    assert "several audio members" in next(read_source(picked)).reason
    assert next(read_source(picked, fields={"audio": "wav"})).ref.member == "u.wav"


def test_parquet_and_dataset_folders(tmp_path, loose):
    pq_dir, arrow_dir = tmp_path / "parquet", tmp_path / "arrow"
    repack(loose, pq_dir, "parquet", per_shard=3)
    repack(loose, arrow_dir, "arrow", per_shard=3)
    assert detect_source(pq_dir) == detect_source(arrow_dir) == "parquet"
    assert (arrow_dir / "state.json").is_file()
    for source in (pq_dir, arrow_dir, sorted(pq_dir.glob("*.parquet"))):
        records = list(read_source(source))
        assert [r.id for r in records] == ["arctic_a0007", "arctic_a0009", "syn_flac", "syn_mp3"]
        assert all(isinstance(r, Record) and r.ref.kind == "row" for r in records)
        assert records[3].where.endswith(":row 0") and records[3].audio == "syn_mp3.mp3"
        assert_same_audio(records, loose)
    # another layout: no id column, integer speakers, a renamed text column, broken rows
    wav = (loose.parent / "audio" / "arctic_a0009.wav").read_bytes()
    audio = pa.array([{"bytes": wav, "path": "spk1/first.wav"}, {"bytes": b"RIFF" + b"\0" * 64, "path": "junk.wav"},
                      {"bytes": wav, "path": "no_text.wav"}, {"bytes": None, "path": str(loose.parent / "audio" / "arctic_a0007.wav")},
                      {"bytes": None, "path": None}],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    table = pa.table({"audio": audio, "transcript": ["one", "two", None, "four", "five"],
                      "speaker_id": [7, 7, 8, 9, 9]})
    odd = tmp_path / "odd.parquet"
    pq.write_table(table, odd, row_group_size=2)
    items = list(read_source(odd, fields=parse_fields(["text=transcript", "speaker=speaker_id"])))
    assert [i.id for i in items] == ["first", "junk", "no_text", "arctic_a0007", None]
    assert items[0].speaker == "7" and items[0].text == "one" and items[0].where.endswith("odd.parquet:row 0")
    assert isinstance(items[2], Reject) and "'text'" in items[2].reason
    assert items[3].ref.kind == "file" and Path(items[3].ref.path).is_file()
    assert isinstance(items[4], Reject) and "neither audio bytes nor an audio path" in items[4].reason
    planned = {r.id: r for r in plan_of(odd, fields=(("text", "transcript"),)).rejects}
    assert planned["junk"].stage == "audio" and planned["junk"].where.endswith("odd.parquet:row 1")
    missing = list(read_source(odd, fields={"audio": "sound"}))
    assert len(missing) == 5 and all("no column 'sound'" in r.reason for r in missing)
    with pytest.raises(ValueError, match="NAME=KEY"):
        parse_fields(["transcript"])


def test_lhotse_recordings_supervisions_and_cuts(tmp_path, loose):
    a, sr = sf.read(loose.parent / "audio" / "arctic_a0007.wav", dtype="int16")
    b, _ = sf.read(loose.parent / "audio" / "arctic_a0009.wav", dtype="int16")
    long = tmp_path / "audio" / "long.flac"  # one recording holding both utterances
    long.parent.mkdir()
    sf.write(long, np.concatenate([a, b]), sr, subtype="PCM_16")
    rec = lhotse_recording("long", long)
    rec["sources"][0]["source"] = "audio/long.flac"  # relative to the manifest's folder
    sups = [
        {"id": "arctic_a0007", "recording_id": "long", "start": 0.0, "duration": len(a) / sr,
         "channel": 0, "text": "first", "speaker": "awb", "language": "en"},
        {"id": "arctic_a0009", "recording_id": "long", "start": len(a) / sr, "duration": len(b) / sr,
         "channel": 0, "text": "second", "custom": {"normalized": "SECOND"}},
        {"id": "past_end", "recording_id": "long", "start": (len(a) + len(b)) / sr - 0.5,
         "duration": 1.0, "channel": 0, "text": "too long"},
        {"id": "no_text", "recording_id": "long", "start": 0.0, "duration": 1.0, "channel": 0},
        {"id": "orphan", "recording_id": "absent", "start": 0.0, "duration": 1.0, "text": "x"},
    ]
    folder = tmp_path / "lhotse"
    folder.mkdir()
    write_jsonl_gz(tmp_path / "lhotse_recordings_all.jsonl.gz", [rec])
    write_jsonl_gz(tmp_path / "lhotse_supervisions_all.jsonl.gz", sups)
    assert detect_source(tmp_path / "lhotse_recordings_all.jsonl.gz") == "lhotse"
    items = list(read_source(tmp_path / "lhotse_supervisions_all.jsonl.gz"))
    assert [i.id for i in items] == ["arctic_a0007", "arctic_a0009", "past_end", "no_text", "orphan"]
    assert items[1].ref.start == pytest.approx(len(a) / sr) and items[1].where.endswith(
        "lhotse_supervisions_all.jsonl.gz:2")
    assert "'text'" in items[3].reason and "'absent' is not in" in items[4].reason
    assert_same_audio(items[:2], loose)
    mapped = list(read_source(tmp_path / "lhotse_supervisions_all.jsonl.gz", fields={"text": "custom.normalized"}))
    assert mapped[1].text == "SECOND"
    planned = {r.id: r for r in plan_of(tmp_path / "lhotse_recordings_all.jsonl.gz").rejects}
    assert planned["past_end"].stage == "audio" and "past the end of its recording" in planned["past_end"].reason
    # the same as cuts: one MonoCut with both supervisions (relative to the cut), one mixed cut
    cut = {"id": "c1", "start": 0.5, "duration": (len(a) + len(b)) / sr - 0.5, "channel": 0,
           "recording": rec, "type": "MonoCut",
           "supervisions": [{**sups[0], "start": -0.5}, {**sups[1], "start": len(a) / sr - 0.5}]}
    whole = {**cut, "id": "c2", "start": 0.0, "duration": (len(a) + len(b)) / sr,
             "supervisions": [{**sups[0], "id": "a7"}, {**sups[1], "id": "a9"}]}
    write_jsonl_gz(folder / "cuts_train.jsonl.gz", [cut, whole, {"id": "m", "type": "MixedCut", "tracks": []}])
    (folder / "audio").mkdir()
    (folder / "audio" / "long.flac").write_bytes(long.read_bytes())
    assert detect_source(folder) == "lhotse"
    items = list(read_source(folder))
    assert [i.id for i in items] == ["arctic_a0007", "arctic_a0009", "a7", "a9", "m"]
    assert isinstance(items[0], Reject) and "reaches outside its cut" in items[0].reason
    assert items[1].ref.start == pytest.approx(len(a) / sr) and items[1].where.endswith(":1 supervision 1")
    assert "MixedCut cuts are not supported" in items[4].reason
    files = loose_audio(loose)
    for rec_, name in ((items[1], "arctic_a0009"), (items[2], "arctic_a0007"), (items[3], "arctic_a0009")):
        assert np.array_equal(load_audio(rec_.ref)[0], load_audio(files[name])[0])


def test_detection_and_existing_manifests(tmp_path, loose):
    assert detect_source(loose) == "jsonl"
    gz = tmp_path / "m.jsonl.gz"
    gz.write_bytes(gzip.compress(loose.read_bytes().replace(b'"text"', b'"sentence"')))
    assert detect_source(gz) == "jsonl"
    (tmp_path / "audio").symlink_to(loose.parent / "audio")
    items = list(read_source(gz, fields={"text": "sentence"}))
    assert [i.text for i in items] == [r.text for r in read_manifest(loose)]
    assert all(i.ref is None and i.where == "" for i in items)
    csv = tmp_path / "m.csv"
    csv.write_text("utt,text,audio\nx,hello,audio/syn_flac.flac\nx,again,audio/syn_flac.flac\n")
    items = list(read_source(csv, fields={"id": "utt"}))
    assert items[0].id == "x" and items[1].reason == "duplicate id (first on line 2)"
    assert items[1].to_json() == {"line": 3, "id": "x", "stage": "manifest",
                                  "reason": "duplicate id (first on line 2)"}
    with pytest.raises(ManifestError, match="different kinds"):
        detect_source([loose, csv])
    with pytest.raises(ManifestError, match="no known source kind"):
        detect_source(tmp_path / "audio")
    with pytest.raises(ManifestError, match="not found"):
        detect_source(tmp_path / "absent.tar")


# -- end to end: the same features as the loose-file run --------------------------------------

@pytest.mark.parametrize("kind", ["tar", "parquet", "lhotse"])
def test_sources_give_the_loose_run_features(kind, sample_corpus, reference_run, tiny_models, tmp_path):
    source = tmp_path / kind
    repack(sample_corpus, source, kind, per_shard=3)
    if kind == "tar":
        # no record is added: the batches, hence the latents' bytes, stay the loose run's
        bad_shards(source, (sample_corpus.parent / "wav" / "en_a_0.wav").read_bytes(), "en_a_0", b" ")
    out = tmp_path / "out"
    run_cli(source, out, tiny_models, "--batch-size", "3")
    ref = {x["id"]: x for n in ("train_manifest.jsonl", "val_manifest.jsonl") for x in read_lines(reference_run / n)}
    got = {x["id"]: x for n in ("train_manifest.jsonl", "val_manifest.jsonl") for x in read_lines(out / n)}
    assert got.keys() == ref.keys()
    for id_, line in ref.items():
        assert {k: v for k, v in got[id_].items() if k != "audio_path"} == \
            {k: v for k, v in line.items() if k != "audio_path"}, id_
        for key in ("text_ids_path", "codes_path", "condition_path", "emo_vec_path"):
            assert (out / got[id_][key]).read_bytes() == (reference_run / line[key]).read_bytes(), (id_, key)
    assert verify_output(out).ok
    rejects = read_lines(out / "rejects.jsonl")
    if kind == "tar":
        assert {r["id"] for r in rejects} == {"bad_audio", "no_text", "no_audio", "cut_a", None, "en_a_0"}
        assert all(r["where"] for r in rejects)
        again = run_cli(source, out, tiny_models, "--batch-size", "3")  # resume: nothing left to do
        assert "8 already done were skipped and 0 were rejected" in again.stdout
        assert read_lines(out / "rejects.jsonl") == rejects
    else:
        assert rejects == []


def test_examples_of_each_kind_parse():
    examples = Path(__file__).resolve().parents[1] / "manifests"
    cuts = list(read_source(examples / "example_lhotse_cuts.jsonl"))
    assert [r.id for r in cuts] == ["book01_chapter01_0001"]
    assert (cuts[0].ref.start, cuts[0].ref.duration) == (0.52, 3.18)
    pairs = list(read_source(examples / "example_lhotse_recordings.jsonl"))
    assert [r.id for r in pairs] == ["book01_chapter01_0001", "book01_chapter01_0002"]
    assert pairs[1].ref.start == 4.1 and pairs[1].ref.path.endswith("audio/book01_chapter01.flac")
    sample = json.loads((examples / "example_webdataset_sample.json").read_text())
    assert {"id", "text", "speaker", "language", "duration"} <= sample.keys()
