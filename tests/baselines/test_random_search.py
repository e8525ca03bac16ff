"""Random search: every proposal fits the budget, tight budgets included, and a seed fixes the
sequence, across a checkpoint too."""

from __future__ import annotations

from baselines.random_search import RandomSearch


def test_proposals_fit_and_vary(point_at):
    point = point_at("latency_ms=0.6x")
    search = RandomSearch(point, seed=1)
    configs = search.ask(20)
    assert all(point.fits(c) for c in configs)
    assert len({c.hash for c in configs}) == 20
    assert search.repaired == 0  # a loose budget is met by rejection alone: exact sampling


def test_a_budget_random_draws_never_meet_is_met_by_repair(point_at):
    point = point_at("latency_ms=0.2x")
    search = RandomSearch(point, seed=1)
    configs = search.ask(3)
    assert all(point.fits(c) for c in configs) and search.repaired == 3


def test_seeded_and_resumable(point_at):
    point = point_at("latency_ms=0.6x")
    straight = [c.hash for c in RandomSearch(point, seed=4).ask(6)]
    first = RandomSearch(point, seed=4)
    head = [c.hash for c in first.ask(3)]
    resumed = RandomSearch(point, seed=0)
    resumed.load_state_dict(first.state_dict())
    assert head + [c.hash for c in resumed.ask(3)] == straight
