"""Batch planning: budgets, the padding rule, and the measured search for the fastest budget."""

import json

import pytest

from preprocess.batching import (MIN_PADDING_EFFICIENCY, BatchPlanner, Budget, batch_cost,
                                 budget_ladder, take_batch)


def test_padding_rule_keeps_a_long_clip_apart():
    frames = [1350, 210, 205, 200, 200, 190]  # one 27 s clip, then 4 s ones
    budget = Budget(cost=batch_cost(6, 1350), min_padding_efficiency=MIN_PADDING_EFFICIENCY)
    assert take_batch(frames, 0, budget) == 1
    assert take_batch(frames, 1, budget) == 5
    # without the rule the cost budget alone lets the long clip pad all the others
    assert take_batch(frames, 0, Budget(cost=batch_cost(6, 1350))) == 6


def test_ladder_starts_at_one_utterance_and_ends_at_the_ceiling():
    frames = [300] * 100
    ladder = budget_ladder(frames, ceiling=batch_cost(200, 300))
    assert ladder[0]["max_items"] == 1
    assert [s["cost"] for s in ladder[1:-1]] == [batch_cost(4, 300), batch_cost(16, 300), batch_cost(64, 300)]
    assert ladder[-1]["cost"] == batch_cost(200, 300)
    # a last step within 2x of the ceiling is not followed by the ceiling itself
    assert budget_ladder(frames, ceiling=batch_cost(100, 300))[-1]["cost"] == batch_cost(64, 300)


def simulate(frames, todo, seconds_of, record=None, saved=None):
    """Run a planner to the end with a model whose batch time is seconds_of(B, T)."""
    saved = saved if saved is not None else []
    budget = Budget(cost=batch_cost(64, max(frames)), min_padding_efficiency=MIN_PADDING_EFFICIENCY)
    record = record or {**BatchPlanner.new_record(frames, budget.cost), "plan": "x"}
    planner = BatchPlanner(frames, todo, budget, record, lambda r: saved.append(json.dumps(r)))
    cuts = []
    for batch in planner:
        ran = [frames[i] for i in batch.indices]
        cuts.append((batch.start, batch.stop, tuple(batch.indices)))
        planner.measured(batch, seconds_of(len(ran), max(ran)), ran)
    return planner, cuts, saved


def cpu_like(b, t):   # no gain from batching, padding costs: one at a time is best
    return b * t * 1e-3 + 1e-3


def gpu_like(b, t):   # a fixed cost per batch dominates: the largest batches are best
    return 0.5 + b * t * 1e-6


@pytest.mark.parametrize("model, expect_single", [(cpu_like, True), (gpu_like, False)])
def test_search_picks_the_faster_budget(model, expect_single):
    frames = sorted((200 + (i * 37) % 400 for i in range(400)), reverse=True)
    planner, cuts, _ = simulate(frames, [True] * len(frames), model)
    chosen = planner.chosen_budget()
    assert (chosen.max_items == 1) == expect_single
    covered = [i for _, _, idx in cuts for i in idx]
    assert covered == list(range(len(frames)))  # every item once, in plan order
    if not expect_single:
        assert max(len(idx) for _, _, idx in cuts) > 16


def test_resumed_search_replays_the_same_batches():
    """Kill after each recorded step: a resumed planner (done items skipped, record reloaded)
    cuts exactly the batches of the uninterrupted run."""
    frames = sorted((150 + (i * 53) % 500 for i in range(300)), reverse=True)
    _, full, saved = simulate(frames, [True] * len(frames), gpu_like)
    full_cuts = [(s, e) for s, e, _ in full]
    for k in range(len(saved)):
        record = json.loads(saved[k])
        done = {i for t in record["trials"] for i in range(t["start"], t["stop"])}
        todo = [i not in done for i in range(len(frames))]
        _, resumed, _ = simulate(frames, todo, gpu_like, record=record)
        # the resumed run's cuts are a suffix of the uninterrupted run's
        cuts = [(s, e) for s, e, _ in resumed]
        assert cuts == full_cuts[len(full_cuts) - len(cuts):]
        ran = sorted(i for _, _, idx in resumed for i in idx)
        assert ran == [i for i in range(len(frames)) if todo[i]]


def test_fixed_budget_is_not_searched():
    frames = [300] * 10
    planner = BatchPlanner(frames, [True] * 10, Budget(cost=float("inf"), max_items=3))
    assert [len(b.indices) for b in planner] == [3, 3, 3, 1]
    assert planner.chosen_budget().max_items == 3


def test_batches_are_capped_by_time_at_the_measured_rate():
    """Equal speed at every budget: the search would climb to the ceiling, but a batch may take
    at most max_batch_seconds at the measured rate, so a kill costs seconds, not minutes."""
    frames = sorted((100 + (i * 29) % 300 for i in range(500)), reverse=True)
    budget = Budget(cost=batch_cost(256, max(frames)), min_padding_efficiency=MIN_PADDING_EFFICIENCY)
    record = {**BatchPlanner.new_record(frames, budget.cost), "plan": "x"}
    planner = BatchPlanner(frames, [True] * len(frames), budget, record, max_batch_seconds=5.0)
    rate = 2000.0  # work units per second, whatever the batch
    longest = 0.0
    for batch in planner:
        ran = [frames[i] for i in batch.indices]
        seconds = sum(batch_cost(1, f) for f in ran) / rate
        planner.measured(batch, seconds, ran)
        if batch.candidate is None:
            longest = max(longest, batch_cost(len(ran), max(ran)) / rate)
    assert record["cap"] == pytest.approx(5.0 * rate)
    assert planner.chosen_budget().cost <= 5.0 * rate
    assert 0 < longest <= 5.0
