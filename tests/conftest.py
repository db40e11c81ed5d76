import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def arctic_dir():
    """Two real CMU ARCTIC recordings (16 kHz mono), with their licence."""
    return DATA / "cmu_arctic"


@pytest.fixture(scope="session")
def reference_keys_dir():
    """Key lists (names, shapes) of the official checkpoints."""
    return DATA / "reference_keys"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Random-weight checkpoints in the official formats, made once per test session."""
    import sys

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from make_checkpoints import make_checkpoints

    return make_checkpoints(tmp_path_factory.mktemp("models"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def model_paths(tiny_models):
    from preprocess.models.bundle import ModelPaths

    return ModelPaths.resolve(tiny_models / "config.yaml",
                              w2v_bert=tiny_models / "w2v-bert-2.0",
                              semantic_codec=tiny_models / "semantic_codec" / "model.safetensors")


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory):
    """test_pipeline.GOOD as audio files (several rates, wav and flac, one stereo) and a manifest
    with relative paths, one for the session: tests may write other manifests beside it but
    change none of its files."""
    from test_pipeline import make_corpus

    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def reference_run(sample_corpus, tiny_models, tmp_path_factory):
    """A finished, uninterrupted `preprocess-data --batch-size 3` of the sample corpus. Read it
    in place; a test that changes it works on a shutil.copytree of it."""
    from test_pipeline import run_cli

    out = tmp_path_factory.mktemp("reference")
    run_cli(sample_corpus, out, tiny_models, "--batch-size", "3")
    return out
