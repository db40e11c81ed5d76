"""`--engine ray` on a local Ray cluster: equal to the in-process run; an actor killed mid-run
and a killed driver lose nothing and write nothing twice."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray  # the [ray] extra, in [dev]: CI runs these tests

from preprocess.executors.ray_engine import ACTOR_NAME, WORKER_ENV
from preprocess.verify import verify_output
from test_pipeline import GOOD, cli_args, corpus, read_lines, run_cli  # noqa: F401

FEATURES = ("text_ids_path", "codes_path", "condition_path", "emo_vec_path")


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray session for the module (starting one takes seconds); the engine uses it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": WORKER_ENV})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def assert_same_features(a: Path, b: Path):
    """Manifests and rejects byte for byte, each id once; text ids and codes identical;
    latents within 1e-5 (other threads and batch-mates than the reference's)."""
    for name in ("train_manifest.jsonl", "val_manifest.jsonl", "rejects.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    lines = read_lines(b / "train_manifest.jsonl") + read_lines(b / "val_manifest.jsonl")
    assert sorted(x["id"] for x in lines) == sorted(g[0] for g in GOOD)
    progress = (b / ".preprocessing_progress.txt").read_text().splitlines()[1:]
    assert sorted(progress) == sorted(g[0] for g in GOOD)   # marked done once each
    for line in lines:
        for key in FEATURES[:2]:
            assert (a / line[key]).read_bytes() == (b / line[key]).read_bytes(), line[key]
        for key in FEATURES[2:]:
            np.testing.assert_allclose(np.load(a / line[key]), np.load(b / line[key]), atol=1e-5, rtol=0)
    assert not (b / "shards").exists()
    assert verify_output(b).ok


def shard_progress(out: Path) -> int:
    """Utterances the Ray actors' shards of `out` mark done."""
    return sum(len(p.read_text().splitlines()) - 1
               for p in out.glob("shards/ray-*/.preprocessing_progress.txt"))


def test_ray_run_equals_the_in_process_run(ray_session, reference_run, corpus, tiny_models, tmp_path):  # noqa: F811
    r = run_cli(corpus, tmp_path, tiny_models, "--batch-size", "3", "--engine", "ray", "--ray-actors", "2")
    assert f"Processed {len(GOOD)} utterances" in r.stdout
    assert_same_features(reference_run, tmp_path)


def test_an_actor_killed_mid_run_loses_nothing(ray_session, reference_run, corpus, tiny_models, tmp_path):  # noqa: F811
    killed = {}

    def kill_one_actor():
        deadline = time.time() + 300
        while time.time() < deadline and shard_progress(tmp_path) < 1:
            time.sleep(0.02)
        names = sorted(n for n in ray.util.list_named_actors() if n.startswith(ACTOR_NAME))
        killed["done_before"] = shard_progress(tmp_path)
        killed["name"] = names[0]
        ray.kill(ray.get_actor(names[0]), no_restart=False)   # Ray restarts it

    killer = threading.Thread(target=kill_one_actor, daemon=True)
    killer.start()
    r = run_cli(corpus, tmp_path, tiny_models, "--batch-size", "1", "--engine", "ray", "--ray-actors", "2")
    killer.join(timeout=10)
    assert 0 < killed["done_before"] < len(GOOD), killed   # killed while work was left
    assert f"Processed {len(GOOD)} utterances" in r.stdout and "0 were rejected" in r.stdout
    assert_same_features(reference_run, tmp_path)


def test_a_killed_driver_resumes_equal_to_an_uninterrupted_run(ray_session, reference_run, corpus,  # noqa: F811
                                                              tiny_models, tmp_path):
    cmd = [sys.executable, "-m", "preprocess", "data",
           *cli_args(corpus, tmp_path, tiny_models, "--batch-size", "1", "--engine", "ray",
                     "--ray-actors", "1", "--ray-address", ray_session)]
    driver = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None and shard_progress(tmp_path) < 1:
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    _, stderr = driver.communicate()
    done_before = shard_progress(tmp_path)
    assert driver.returncode == -signal.SIGKILL and 0 < done_before < len(GOOD), stderr
    r = run_cli(corpus, tmp_path, tiny_models, "--batch-size", "1", "--engine", "ray", "--ray-actors", "1")
    # The dead driver's actors may commit a batch more before Ray ends them.
    processed, skipped = map(int, re.search(r"Processed (\d+) utterances.*; (\d+) already done",
                                            r.stdout).groups())
    assert skipped >= done_before and processed + skipped == len(GOOD), r.stdout
    assert_same_features(reference_run, tmp_path)
