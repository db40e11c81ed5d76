import json
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from preprocess.manifest import read_output_manifest
from preprocess.pairs import (PAIR_KEYS, ManifestPairs, PairError, _LineFormatter, _Options,
                              _sample_positions, build_pairs, check_pairs_for_trainer,
                              generate_pairs, group_by_speaker, pair_record,
                              read_pairing_records)
from preprocess.store.dataset import MANIFESTS, dumps_line, manifest_line
from preprocess.store.npy import NpyWriter, UtteranceFeatures, relative_paths

# contract §10 "Pair record", in order
CONTRACT_KEYS = [
    "id", "speaker", "prompt_id", "prompt_audio_path", "prompt_condition_path",
    "prompt_condition_len", "prompt_emo_vec_path", "prompt_duration", "target_id",
    "target_audio_path", "target_text", "target_text_ids_path", "target_text_len",
    "target_codes_path", "target_code_len", "target_emo_vec_path",
]


def _base(id_, speaker, duration=1.0):
    return {"id": id_, "audio_path": f"wavs/{id_}.wav", "text": f"text of {id_}",
            "speaker": speaker, "language": "en", "duration": duration}


def make_out_dir(root: Path, spec: dict, seed=0) -> Path:
    """spec: split -> list of (id, speaker); real .npy files through NpyWriter, real manifest
    lines through manifest_line."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    store = NpyWriter(root)
    for split, utts in spec.items():
        feats, lines = [], []
        for id_, speaker in utts:
            text_len, code_len = int(rng.integers(1, 20)), int(rng.integers(5, 60))
            feats.append(UtteranceFeatures(
                id_, rng.integers(2, 100, text_len).astype(np.int32),
                rng.integers(0, 8192, code_len).astype(np.int32),
                rng.standard_normal((32, 1280)).astype(np.float32),
                rng.standard_normal(1280).astype(np.float32)))
            lines.append((_base(id_, speaker), text_len, code_len))
        locations = store.write(feats)
        text = "".join(dumps_line(manifest_line(b, t, c, loc, {"audio_duration": 1.01}))
                       for (b, t, c), loc in zip(lines, locations))
        (root / MANIFESTS[split]).write_text(text, encoding="utf-8")
    return root


SPEC = {
    "train": [(f"a{i}", "spkA") for i in range(5)] + [(f"b{i}", "spkB") for i in range(3)]
    + [("c0", "spkC")] + [(f"a{i}", "spkA") for i in range(5, 7)],
    "val": [("v0", "spkA"), ("v1", "spkA"), ("v2", "spkD")],
}


def read_pairs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def out_dir(tmp_path):
    return make_out_dir(tmp_path / "ds", SPEC)


def test_pairs_layout_and_rules(out_dir):
    report = build_pairs([out_dir])
    train = read_pairs(out_dir / "gpt_pairs_train.jsonl")
    val = read_pairs(out_dir / "gpt_pairs_val.jsonl")
    assert list(PAIR_KEYS) == CONTRACT_KEYS
    speaker = {i: s for split in SPEC.values() for i, s in split}
    train_ids = {i for i, _ in SPEC["train"]}
    val_ids = {i for i, _ in SPEC["val"]}
    for pairs, ids in ((train, train_ids), (val, val_ids)):
        assert pairs
        for p in pairs:
            assert list(p) == CONTRACT_KEYS
            assert p["id"] == f"{p['target_id']}__{p['prompt_id']}"
            assert {p["target_id"], p["prompt_id"]} <= ids
            assert p["target_id"] != p["prompt_id"]
            assert speaker[p["target_id"]] == speaker[p["prompt_id"]] == p["speaker"]
            assert p["prompt_condition_len"] == 32
            assert p["prompt_duration"] == 1.0
            assert p["prompt_condition_path"] == relative_paths(p["prompt_id"])["condition_path"]
            assert p["target_codes_path"] == relative_paths(p["target_id"])["codes_path"]
    # every target of a 2+ speaker gets min(2, n-1) distinct prompts; spkC (1 utterance) none
    per_target = Counter(p["target_id"] for p in train)
    assert per_target == {i: 2 for i, s in SPEC["train"] if s != "spkC"}
    assert all(len({p["prompt_id"] for p in train if p["target_id"] == t}) == 2
               for t in per_target)
    assert Counter(p["target_id"] for p in val) == {"v0": 1, "v1": 1}
    train_entry, val_entry = report.manifests
    assert (train_entry.valid_records, train_entry.pairs_written) == (11, 20)
    assert train_entry.single_utterance_speakers == 1
    assert train_entry.single_utterance_speaker_names == ["spkC"]
    assert val_entry.single_utterance_speaker_names == ["spkD"]
    assert report.total_pairs == 22
    assert check_pairs_for_trainer(out_dir / "gpt_pairs_train.jsonl", vocab_size=100) == []
    assert check_pairs_for_trainer(out_dir / "gpt_pairs_val.jsonl") == []
    doc = json.loads((out_dir / "report.json").read_text())
    assert list(doc["manifests"][0])[:6] == ["path", "total_lines", "blank_lines",
                                             "valid_records", "skipped_records", "errors"]
    assert doc["manifests"][0]["pairs_written"] == 20


def test_deterministic_per_seed_and_force(out_dir, tmp_path):
    build_pairs([out_dir])
    first = (out_dir / "gpt_pairs_train.jsonl").read_bytes()
    with pytest.raises(PairError, match="force"):
        build_pairs([out_dir])
    build_pairs([out_dir], force=True)
    assert (out_dir / "gpt_pairs_train.jsonl").read_bytes() == first
    build_pairs([out_dir], force=True, seed=7)
    assert (out_dir / "gpt_pairs_train.jsonl").read_bytes() != first


def test_pairs_per_target_and_max_pairs(out_dir):
    build_pairs([out_dir], pairs_per_target=3)
    train = read_pairs(out_dir / "gpt_pairs_train.jsonl")
    per_target = Counter(p["target_id"] for p in train)
    assert all(per_target[i] == (3 if s == "spkA" else 2)  # spkB has only 2 others
               for i, s in SPEC["train"] if s != "spkC")
    report = build_pairs([out_dir], max_pairs=5, force=True)
    assert len(read_pairs(out_dir / "gpt_pairs_train.jsonl")) == 5
    assert len(read_pairs(out_dir / "gpt_pairs_val.jsonl")) == 2
    assert [m.pairs_written for m in report.manifests] == [5, 2]


def test_length_filters_apply_to_targets_only(out_dir):
    records, _ = read_output_manifest(out_dir / MANIFESTS["train"])
    long_text = {r["id"] for r in records if r["text_len"] >= 10}
    report = build_pairs([out_dir], min_text_len=10)
    train = read_pairs(out_dir / "gpt_pairs_train.jsonl")
    assert {p["target_id"] for p in train} <= long_text
    assert any(p["prompt_id"] not in long_text for p in train)  # prompts are not filtered
    assert report.manifests[0].targets_filtered == sum(
        1 for r in records if r["id"] not in long_text and r["speaker"] != "spkC")


def test_empty_val_warns_and_no_file(tmp_path):
    out = make_out_dir(tmp_path / "ds", {"train": SPEC["train"], "val": [("v2", "spkD")]})
    report = build_pairs([out])
    assert (out / "gpt_pairs_train.jsonl").exists()
    assert not (out / "gpt_pairs_val.jsonl").exists()
    assert any("no pairs" in w and "val_manifest" in w for w in report.warnings)


def test_trainer_check_catches_planted_problems(out_dir):
    build_pairs([out_dir])
    pair_file = out_dir / "gpt_pairs_train.jsonl"
    pairs = read_pairs(pair_file)
    pairs[0]["target_code_len"] += 1
    pair_file.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    problems = check_pairs_for_trainer(pair_file)
    assert len(problems) == 1 and "holds" in problems[0] and "line 1 " in problems[0]
    (out_dir / pairs[3]["prompt_condition_path"]).unlink()
    problems = check_pairs_for_trainer(pair_file)
    assert any("missing file" in p and "condition" in p for p in problems)
    pairs[0]["target_code_len"] -= 1
    pairs[1]["prompt_emo_vec_path"] = ""
    pairs[1]["target_emo_vec_path"] = ""
    pair_file.write_text("".join(json.dumps(p) + "\n" for p in pairs[:2]))
    assert any("neither" in p for p in check_pairs_for_trainer(pair_file))
    # a wrong condition shape, and codes out of range
    bad = out_dir / "bad.npy"
    np.save(bad, np.zeros((31, 1280), np.float32))
    pairs[1]["prompt_emo_vec_path"] = pairs[0]["prompt_emo_vec_path"]
    pairs[1]["prompt_condition_path"] = "bad.npy"
    pair_file.write_text(json.dumps(pairs[1]) + "\n")
    assert "expected [32, 1280]" in " ".join(check_pairs_for_trainer(pair_file))
    pair_file.write_text(json.dumps(dict(pairs[1], prompt_condition_len=16)) + "\n")
    assert "prompt_condition_len 16" in " ".join(check_pairs_for_trainer(pair_file))
    np.save(bad, np.full(pairs[0]["target_code_len"], 8192, np.int32))
    pairs[0]["target_codes_path"] = str(bad)  # absolute paths are used as they are
    pair_file.write_text(json.dumps(pairs[0]) + "\n")
    assert "values in [8192, 8192]" in " ".join(check_pairs_for_trainer(pair_file))


def test_torn_last_line_and_bad_records_are_reported(out_dir):
    path = out_dir / MANIFESTS["train"]
    records, _ = read_output_manifest(path)
    broken = dict(records[1])
    del broken["codes_path"]
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    lines.insert(2, json.dumps(broken))
    path.write_text("\n".join(lines) + "\n\n" + lines[0][:40], encoding="utf-8")
    report = build_pairs([out_dir])
    entry = report.manifests[0]
    assert (entry.total_lines, entry.blank_lines) == (len(lines) + 2, 1)
    assert (entry.valid_records, entry.skipped_records) == (len(records), 2)
    assert [e["line"] for e in entry.errors] == [3, len(lines) + 2]
    assert "codes_path" in entry.errors[0]["error"]
    assert entry.errors[1]["error"].startswith("malformed JSON")
    assert entry.errors[1]["column"] is not None and entry.errors[1]["snippet"]
    # the same lines as read_output_manifest drops (torn) or keeps (the rest)
    kept, dropped = read_output_manifest(path)
    assert dropped == 1 and len(kept) == len(records) + 1
    ids = {p["target_id"] for p in read_pairs(out_dir / "gpt_pairs_train.jsonl")}
    assert ids == {r["id"] for r in records if r["speaker"] != "spkC"}


def test_packed_layout_is_refused(tmp_path):
    out = tmp_path / "packed"
    out.mkdir()
    lines = [manifest_line(_base(f"p{i}", "s"), 3, 10, {"row": i}, {}) for i in range(3)]
    assert "codes_path" not in lines[0] and lines[0]["row"] == 0
    (out / MANIFESTS["train"]).write_text("".join(map(dumps_line, lines)))
    with pytest.raises(PairError, match="preprocess export .* --to npy"):
        build_pairs([out])
    assert not (out / "gpt_pairs_train.jsonl").exists()


def test_not_an_output_dir(tmp_path):
    with pytest.raises(PairError, match="neither"):
        build_pairs([tmp_path])


def _write_manifest_only(path: Path, rows: list[dict]) -> None:
    lines = []
    for r in rows:
        loc = relative_paths(r["id"])
        lines.append(dumps_line(manifest_line(r, r.pop("text_len", 5), r.pop("code_len", 50),
                                              loc, r.pop("extras", {}))))
    path.write_text("".join(lines), encoding="utf-8")


def test_speaker_regex_and_prompt_duration(tmp_path):
    out = tmp_path / "rx"
    out.mkdir()
    rows = [dict(_base(f"u{i}", "", None), audio_path=f"x/{spk}_{i:03d}.flac",
                 extras={"audio_duration": 2.5})
            for i, spk in enumerate(["JA_kim", "JA_kim", "JA_lee", "JA_lee", "nospk"])]
    _write_manifest_only(out / MANIFESTS["train"], rows)
    report = build_pairs([out], speaker_regex=r"^JA_([^_]+)_")
    pairs = read_pairs(out / "gpt_pairs_train.jsonl")
    assert {p["speaker"] for p in pairs} == {"kim", "lee"}
    assert all(p["prompt_duration"] == 2.5 for p in pairs)  # duration null: the measured one
    assert report.manifests[0].records_without_speaker == 1
    assert any("without a speaker" in w for w in report.warnings)
    # without a regex nobody has a speaker: no pairs, a warning, no crash
    report = build_pairs([out], force=True)
    assert report.total_pairs == 0 and report.manifests[0].records_without_speaker == 5


class CountingRandom(random.Random):
    draws = 0

    def _randbelow(self, n):  # every shuffle step and randrange goes through here
        self.draws += 1
        return super()._randbelow(n)


def test_large_speaker_is_linear(tmp_path):
    out = tmp_path / "big"
    out.mkdir()
    n = 20_000
    _write_manifest_only(out / MANIFESTS["train"], [_base(f"utt{i:06d}", "one") for i in range(n)])
    entry = ManifestPairs("x")
    records = read_pairing_records(out / MANIFESTS["train"], entry)
    opts = _Options(2, 0, 1, 1, 600, 1816, None, "linear")
    rng = CountingRandom(0)
    start = time.perf_counter()
    pairs = list(generate_pairs(rng, group_by_speaker(records, opts, entry), opts))
    elapsed = time.perf_counter() - start
    # one shuffle of the speaker, then k draws per target; the reference needs n - 2 per target
    # (4e8 draws here, minutes)
    assert rng.draws == (n - 1) + 2 * n
    assert len(pairs) == 2 * n
    assert elapsed < 2.0, elapsed  # about 0.15 s on an idle core
    assert all(p is not t and p["id"] != t["id"] for _, p, t in pairs)
    assert all(pairs[i][2] is pairs[i + 1][2] and pairs[i][1] is not pairs[i + 1][1]
               for i in range(0, 2 * n, 2))


def test_fast_lines_equal_json_dumps():
    odd = 'quote" back\\ tab\t nl\n ctrl\x01 uni é 漢 \u2028'
    prompt = dict(_base("p" + odd, "s"), condition_path="c/p.npy", emo_vec_path="e/p.npy",
                  text_ids_path="t/p.npy", codes_path="k/p.npy", text_len=3, code_len=9,
                  condition_len=32, duration=None, audio_duration=1.5)
    target = dict(_base("t" + odd, "s"), text=odd, condition_path="c/t.npy",
                  emo_vec_path="e/t.npy", text_ids_path="t/t.npy", codes_path="k/t.npy",
                  text_len=4, code_len=10, condition_len=32)
    line = _LineFormatter()
    for _ in range(2):  # the second call uses the cached pieces
        assert line("spk" + odd, prompt, target) == json.dumps(
            pair_record("spk" + odd, prompt, target), ensure_ascii=False) + "\n"


def test_partial_shuffle_is_uniform():
    rng = random.Random(1)
    counts = Counter(tuple(_sample_positions(rng, 5, 2)) for _ in range(20_000))
    assert len(counts) == 20  # every ordered pair of distinct positions, nothing else
    assert all(len(set(k)) == 2 for k in counts)
    assert max(abs(c - 1000) for c in counts.values()) < 130  # > 4 sigma margin


def _reference_pairs(records: list[dict], rng: random.Random, k: int) -> list[tuple[str, str]]:
    """The contract's description of the reference pairing, written out plainly."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["speaker"], []).append(r)
    out = []
    for items in groups.values():
        if len(items) < 2:
            continue
        rng.shuffle(items)
        for target in items:
            others = [r for r in items if r["id"] != target["id"]]
            rng.shuffle(others)
            out += [(target["id"], p["id"]) for p in others[:k]]
    return out


