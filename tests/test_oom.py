"""Out-of-memory recovery in the device stage, with an injected OOM on CPU."""

import numpy as np
import torch

from preprocess.batching import Budget, batch_cost, take_batch
from preprocess.models.bundle import ModelBundle
from preprocess.device import DeviceStage
from preprocess.executors.inprocess import run_job
from preprocess.job import JobOptions
from preprocess.prepare import Prepared
from test_pipeline import GOOD, corpus, read_lines  # noqa: F401


class OomAbove:
    """The real bundle, but any batch above `max_cost` (or any item longer than `max_frames`)
    raises the device's out-of-memory error, as a GPU would."""

    def __init__(self, bundle, max_cost, max_frames=10**9):
        self.bundle, self.max_cost, self.max_frames = bundle, max_cost, max_frames
        self.sizes, self.ooms = [], 0

    def to(self, device, dtype):
        self.bundle.to(device, dtype)
        return self

    def run(self, features, frames, lengths):
        b, t, _ = features.shape
        if batch_cost(b, t) > self.max_cost or t > self.max_frames:
            self.ooms += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.sizes.append(b)
        return self.bundle.run(features, frames, lengths)


def fake_prepared(n, frames):
    rng = np.random.default_rng(0)
    return [Prepared(i, "t", np.array([5], np.int32), f, f, f / 50,
                     features=rng.standard_normal((f, 160)).astype(np.float32))
            for i, f in enumerate(frames[:n])]


def test_split_and_retry_keeps_every_item(model_paths):
    bundle = ModelBundle.load(model_paths)
    frames = [150, 140, 120, 100, 90, 60, 30, 20]
    items = fake_prepared(8, frames)
    reference = {p.index: out for p, out in DeviceStage(bundle, torch.device("cpu"), Budget(1e12)).run(items)}
    flaky = OomAbove(bundle, max_cost=batch_cost(2, 150))
    budget = Budget(cost=1e12)
    stage = DeviceStage(flaky, torch.device("cpu"), budget)
    results = stage.run_all(items)
    assert sorted(p.index for p, _ in results) == list(range(8))    # nothing dropped or doubled
    assert flaky.ooms > 0 and max(flaky.sizes) <= 2
    assert budget.cost < 1e12 and budget.ceiling <= batch_cost(8, 150)  # the budget came down
    for p, (codes, cond, emo) in results:
        ref_codes, ref_cond, ref_emo = reference[p.index]
        assert np.array_equal(codes, ref_codes)
        np.testing.assert_allclose(cond, ref_cond, atol=1e-4)
        np.testing.assert_allclose(emo, ref_emo, atol=1e-4)
    # later batches are cut to the lowered budget: fewer OOMs the second time
    first, flaky.ooms = flaky.ooms, 0
    assert len(stage.run_all(items)) == 8
    assert flaky.ooms < first


def test_budget_grows_back_after_successes():
    budget = Budget(cost=1000.0, grow_after=3)
    budget.shrink(800.0)
    low = budget.cost
    assert low < 800
    for _ in range(3):
        budget.succeeded()
    assert low < budget.cost < 800  # grows, but stays under what failed
    for _ in range(300):
        budget.succeeded()
    assert budget.cost < 800


def test_take_batch_respects_budget():
    frames = [400, 300, 300, 200, 100, 100, 50]
    budget = Budget(cost=batch_cost(3, 300))
    assert take_batch(frames, 0, budget) == 2   # 3 x 400 is over, 2 x 400 fits
    assert take_batch(frames, 1, budget) == 3
    assert take_batch(frames, 6, budget) == 1
    assert take_batch(frames, 0, Budget(cost=1.0)) == 1  # always at least one


def test_item_too_big_alone_is_a_reject(corpus, model_paths, tmp_path):  # noqa: F811
    tiny = model_paths.config.parent
    longest = max(GOOD, key=lambda g: g[4])
    bundle = OomAbove(ModelBundle.load(model_paths), max_cost=1e12,
                      max_frames=int(longest[4] * 50) - 5)
    opts = JobOptions(manifest=corpus, output_dir=tmp_path, models=model_paths,
                      tokenizer=tiny / "bpe.model", workers=1, progress=False, val_ratio=0.0)
    summary = run_job(opts, bundle=bundle)
    rejects = read_lines(tmp_path / "rejects.jsonl")
    assert [(r["id"], r["stage"]) for r in rejects] == [(longest[0], "device")]
    assert "out of device memory even alone" in rejects[0]["reason"]
    assert summary.processed == len(GOOD) - 1
    assert len(read_lines(tmp_path / "train_manifest.jsonl")) == len(GOOD) - 1
