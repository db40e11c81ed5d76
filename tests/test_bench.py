"""tools/bench.py on tiny checkpoints: the JSON it prints has the documented fields, consistent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench  # noqa: E402
import benchlib  # noqa: E402


@pytest.fixture(scope="module")
def report(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--models", str(tiny_models), "--generate", "3", "--min-seconds", "1", "--max-seconds", "2.5",
            "--batch-size", "2", "--workers", "1", "--threads", "1", "--mode", "both",
            "--precision-compare", "bf16", "--out", str(out)]
    return bench.main(argv), out


def test_prints_one_json_object(tiny_models, tmp_path, capsys):
    argv = ["--models", str(tiny_models), "--generate", "1", "--min-seconds", "1", "--max-seconds", "1.5",
            "--workers", "1", "--threads", "1", "--mode", "model-only", "--out", str(tmp_path)]
    returned = bench.main(argv)
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(returned))
    assert printed["model_only"]["batches"] == 1 and "end_to_end" not in printed


def test_corpus_and_end_to_end(report):
    r, out = report
    lines = [json.loads(x) for x in (out / "corpus" / "manifest.jsonl").read_text().splitlines()]
    seconds = sum(sf.info(out / "corpus" / x["audio"]).duration for x in lines)
    rates = {sf.info(out / "corpus" / x["audio"]).samplerate for x in lines}
    assert len(lines) == 3 and rates == {16000, 22050, 24000}
    assert r["corpus"]["utterances"] == 3
    assert r["corpus"]["audio_seconds"] == pytest.approx(seconds, abs=1e-3)
    assert 1.0 <= r["corpus"]["min_seconds"] <= r["corpus"]["max_seconds"] <= 2.5

    e = r["end_to_end"]
    assert e["utterances"] == 3 and e["rejected"] == 0
    assert e["audio_seconds"] == pytest.approx(seconds, abs=1e-3)
    assert e["audio_seconds_per_second"] == pytest.approx(e["audio_seconds"] / e["wall_seconds"], rel=1e-3)
    assert e["utterances_per_second"] == pytest.approx(3 / e["wall_seconds"], rel=1e-3)
    # batch size 2 over three different lengths: the second item of the first batch is padded
    assert e["batches"] == 2 and len(e["batch_seconds"]) == 2
    assert 0 < e["padding_efficiency"] < 1
    parts = e["warmup_seconds"] + e["window_seconds"] + e["tail_seconds"]
    assert parts == pytest.approx(e["wall_seconds"], abs=2e-3)
    assert 0 < e["device_busy_fraction"] <= 1.0 + 1e-6
    assert e["model_seconds"] <= e["device_seconds"] + 1e-3
    assert {"hash_inputs", "plan", "load_models", "device", "write"} <= set(e["stage_seconds"])
    assert e["peak_rss_mib"]["main"] > 100 and e["peak_rss_mib"]["tree_sampled"] > 100
    assert e["peak_device_memory_mib"] is None  # CPU
    assert e["read_back"]["utterances_read"] == 3


def test_model_only_matches_and_machine(report):
    r, _ = report
    e, m = r["end_to_end"], r["model_only"]
    assert r["same_batches"] and m["batch_shapes"] == e["batch_shapes"]
    # the same padding, counted by the pipeline and by the bench from its own tensors
    assert m["padding_efficiency"] == pytest.approx(e["padding_efficiency"])
    assert m["audio_seconds"] == pytest.approx(e["audio_seconds"], abs=1e-3)
    assert m["audio_seconds_per_second"] == pytest.approx(m["audio_seconds"] / m["model_seconds"], rel=1e-2)
    assert r["pipeline_efficiency"] == pytest.approx(m["batch_seconds"][1] / e["window_seconds"])
    assert 0 < r["pipeline_efficiency_overall"] < 1
    assert r["cpu_stage"]["audio_seconds_per_core_second"] > 0

    models = r["models"]
    assert models["parameters"] == sum(v["parameters"] for v in models["modules"].values()) > 0
    assert models["resident_bytes"] >= 4 * models["parameters"]  # fp32, plus buffers
    assert r["machine"]["cores"] >= 1 and r["machine"]["torch"]
    assert r["options"]["batch_size"] == 2 and r["load"]["wall_seconds"] > 0


def test_precision_compare(report):
    from preprocess.store.reader import FeatureReader

    r, out = report
    p = r["precision_compare"]
    with FeatureReader.open(out / "store") as written:
        code_frames = int(written.code_lens().sum())
    assert p["precision"] == "bf16" and p["utterances"] == 3
    assert p["codes"] == code_frames and 0 <= p["codes_differing"] <= p["codes"]
    assert p["codes_differing_fraction"] == pytest.approx(p["codes_differing"] / p["codes"])
    for name in ("condition", "emo_vec"):
        d = p[name]
        assert 0 < d["mean_abs_diff"] <= d["max_abs_diff"] < 10 * d["fp32_mean_abs"]


def test_plan_mode_matches_the_run(report, capsys):
    """Plan mode (durations only, no audio or models) forms the batches the job ran."""
    r, _ = report
    plan = bench.main(["--mode", "plan", "--generate", "3", "--min-seconds", "1", "--max-seconds", "2.5",
                       "--batch-size", "2"])["plan"]
    assert plan["utterances"] == 3 and plan["batches"] == r["end_to_end"]["batches"]
    assert plan["audio_seconds"] == pytest.approx(r["corpus"]["audio_seconds"], abs=1e-3)
    assert plan["padding_efficiency"] == pytest.approx(r["end_to_end"]["padding_efficiency"], abs=0.02)


@pytest.mark.parametrize("fmt, dtype", [("npy", "float32"), ("zarr", "float32"), ("zarr", "float16")])
def test_store_mode(fmt, dtype, tmp_path, capsys):
    """Store mode writes N synthetic utterances through OutputDir and reads them back."""
    from preprocess.store.reader import FeatureReader

    n, reads = 300, 50
    r = bench.main(["--mode", "store", "--format", fmt, "--latent-dtype", dtype, "--generate", str(n),
                    "--batch-size", "64", "--reads", str(reads), "--out", str(tmp_path)])
    assert json.loads(capsys.readouterr().out)["store"] == json.loads(json.dumps(r["store"]))
    s = r["store"]
    w, disk, rd = s["write"], s["disk"], s["read"]
    t = w["totals"]
    assert w["utterances"] == n and w["batch_size"] == 64
    assert w["flush_rows"] == (1024 if fmt == "zarr" else None)
    assert 10 * n <= t["text_ids"] <= 150 * n and 50 * n <= t["codes"] <= 1500 * n
    assert t["feature_bytes"] == 4 * (t["text_ids"] + t["codes"]) + n * 4 * (32 * 1280 + 1280)
    assert w["utterances_per_second"] == pytest.approx(n / w["seconds"], rel=5e-3)
    assert w["feature_mib_per_second"] == pytest.approx(t["feature_bytes"] / benchlib.MIB / w["seconds"], rel=5e-3)
    assert w["open_seconds"] + w["commit_seconds"] + w["finalize_close_seconds"] <= w["seconds"] + 1e-2
    if fmt == "npy":
        assert disk["feature_files"] == 4 * n
    else:  # the packed store: as many files as the layout predicts, a handful here
        assert disk["feature_files"] == disk["estimated_feature_files"] < 30
    # random floats do not compress: float32 near raw size, float16 about half
    ratio = disk["bytes"] / t["feature_bytes"]
    assert (0.45 < ratio < 0.6) if dtype == "float16" else (0.85 < ratio < 1.1)

    assert rd["item_shapes"]["condition"] == [32, 1280] and rd["item_shapes"]["emo_vec"] == [1280]
    assert rd["evicted_files"] == disk["files"]
    for key in ("warm", "cold"):
        lat = rd[key]
        assert lat["reads"] == reads and 0 < lat["median_ms"] <= lat["p95_ms"] <= lat["max_ms"]
    assert rd["bulk_codes"] == {**rd["bulk_codes"], "utterances": n, "codes": t["codes"]}
    assert r["load"]["wall_seconds"] > 0

    with FeatureReader.open(tmp_path / "store") as reader:   # --out keeps the store
        assert len(reader) == n and int(reader.code_lens().sum()) == t["codes"]
        lens = reader.text_lens()
        assert lens.min() >= 10 and lens.max() <= 150
        item = reader[n - 1]
        assert item["id"] == f"store_{n - 1:07d}" and 0 <= item["codes"].min() <= item["codes"].max() < 8192
        assert item["condition"].dtype == np.float32 and 0.9 < item["condition"].std() < 1.1


def test_store_mode_rejects_float16_npy(tmp_path):
    with pytest.raises(SystemExit, match="float16"):
        bench.main(["--mode", "store", "--format", "npy", "--latent-dtype", "float16", "--generate", "2",
                    "--out", str(tmp_path)])


def test_decode_mode_reads_every_source_kind(capsys):
    returned = bench.main(["--mode", "decode", "--count", "6", "--min-seconds", "0.5",
                           "--max-seconds", "1.5", "--per-shard", "4", "--rounds", "1"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(returned))
    sources = returned["sources"]
    assert set(sources) == {"loose", "tar", "parquet", "arrow", "lhotse"}
    for got in sources.values():
        assert got["items"] == 6 and got["rejects"] == 0
        assert got["audio_seconds"] == sources["loose"]["audio_seconds"] > 3
        assert got["decode_throughput_vs_loose"] > 0


def test_allocator_mode_compares_like_with_like(tiny_models, capsys):
    r = bench.main(["--models", str(tiny_models), "--mode", "allocator", "--threads", "1", "--rounds", "3"])["allocator"]
    assert r["outputs_identical"] is True
    assert r["runs"]["default"]["heap_setting_took"] is None
    assert r["runs"]["kept"]["heap_setting_took"] in (True, False)  # False only off glibc
    for run in r["runs"].values():
        assert run["torch_threads"] == 1
        assert sorted(run["per_frames"], key=int) == [str(t) for t in r["frames"]]
        for t in run["per_frames"].values():
            assert 0 < t["best_seconds"] <= t["median_seconds"]
    assert set(r["speedup_best"]) == set(r["frames"])


def test_scripts_variant_makes_the_loops_outputs(tiny_models, tmp_path):
    """The reference mode's emulation of the scripts' model calls (24 layers, all hidden states,
    transformers' feature extractor, WeTextProcessing alone) ends where our loop does."""
    import bench_reference

    manifest, _ = benchlib.generate_corpus(tmp_path / "corpus", 2, 1.0, 2.0, 3, "uniform")
    for variant in ("loop", "scripts"):
        subprocess.run(bench_reference.command(variant, manifest, tmp_path / variant, tiny_models),
                       check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    ours, theirs = (bench_reference.outputs_of(tmp_path / v) for v in ("loop", "scripts"))
    assert len(ours) == 2
    agreement = bench_reference.agreement(theirs, ours)
    assert agreement["same_utterances"] and agreement["text_ids_equal"]
    assert agreement["codes_equal_share"] >= 0.99
    assert agreement["latent_max_abs_diff"] < 1e-3
