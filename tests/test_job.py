"""The job skeleton and its options: defaults from configs/job.yaml, what the fingerprint holds,
what model errors carry, that the CLI module loads without torch, and that a run starts its CPU
workers before it imports torch."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import preprocess.text
from preprocess.job import Job
from preprocess.models.files import MissingModelFile, ModelPaths
from preprocess.options import DEFAULT_CONFIG, JobDefaults, JobOptions, Limits, output_options
from preprocess.store.journal import ConfigMismatch

ROOT = Path(__file__).resolve().parents[1]


def test_packaged_config_is_the_code_defaults():
    assert JobDefaults.load() == JobDefaults()
    assert (ROOT / "configs" / "job.yaml").resolve() == DEFAULT_CONFIG


def test_user_config_overrides_and_unknown_keys_are_named(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("layer: 12\nlimits:\n  max_text_len: 300\n")
    d = JobDefaults.load(path)
    assert d.layer == 12 and d.limits.max_text_len == 300
    assert d.limits.max_code_len == Limits().max_code_len and d.val_ratio == JobDefaults().val_ratio
    path.write_text("layer: 12\nlimits:\n  max_txt_len: 3\n")
    with pytest.raises(ValueError, match=r"job.yaml: unknown option\(s\) limits.max_txt_len"):
        JobDefaults.load(path)


def provenance():
    return {"files": {"tokenizer": {"sha256": "0" * 64}}, "versions": {}}


def options(tmp_path):
    return JobOptions(manifest=tmp_path / "m.jsonl", output_dir=tmp_path / "out", models=None,
                      tokenizer=tmp_path / "bpe.model")


def test_text_pipeline_and_normaliser_versions_are_in_the_fingerprint(tmp_path, monkeypatch):
    opts = options(tmp_path)
    job = Job(opts, provenance())
    job.open_output().close()
    assert output_options(opts)["normaliser"]["version"] == preprocess.text.normaliser_versions()["version"]

    monkeypatch.setattr(preprocess.text, "TEXT_PIPELINE_VERSION", preprocess.text.TEXT_PIPELINE_VERSION + 1)
    changed = Job(opts, provenance())
    assert changed.fingerprint != job.fingerprint
    with pytest.raises(ConfigMismatch):
        changed.open_output()
    monkeypatch.undo()

    versions = preprocess.text.normaliser_versions()
    monkeypatch.setattr(preprocess.text, "normaliser_versions", lambda: {**versions, "version": "9.9"})
    with pytest.raises(ConfigMismatch):
        Job(opts, provenance()).open_output()


def test_layer_changes_the_fingerprint(tmp_path):
    opts = options(tmp_path)
    assert Job(opts, provenance()).fingerprint != Job(replace(opts, layer=12), provenance()).fingerprint
    # what does not change outputs does not change the fingerprint
    assert Job(opts, provenance()).fingerprint == Job(replace(opts, batch_size=4, workers=3), provenance()).fingerprint


def test_missing_model_file_says_which_and_where(tiny_models, tmp_path):
    with pytest.raises(MissingModelFile) as err:
        ModelPaths.resolve(tiny_models / "config.yaml", gpt_checkpoint=tmp_path / "nope.pth",
                           w2v_bert=tiny_models / "w2v-bert-2.0",
                           semantic_codec=tiny_models / "semantic_codec" / "model.safetensors")
    assert err.value.role == "gpt_checkpoint" and "nope.pth" in str(err.value)
    assert "--" not in str(err.value)  # flags are the CLI's business
    with pytest.raises(MissingModelFile) as err:
        ModelPaths.resolve(tiny_models / "config.yaml", w2v_bert=tiny_models / "w2v-bert-2.0",
                           semantic_codec_hub_id="nobody/nothing")
    assert err.value.role == "semantic_codec" and "nobody/nothing" in str(err.value)


def test_cli_module_and_light_commands_import_no_torch():
    code = "import sys, preprocess.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
    for command in ("verify", "stats", "pairs", "merge", "export"):
        code = ("import sys; from click.testing import CliRunner; from preprocess.cli import main; "
                f"r = CliRunner().invoke(main, [{command!r}, '--help']); "
                "sys.exit(r.exit_code or 'torch' in sys.modules)")
        assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0, command


# The data command, run in a fresh interpreter: when the main process first imports torch, the
# CPU workers must already have been started (their own start-up then runs beside the import).
STARTUP_PROBE = """
import sys
from click.testing import CliRunner
import preprocess.prepare as prepare
from preprocess.cli import preprocess_data

started, seen = [], {}
init = prepare.CpuStage.__init__
def counting_init(self, *a, **k):
    started.append(1)
    init(self, *a, **k)
prepare.CpuStage.__init__ = counting_init

class Watch:
    def find_spec(self, name, path=None, target=None):
        frame, looking = sys._getframe(1), False
        while frame is not None:  # importlib.util.find_spec only looks (options.device_kind)
            looking |= frame.f_code.co_filename.endswith("importlib/util.py")
            frame = frame.f_back
        if name in ("torch", "transformers") and name not in seen and not looking:
            seen[name] = len(started)
        return None
