"""Generation and selection under a hardware budget, on a generator trained on real
evaluations: distinct proposals, every returned one within budget, ranked as documented."""

from __future__ import annotations

import numpy as np
import pytest

from aqgan_ray import aqgan, gan
from aqgan_ray.config import QuantConfig
from aqgan_ray.cost import get_hw_model, parse_budget
from aqgan_ray.select import Verified, best_under_budget, breed, expected_miss, propose
from aqgan_ray.store import EvaluationStore


@pytest.fixture(scope="module")
def loaded(collected, smoke, tmp_path_factory):
    exp, prepared, _ = smoke
    names, choices = prepared.layer_names, exp.quant.bit_choices
    rows = EvaluationStore(collected / exp.name / "evaluations", None).rows()
    data = aqgan.training_data(rows, names, choices)
    spec = gan.GanSpec(steps=150, predictor_members=2, predictor_epochs=300)
    model, metrics, _ = aqgan.fit(data, choices, spec)
    path = tmp_path_factory.mktemp("ckpt") / "aqgan.pt"
    aqgan.save_checkpoint(path, model, spec, names, choices, "k", metrics, aqgan.model_id(exp))
    return aqgan.load_checkpoint(path, names, choices, aqgan.model_id(exp))


def test_propose_ranks_distinct_proposals_by_distance_to_target(loaded, smoke):
    layers = smoke[1].layers
    target = float(loaded.model.scaler.unscale(0.8))
    proposals = propose(loaded, layers, target, n=200, top=6, seed=0)
    assert len(proposals) == 6 and len({p.config.hash for p in proposals}) == 6
    keys = [abs(p.predicted_acc - target) + p.predicted_std for p in proposals]
    assert keys == sorted(keys)
    assert all(p.cost is None and p.within_budget for p in proposals)


def test_every_proposal_fits_the_budget(loaded, smoke):
    exp, prepared, _ = smoke
    layers, choices = prepared.layers, exp.quant.bit_choices
    hw = get_hw_model("bismo-edge", layers, choices)
    target = float(loaded.model.scaler.unscale(0.8))
    # A budget at the median cost of what the generator makes for this target: about half of
    # its proposals are over it, so the filter has something to drop, whatever the store.
    free = propose(loaded, layers, target, 500, 40, 0)
    costs = hw.batch(
        layers, np.array([p.config.w_bits for p in free]), np.array([p.config.a_bits for p in free])
    )["latency_ms"]
    budget = parse_budget(f"latency_ms={np.median(costs)}", hw, layers, min(choices))
    proposals = propose(loaded, layers, target, 500, 40, 0, hw, budget)
    assert proposals and (costs > budget.value).any()
    assert all(p.within_budget and p.cost <= budget.value for p in proposals)
    for p in proposals:  # the cost reported is the cost model's, recomputed independently
        cost = hw.batch(layers, np.array([p.config.w_bits]), np.array([p.config.a_bits]))
        assert cost["latency_ms"][0] == pytest.approx(p.cost)


def test_budget_only_returns_the_most_accurate_that_fit(loaded, smoke):
    exp, prepared, _ = smoke
    layers, choices = prepared.layers, exp.quant.bit_choices
    hw = get_hw_model("size", layers, choices)
    budget = parse_budget("size_bytes=0.5x", hw, layers, min(choices))
    best = best_under_budget(loaded, layers, 200, 4, 0, hw, budget)
    assert len(best) == 4 and all(p.within_budget for p in best)
    scores = [p.predicted_acc - p.predicted_std for p in best]
    assert scores == sorted(scores, reverse=True)
    uniform4 = QuantConfig.uniform(prepared.layer_names, 4)  # exactly half of 8-bit size
    size = hw.batch(layers, np.array([uniform4.w_bits]), np.array([uniform4.a_bits]))
    assert size["size_bytes"][0] == pytest.approx(budget.value)


def test_expected_miss_averages_the_verified_proposals_nearest_the_prediction():
    verified = [(0.2, 0.25), (0.2, 0.19), (0.5, 0.5), (0.5, 0.46), (0.8, 0.81), (0.8, 0.79)]
    assert expected_miss(verified, 0.82, k=2) == pytest.approx(0.01)
    assert expected_miss(verified, 0.45, k=2) == pytest.approx(0.02)
    assert expected_miss(verified, 0.3, k=2) == pytest.approx(0.03)  # 0.2's two
    assert expected_miss([], 0.5) is None


def test_bred_configs_mix_the_nearest_below_and_above_the_target(loaded, smoke):
    """Later verification rounds also rank configs bred from verified ones: with the target
    bracketed, crossovers of the nearest below and above plus one-step mutations of the
    nearest; with everything on one side, one-step mutations."""
    layers = smoke[1].layers
    low, high = (
        propose(loaded, layers, loaded.model.scaler.unscale(c), 100, 1, 0)[0] for c in (0.2, 0.9)
    )
    lut = {b: i for i, b in enumerate(loaded.bit_choices)}

    def indices(p):
        return np.array(
            [[lut[w], lut[a]] for w, a in zip(p.config.w_bits, p.config.a_bits, strict=True)]
        )

    bracket = [Verified(low, 0.40, False, 1), Verified(high, 0.68, False, 1)]  # high nearer
    children = breed(loaded, bracket, 0.55, 200, seed=0)
    a, b = indices(low), indices(high)
    assert children.shape == (200, *a.shape)
    crossed, mutated = children[:100], children[100:]
    assert ((crossed == a) | (crossed == b)).all()
    differ = a != b
    assert differ.sum() > 10  # a 0.2 and a 0.9 target's configs differ in many layers
    from_a = (crossed == a)[:, differ].mean(1)
    assert 0.3 < from_a.mean() < 0.7 and from_a.std() > 0.1  # mixed, in varying shares
    assert np.abs(mutated - b).max() == 1 and 0 < (mutated != b).mean() < 0.2

    one_side = breed(loaded, bracket[:1], 0.55, 200, seed=0)
    assert np.abs(one_side - a).max() == 1 and 0 < (one_side != a).mean() < 0.2
    assert breed(loaded, bracket, 0.55, 1, seed=0).shape == (1, *a.shape)  # --n 1
