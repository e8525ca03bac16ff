"""Generation and selection under a hardware budget, on a generator trained on a synthetic store
of the smoke layer table: distinct proposals, every returned one within budget, ranked as
documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aqgan_ray.aqgan import checkpoint as aqgan
from aqgan_ray.aqgan import model as gan
from aqgan_ray.aqgan.data import indices_of
from aqgan_ray.aqgan.generate import (
    Query,
    Verified,
    best_under_budget,
    breed,
    expected_miss,
    propose,
)
from aqgan_ray.config import QuantConfig
from aqgan_ray.cost import get_hw_model, parse_budget


@pytest.fixture(scope="module")
def loaded(synthetic_aqgan):
    return synthetic_aqgan[0]


def test_propose_ranks_distinct_proposals_by_distance_to_target(loaded, smoke_layers):
    layers = smoke_layers
    target = float(loaded.model.scaler.unscale(0.8))
    proposals = propose(loaded, layers, Query(target, n=200, top=6, seed=0))
    assert len(proposals) == 6 and len({p.config.hash for p in proposals}) == 6
    keys = [abs(p.predicted_acc - target) + p.predicted_std for p in proposals]
    assert keys == sorted(keys)
    assert all(p.cost is None and p.within_budget for p in proposals)


def test_every_proposal_fits_the_budget(loaded, smoke_layers):
    layers, choices = smoke_layers, loaded.bit_choices
    hw = get_hw_model("bismo-edge", layers, choices)
    target = float(loaded.model.scaler.unscale(0.8))
    # A budget at the median cost of what the generator makes for this target: about half of
    # its proposals are over it, so the filter has something to drop, whatever the store.
    free = propose(loaded, layers, Query(target, n=500, top=40, seed=0))
    costs = hw.batch(
        layers, np.array([p.config.w_bits for p in free]), np.array([p.config.a_bits for p in free])
    )["latency_ms"]
    budget = parse_budget(f"latency_ms={np.median(costs)}", hw, layers, min(choices))
    proposals = propose(loaded, layers, Query(target, hw, budget, n=500, top=40, seed=0))
    assert proposals and (costs > budget.value).any()
    assert all(p.within_budget and p.cost <= budget.value for p in proposals)
    for p in proposals:  # the cost reported is the cost model's, recomputed independently
        cost = hw.batch(layers, np.array([p.config.w_bits]), np.array([p.config.a_bits]))
        assert cost["latency_ms"][0] == pytest.approx(p.cost)


def test_budget_only_returns_the_most_accurate_that_fit(loaded, smoke_layers):
    layers, choices = smoke_layers, loaded.bit_choices
    hw = get_hw_model("size", layers, choices)
    budget = parse_budget("size_bytes=0.5x", hw, layers, min(choices))
    best = best_under_budget(loaded, layers, Query(None, hw, budget, n=200, top=4, seed=0))
    assert len(best) == 4 and all(p.within_budget for p in best)
    scores = [p.predicted_acc - p.predicted_std for p in best]
    assert scores == sorted(scores, reverse=True)
    uniform4 = QuantConfig.uniform(loaded.layer_names, 4)  # exactly half of 8-bit size
    size = hw.batch(layers, np.array([uniform4.w_bits]), np.array([uniform4.a_bits]))
    assert size["size_bytes"][0] == pytest.approx(budget.value)


def test_expected_miss_averages_the_verified_proposals_nearest_the_prediction():
    verified = [(0.2, 0.25), (0.2, 0.19), (0.5, 0.5), (0.5, 0.46), (0.8, 0.81), (0.8, 0.79)]
    assert expected_miss(verified, 0.82, k=2) == pytest.approx(0.01)
    assert expected_miss(verified, 0.45, k=2) == pytest.approx(0.02)
    assert expected_miss(verified, 0.3, k=2) == pytest.approx(0.03)  # 0.2's two
    assert expected_miss([], 0.5) is None


def test_bred_configs_mix_the_nearest_below_and_above_the_target(loaded, smoke_layers):
    """Later verification rounds also rank configs bred from verified ones: with the target
    bracketed, crossovers of the nearest below and above plus one-step mutations of the
    nearest; with everything on one side, one-step mutations."""
    layers = smoke_layers
    low, high = (
        propose(loaded, layers, Query(float(loaded.model.scaler.unscale(c)), n=100, top=1))[0]
        for c in (0.2, 0.9)
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


def test_a_checkpoint_alone_serves_proposals_priced_on_its_own_layer_table(
    loaded, synthetic, tmp_path
):
    """``aq.load_generator(path)`` needs no experiment: the checkpoint holds its layer table."""
    import aqgan_ray as aq

    path = aqgan.save_checkpoint(
        tmp_path / "aqgan.pt", loaded.model, loaded.spec, loaded.layer_names,
        loaded.bit_choices, "k", {}, "smoke", synthetic.layers,
    )  # fmt: skip
    gen = aq.load_generator(path)
    target = float(loaded.model.scaler.unscale(0.8))
    ask = {"target_acc": target, "hw": "bismo-edge", "budget": "latency_ms=0.5x"}
    proposals = gen.propose(**ask, n=300, top=3, seed=0)
    hw = get_hw_model("bismo-edge", synthetic.layers, loaded.bit_choices)
    budget = parse_budget("latency_ms=0.5x", hw, synthetic.layers)
    same = propose(loaded, synthetic.layers, Query(target, hw, budget, n=300, top=3, seed=0))
    assert [p.config for p in proposals] == [p.config for p in same] and len(same) == 3
    assert all(p.within_budget and p.cost <= budget.value for p in proposals)
    # Told what a proposal measured, the ranker predicts that config at its measured accuracy.
    config = proposals[0].config
    measured = proposals[0].predicted_acc - 0.2
    told = gen.told([config], [measured])
    idx = torch.from_numpy(indices_of([(config.w_bits, config.a_bits)], loaded.bit_choices))
    before = gan.predict(gen.loaded.model, idx, len(loaded.bit_choices))[0][0]
    after = gan.predict(told.loaded.model, idx, len(loaded.bit_choices))[0][0]
    assert before == pytest.approx(proposals[0].predicted_acc, abs=1e-5)
    assert abs(after - measured) < 0.05 < abs(before - measured)
    with pytest.raises(aq.UserError, match="needs the hardware model"):
        gen.propose(target_acc=target, budget="latency_ms=0.5x")
    # A checkpoint saved without its layer table (as before this was stored) loads given them.
    old = aqgan.save_checkpoint(
        tmp_path / "old.pt", loaded.model, loaded.spec, loaded.layer_names, loaded.bit_choices,
        "k", {}, "smoke",
    )  # fmt: skip
    with pytest.raises(aq.UserError, match="holds no layer table"):
        aq.load_generator(old)
    again = aq.load_generator(old, synthetic.layers).propose(**ask, n=300, top=3, seed=0)
    assert [p.config for p in again] == [p.config for p in proposals]


def test_a_checkpoint_of_haqs_space_proposes_only_pinned_configs(loaded, synthetic, tmp_path):
    """keep_first_last: whatever the generator samples, the first and last layers are 8-bit."""
    from dataclasses import replace

    pinned = replace(loaded, keep_first_last=True)
    hw = get_hw_model("bismo-edge", synthetic.layers, loaded.bit_choices)
    budget = parse_budget("latency_ms=0.5x", hw, synthetic.layers, keep_first_last=True)
    target = float(loaded.model.scaler.unscale(0.8))
    found = propose(pinned, synthetic.layers, Query(target, hw, budget, n=300, top=3, seed=0))
    found += best_under_budget(pinned, synthetic.layers, Query(None, hw, budget, n=300, top=3))
    assert len(found) == 6
    for p in found:
        assert p.config == p.config.pinned() and p.within_budget and p.cost <= budget.value
    path = aqgan.save_checkpoint(
        tmp_path / "aqgan.pt", loaded.model, loaded.spec, loaded.layer_names,
        loaded.bit_choices, "k", {}, "smoke", synthetic.layers, keep_first_last=True,
    )  # fmt: skip
    assert aqgan.read_checkpoint(path).keep_first_last


def test_the_ranker_takes_in_aqgans_evaluations_only(loaded, synthetic):
    """Evidence by source: a baseline's stored rows never reach AQGAN's ranker."""
    sources = ["random", "haq", "optuna", "uniform"] * 3
    rows = [
        {**row, "eval_key": "k", "source": source}
        for row, source in zip(synthetic.rows(12, seed=5), sources, strict=True)
    ]
    assert aqgan.with_evidence(loaded, rows)[1] == 0
    own = [{**row, "source": "aqgan"} for row in rows[:4]]
    assert aqgan.with_evidence(loaded, rows + own)[1] == 4
