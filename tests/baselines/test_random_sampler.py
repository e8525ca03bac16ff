"""Random search with AQGAN's prior: the collection sampler's draws within budget, told its
results, seeded and resumable across a checkpoint."""

from __future__ import annotations

from baselines import random_sampler
from baselines.random_sampler import SamplerSearch


def _run(search: SamplerSearch, synthetic, rounds: int) -> list[str]:
    asked = []
    for _ in range(rounds):
        configs = search.ask(4)
        search.tell(configs, [synthetic.accuracy(c) for c in configs])
        asked += [c.hash for c in configs]
    return asked


def test_proposals_fit_and_are_far_from_chance(point_at, synthetic):
    point = point_at("latency_ms=0.6x")
    search = SamplerSearch(point, seed=1)
    configs = search.ask(24)
    assert all(point.fits(c) for c in configs) and search.repaired == 0
    accs = sorted(synthetic.accuracy(c) for c in configs)
    assert accs[-1] > 0.8  # structured draws reach the high-accuracy region uniform ones miss


def test_a_budget_no_draw_meets_is_met_by_repair(point_at, monkeypatch):
    monkeypatch.setattr(random_sampler, "MAX_DRAWS", random_sampler.BLOCK)  # one block, then repair
    loose = point_at("latency_ms=1x")
    lowest = loose.config([2] * len(loose.layers), [2] * len(loose.layers))
    point = point_at(f"latency_ms={1.0001 * loose.cost(lowest)}")  # all 2-bit, barely more
    search = SamplerSearch(point, seed=0)  # a seed whose first 2 x 64 draws include no all-2
    assert all(point.fits(c) for c in search.ask(2)) and search.repaired == 2


def test_seeded_and_resumable_after_its_stratified_draws_start(point_at, synthetic):
    point = point_at("latency_ms=0.6x")
    straight = _run(SamplerSearch(point, seed=4), synthetic, 9)  # 36 told: past the warm-up
    first = SamplerSearch(point, seed=4)
    head = _run(first, synthetic, 7)
    resumed = SamplerSearch(point, seed=0)
    resumed.load_state_dict(first.state_dict())
    assert head + _run(resumed, synthetic, 2) == straight
