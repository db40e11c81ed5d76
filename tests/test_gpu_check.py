"""tools/gpu_check.py: a small CPU run whose JSON says what the GPU run will say, and its parts.

The run goes in a child process in which WeTextProcessing (`tn`) and matplotlib cannot be
imported, as on a node installed from the gpu-check bundle (tools/wheelhouse.sh --gpu-check).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import gpu_check  # noqa: E402

# the sections whose fields are asserted; the throughput sections are the same end_to_end and
# model_only (tested below) on more utterances, and would double the run's time here
SECTIONS = "fbank,invariance,oom"


@pytest.fixture(scope="module")
def run(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    blocked = tmp / "blocked"
    for package in ("tn", "matplotlib"):   # importing either fails, in every process of the run
        (blocked / package).mkdir(parents=True)
        (blocked / package / "__init__.py").write_text(f"raise ImportError('{package} is not installed')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), str(ROOT)]), "HF_HUB_OFFLINE": "1"}
    report_path = tmp / "report.json"
    argv = [sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--device", "cpu", "--models", str(tiny_models),
            "--json", str(report_path), "--utterances", "4", "--min-seconds", "1", "--max-seconds", "3",
            "--sample", "3", "--oom-utterances", "4", "--workers", "1", "--sections", SECTIONS]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(report_path.read_text()), done.stdout


def test_runs_without_text_normaliser_or_matplotlib(run):
    report, _ = run
    assert report["text_normaliser"].startswith("WeTextProcessing not installed")
    assert report["setup"]["corpus_utterances"] == 4
    for name in SECTIONS.split(","):
        assert report["sections"][name]["status"] == "ok", report["sections"][name]
    two = report["sections"]["two_workers"]
    assert two["status"] == "not applicable on cpu" and "GPU" in two["reason"]
    for name in ("throughput_bf16", "throughput_fp32"):
        assert report["sections"][name]["status"] == "not asked for (--sections)"


def test_batch_invariance_and_precision(run):
    inv = run[0]["sections"]["invariance"]
    assert inv["utterances"] == inv["compared_alone"] == 3
    fp32 = inv["fp32_batched_vs_alone"]
    assert fp32["codes_identical"] and fp32["latents_within_tolerance"]
    assert fp32["codes"] > 0 and fp32["codes_equal_fraction"] == 1.0
    low = inv["bf16_vs_fp32"]
    assert low["codes"] == fp32["codes"] and 0.0 < low["codes_equal_fraction"] <= 1.0
    assert low["condition_max_abs_diff"] > 0   # bf16 does round: a zero would mean fp32 ran twice


def test_forced_oom_splits_and_loses_nothing(run):
    oom = run[0]["sections"]["oom"]
    assert oom["cap"].startswith("injected")
    assert oom["free_run"]["completed"] and oom["free_run"]["batches"] == 1
    assert oom["split"] and oom["out_of_memory_errors"] >= 1
    assert oom["batches_run"] >= 2 and oom["largest_batch"] < oom["utterances"]
    assert oom["every_utterance_once"]
    assert oom["capped_run"]["utterances"] == oom["utterances"] == 4
    assert oom["against_free_run"]["outputs_equal"]


def test_device_fbank_matches_cpu(run):
    fb = run[0]["sections"]["fbank"]
    assert fb["utterances"] == 3
    assert fb["device_float64"]["frames_equal"] and fb["device_float64"]["lengths_equal"]
    assert 0 <= fb["device_float64"]["max_abs_diff"] < 2e-5   # tests/test_frontend.py's bound


def test_end_to_end_figures(run):
    free = run[0]["sections"]["oom"]["free_run"]
    assert free["utterances"] == 4 and free["rejected"] == 0
    assert free["budget"] == "fixed: 4 utterances per batch"
    assert free["audio_seconds"] == pytest.approx(run[0]["setup"]["corpus_audio_seconds"], abs=0.1)
    assert free["audio_seconds_per_second"] == pytest.approx(free["audio_seconds"] / free["wall_seconds"], rel=1e-3)
    assert 0 < free["padding_efficiency"] < 1   # four lengths in one batch
    assert 0 < free["model_seconds"] < free["wall_seconds"]


def test_table_is_printed(run):
    _, stdout = run
    assert "fp32 batched vs alone" in stdout and "codes identical True" in stdout
    assert "not applicable on cpu" in stdout


# -- the parts, without models ------------------------------------------------------------------

def features(codes, condition=0.0):
    return {"codes": np.array(codes), "condition": np.full((2, 3), condition, np.float32),
            "emo_vec": np.zeros(3, np.float32)}


def test_compare_finds_a_flipped_code_and_a_latent_difference():
    same = gpu_check.compare({"a": features([1, 2, 3])}, {"a": features([1, 2, 3])})
    assert same["utterances_with_codes_differing"] == 0 and same["codes_equal_fraction"] == 1.0
    other = gpu_check.compare({"a": features([1, 2, 3]), "b": features([4])},
                              {"a": features([1, 9, 3], 0.5), "b": features([4])})
    assert other["utterances_with_codes_differing"] == 1
    assert other["codes_equal_fraction"] == pytest.approx(3 / 4)
    assert other["condition_max_abs_diff"] == pytest.approx(0.5)
    assert not gpu_check.compare({"a": features([1])}, {"b": features([1])})["same_ids"]


class Echo:
    def to(self, device, dtype):
        return self

    def run(self, features, frames, lengths):
        return "ran"


def test_timed_bundle_injects_oom_above_the_cap_and_counts_it():
    timed = gpu_check.TimedBundle(Echo(), oom_above=gpu_check.batch_cost(2, 100))
    frames = torch.tensor([100, 90])
    assert timed.run(torch.zeros(2, 100, 160), frames, frames) == "ran"
    with pytest.raises(torch.OutOfMemoryError):
        timed.run(torch.zeros(3, 100, 160), torch.tensor([100, 90, 80]), torch.tensor([100, 90, 80]))
    assert timed.ooms == 1 and len(timed.calls) == 1 and timed.calls[0].valid_frames == 190


def test_model_only_reruns_every_kept_batch_within_the_box():
    timed = gpu_check.TimedBundle(Echo(), keep_inputs=True)
    for n in (3, 2):
        frames = torch.full((n,), 50)
        timed.run(torch.zeros(n, 50, 160), frames, frames)
    mo = gpu_check.model_only(Echo(), timed.batch_inputs(), torch.device("cpu"), gpu_check.TimeBox(60))
    assert mo["batches"] == mo["of_batches"] == 2
    assert mo["audio_seconds"] == (3 + 2) * 50 / gpu_check.CODES_PER_SECOND
    none = gpu_check.model_only(Echo(), timed.batch_inputs(), torch.device("cpu"), gpu_check.TimeBox(0))
    assert none["batches"] == 0 and none["of_batches"] == 2


def test_timeline_device_busy():
    calls = [gpu_check.Call(0.0, 2.0, 2, 100, 150), gpu_check.Call(2.5, 3.0, 1, 50, 50),
             gpu_check.Call(3.0, 4.0, 1, 50, 50)]
    t = gpu_check.timeline(calls, t_start=-1.0, t_end=4.5)
    assert t["warmup_seconds"] == 3.0 and t["window_seconds"] == 2.0 and t["tail_seconds"] == 0.5
    assert t["device_busy"] == pytest.approx(1.5 / 2.0)   # batches 2..n over the window
    assert t["padded_frames_per_batch"] == {"mean": 100, "max": 200}
    assert t["padding_efficiency"] == round(250 / 300, 4)


def test_arguments():
    cpu = gpu_check.parse_args(["--device", "cpu"])
    assert cpu.size == "tiny" and cpu.sections == list(gpu_check.SECTIONS)
    assert gpu_check.parse_args(["--device", "cpu", "--utterances", "7"]).utterances == 7
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--device", "cpu", "--sections", "fbank,nonsense"])
    cuda = gpu_check.DEFAULTS["cuda"]
    assert cuda["size"] == "full" and cuda["utterances"] >= 1000
    assert cuda["min_seconds"] == 1 and cuda["max_seconds"] == 30
    assert sum(cuda["boxes"].values()) <= cuda["time_limit"] <= 480