def test_reference_selection_matches_reference_stream(tmp_path):
    dirs = []
    for d in range(2):
        out = tmp_path / f"d{d}"
        out.mkdir()
        for split in ("train", "val"):
            rows = [_base(f"{split}{d}_{i}", f"s{i % 3}") for i in range(7 + d)]
            _write_manifest_only(out / MANIFESTS[split], rows)
        dirs.append(out)
    build_pairs(dirs, selection="reference", pairs_per_target=2, seed=11)
    rng = random.Random(11)  # one stream: d0 train, d0 val, d1 train, d1 val
    for out in dirs:
        for split in ("train", "val"):
            records, _ = read_output_manifest(out / MANIFESTS[split])
            expected = _reference_pairs(records, rng, 2)
            got = [(p["target_id"], p["prompt_id"])
                   for p in read_pairs(out / f"gpt_pairs_{split}.jsonl")]
            assert got == expected
    # the linear selection: same rules, other draws
    build_pairs(dirs, pairs_per_target=2, seed=11, force=True)
    linear = read_pairs(dirs[0] / "gpt_pairs_train.jsonl")
    assert len(linear) == 10  # s0: 3 targets x 2, s1 and s2: 2 targets x 1


def test_trainer_check_flags_cli_separators_in_the_path(out_dir, tmp_path):
    build_pairs([out_dir])
    odd = tmp_path / "lang=en"
    odd.mkdir()
    (odd / "pairs.jsonl").write_bytes((out_dir / "gpt_pairs_val.jsonl").read_bytes())
    problems = check_pairs_for_trainer(odd / "pairs.jsonl")
    assert any("'='" in p for p in problems)
