import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


@pytest.fixture(scope="session")
def shared_dir():
    return os.path.abspath(SHARED)


ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


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