sys.meta_path.insert(0, Watch())
r = CliRunner().invoke(preprocess_data, sys.argv[1:])
print(r.exit_code, seen.get("torch"), seen.get("transformers"))
"""


def test_the_job_starts_its_workers_before_importing_torch(corpus, tiny_models, tmp_path):  # noqa: F811
    from test_pipeline import cli_args

    args = cli_args(corpus, tmp_path / "out", tiny_models, "--device", "cpu")
    out = subprocess.run([sys.executable, "-c", STARTUP_PROBE, *args], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    exit_code, torch_after, transformers_after = out.stdout.split()[-3:]
    assert exit_code == "0"
    assert torch_after == "1" and transformers_after == "1"  # CpuStage instances started before each
    assert (tmp_path / "out" / "train_manifest.jsonl").exists()


def test_device_kind_needs_torch_only_where_cuda_may_be(tmp_path, monkeypatch):
    import importlib.machinery

    import preprocess.device_kind as options

    code = "import sys; from preprocess.device_kind import device_kind; k = device_kind('cpu'); sys.exit(k != 'cpu' or 'torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
    import torch

    assert options.device_kind("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="--device gpu0"):
        options.device_kind("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            options.device_kind("cuda:0")

    def installed(version_py: str | None):
        pkg = tmp_path / "fake" / "torch"
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "version.py").unlink(missing_ok=True)
        if version_py is not None:
            (pkg / "version.py").write_text(version_py)
        spec = importlib.machinery.ModuleSpec("torch", None, is_package=True)
        spec.submodule_search_locations = [str(pkg)]
        monkeypatch.setattr(options.importlib.util, "find_spec", lambda name: spec)

    installed("cuda: Optional[str] = None\nhip: Optional[str] = None\n")
    assert options._torch_may_have_gpu() is False
    installed("cuda: Optional[str] = '12.8'\nhip: Optional[str] = None\n")
    assert options._torch_may_have_gpu() is True
    installed("cuda: Optional[str] = None\nhip: Optional[str] = '6.2.4'\n")
    assert options._torch_may_have_gpu() is True
    installed(None)  # no version file: ask torch itself
    assert options._torch_may_have_gpu() is True


# -- the automatic budget on a real run --------------------------------------------------------

from test_pipeline import GOOD, assert_same_output, corpus, read_lines, run_cli  # noqa: E402,F401


def test_automatic_budget_is_recorded_and_reused_on_resume(corpus, tiny_models, tmp_path):  # noqa: F811
    import json
    import shutil

    first = tmp_path / "first"
    run_cli(corpus, first, tiny_models)
    record = json.loads((first / ".batch_budget.json").read_text())
    assert record["trials"] and record["trials"][0]["start"] == 0
    budget = json.loads((first / "stats.json").read_text())["last_run"]["batch_budget"]
    if record["chosen"] is None:  # a corpus this small can end before the search does:
        assert budget is None     # then every batch was a recorded trial
        assert record["trials"][-1]["stop"] == len(GOOD)
    else:
        assert budget["searched"] and budget["max_items"] == record["ladder"][record["chosen"]]["max_items"]

    # A crash after the first commit: the journal holds the first batch's ids only (batches
    # commit whole). The rerun cuts the rest under the recorded search and choice, so its bytes
    # equal the uninterrupted run's.
    crashed = tmp_path / "crashed"
    shutil.copytree(first, crashed)
    journal = crashed / ".preprocessing_progress.txt"
    lines = journal.read_text().splitlines()
    first_batch = record["trials"][0]["items"]
    journal.write_text("\n".join(lines[:1 + first_batch]) + "\n")
    r = run_cli(corpus, crashed, tiny_models)
    assert f"{first_batch} already done were skipped" in r.stdout
    assert json.loads((crashed / ".batch_budget.json").read_text()) == record
    assert_same_output(first, crashed)


def test_kill_during_the_budget_search_loses_nothing(corpus, tiny_models, tmp_path):  # noqa: F811
    import numpy as np

    from preprocess.verify import verify_output

    single = tmp_path / "single"
    run_cli(corpus, single, tiny_models, "--batch-size", "1")
    out = tmp_path / "auto"
    r = run_cli(corpus, out, tiny_models, env={"PREPROCESS_FAULT": "after_journal:1"}, check=False)
    assert r.returncode == 137, r.stderr
    run_cli(corpus, out, tiny_models)
    assert verify_output(out).ok
    ids = [x["id"] for x in read_lines(out / "train_manifest.jsonl") + read_lines(out / "val_manifest.jsonl")]
    assert sorted(ids) == sorted(g[0] for g in GOOD)
    for line in read_lines(single / "train_manifest.jsonl") + read_lines(single / "val_manifest.jsonl"):
        assert np.array_equal(np.load(single / line["codes_path"]), np.load(out / line["codes_path"]))
        np.testing.assert_allclose(np.load(single / line["condition_path"]),
                                   np.load(out / line["condition_path"]), atol=1e-4, rtol=0)


def test_untrusted_checkpoint_is_refused_and_the_flag_named(corpus, tiny_models, tmp_path):  # noqa: F811
    import argparse

    import torch

    ckpt = {"model": torch.load(tiny_models / "gpt.pth", weights_only=True), "args": argparse.Namespace(lr=1)}
    if isinstance(ckpt["model"], dict) and "model" in ckpt["model"]:
        ckpt["model"] = ckpt["model"]["model"]
    trainer = tmp_path / "trainer.pth"
    torch.save(ckpt, trainer)
    r = run_cli(corpus, tmp_path / "refused", tiny_models, "--gpt-checkpoint", trainer, "--batch-size", "3",
                check=False)
    assert r.returncode == 2 and "argparse.Namespace" in r.stderr and "--trust-checkpoint" in r.stderr
    r = run_cli(corpus, tmp_path / "trusted", tiny_models, "--gpt-checkpoint", trainer, "--batch-size", "3",
                "--trust-checkpoint")
    assert f"Processed {len(GOOD)} utterances" in r.stdout
