"""Random search: every proposal fits the budget, tight budgets included, and a seed fixes the
sequence, across a checkpoint too."""

from __future__ import annotations

import pytest

from aqgan_ray.cost import get_hw_model, parse_budget
from aqgan_ray.data import DATASET_SHAPES
from aqgan_ray.layers import layer_table
from aqgan_ray.models import build_model
from aqgan_ray.search import DesignPoint
from baselines.random_search import RandomSearch

CHOICES = (2, 3, 4, 5, 6, 7, 8)


@pytest.fixture(scope="module")
def layers():
    shape, classes = DATASET_SHAPES["fashion-mnist"]
    return layer_table(build_model("mobilenet_v2", classes, shape, 0.35), shape)


def _point(layers, budget: str) -> DesignPoint:
    hw = get_hw_model("bismo-edge", layers, CHOICES)
    return DesignPoint(tuple(layers), CHOICES, hw, parse_budget(budget, hw, layers))


def test_proposals_fit_and_vary(layers):
    point = _point(layers, "latency_ms=0.6x")
    search = RandomSearch(point, seed=1)
    configs = search.ask(20)
    assert all(point.fits(c) for c in configs)
    assert len({c.hash for c in configs}) == 20
    assert search.repaired == 0  # a loose budget is met by rejection alone: exact sampling


def test_a_budget_random_draws_never_meet_is_met_by_repair(layers):
    point = _point(layers, "latency_ms=0.2x")
    search = RandomSearch(point, seed=1)
    configs = search.ask(3)
    assert all(point.fits(c) for c in configs) and search.repaired == 3


def test_seeded_and_resumable(layers):
    point = _point(layers, "latency_ms=0.6x")
    straight = [c.hash for c in RandomSearch(point, seed=4).ask(6)]
    first = RandomSearch(point, seed=4)
    head = [c.hash for c in first.ask(3)]
    resumed = RandomSearch(point, seed=0)
    resumed.load_state_dict(first.state_dict())
    assert head + [c.hash for c in resumed.ask(3)] == straight
