"""Hardware tuning at one design point, on a generator trained on a synthetic store of the smoke
layer table (``conftest.SyntheticStore`` scores configs): every candidate fits, a padded Bit
Fusion budget that no proposal meets as sampled is met after projection, the choice is never
below the best training row within budget, and at most ``top`` configs are verified."""

from __future__ import annotations

import numpy as np
import pytest

from aqgan_ray.aqgan import model as gan
from aqgan_ray.aqgan.data import configs_of
from aqgan_ray.aqgan.hw_tune import (
    Ranker,
    TunedAqgan,
    TuneSpec,
    candidates,
    project,
    training_arrays,
)
from aqgan_ray.cost import parse_budget
from aqgan_ray.search import DesignPoint
from baselines.store_best import StoreBest


@pytest.fixture(scope="module")
def trained(synthetic_aqgan):
    return synthetic_aqgan


def _search(method: TunedAqgan, synthetic) -> list[float]:
    """What ``run_search`` does with it, scored by the synthetic store."""
    measured = []
    while configs := method.ask(4):
        accs = [synthetic.accuracy(c) for c in configs]
        method.tell(configs, accs)
        measured += accs
    return measured


def _padded_point(loaded, point_at):
    """Bit Fusion latency below the cheapest of the generator's samples for its top target: no
    proposal fits as sampled (5-7 bits cost what 8 do on its 2/4/8-bit lanes)."""
    point = point_at("latency_ms=1x", hw="bitfusion")
    idx, _, _ = gan.sample(loaded.model, loaded.model.scaler.hi, 200, 0)
    bits = np.asarray(loaded.bit_choices)[idx]
    cheapest = float(point.costs(bits[:, :, 0], bits[:, :, 1]).min())
    budget = parse_budget(f"latency_ms={0.97 * cheapest}", point.hw, point.layers)
    return DesignPoint(point.layers, point.bit_choices, point.hw, budget), idx


def test_projection_meets_a_padded_budget_that_no_proposal_meets(trained, point_at):
    loaded, _ = trained
    point, sampled = _padded_point(loaded, point_at)
    ranker = Ranker(loaded, point)
    assert not ranker.fits(ranker.cost(sampled)).any()
    projected = project(ranker, sampled[:20])
    assert ranker.fits(ranker.cost(projected)).all()
    # a projection lowers bits and never raises one
    assert (projected <= sampled[:20]).all()


def test_every_candidate_fits_and_none_is_a_training_row(trained, point_at):
    loaded, rows = trained
    point, _ = _padded_point(loaded, point_at)
    ranker = Ranker(loaded, point)
    pool = candidates(ranker, *training_arrays(loaded, rows), seed=0, samples=100)
    assert len(pool.idx) and ranker.fits(ranker.cost(pool.idx)).all()
    hashes = {c.hash for c in configs_of(pool.idx, loaded.layer_names, loaded.bit_choices)}
    assert not hashes & {r["config_hash"] for r in rows}
    assert {o.split("+")[0] for o in pool.origin} <= {"generator", "store", "bred"}
    assert any(o.startswith("generator") for o in pool.origin)


@pytest.mark.parametrize(
    ("hw", "budget"),
    [
        ("bitfusion", "latency_ms=0.7x"),
        ("bismo-edge", "energy_mj=0.3x"),
        ("bismo-edge", "energy_mj=0.5x"),
    ],  # fmt: skip
)
def test_the_choice_fits_and_is_never_below_the_best_stored(trained, synthetic, point_at, hw,
                                                            budget):  # fmt: skip
    loaded, rows = trained
    point = point_at(budget, hw=hw)
    method = TunedAqgan(loaded, point, seed=0, samples=100, top=2, stored=rows)
    measured = _search(method, synthetic)
    assert 1 <= len(measured) <= 2 and all(point.fits(c) for c, _ in method.asked)
    floor = StoreBest(point, rows).choice
    assert floor is not None and method.incumbent[0] == floor
    assert max(measured) >= method.incumbent[1]
    assert [method.origin(c) for c, _ in method.asked] == method.summary()["origins"]


def test_without_a_fitting_training_row_it_verifies_candidates(trained, synthetic, point_at):
    loaded, rows = trained
    point, _ = _padded_point(loaded, point_at)
    over = [r for r in rows if not point.fits(point.config(r["w_bits"], r["a_bits"]))]
    method = TunedAqgan(loaded, point, seed=0, samples=100, top=2, stored=over)
    assert method.incumbent is None
    measured = _search(method, synthetic)
    # a second only while one is predicted above the first's measured accuracy
    assert 1 <= len(measured) <= 2 and all(point.fits(c) for c, _ in method.asked)
    assert all(o != "store" for _, o in method.asked)


def test_a_resumed_tuning_asks_what_an_uninterrupted_one_would(trained, synthetic, point_at):
    loaded, rows = trained
    point = point_at("energy_mj=0.3x")
    spec = TuneSpec(sources=("generator", "bred"))  # the store's candidates left out: more asks
    whole = TunedAqgan(loaded, point, 0, 100, 3, rows, spec)
    _search(whole, synthetic)
    first = TunedAqgan(loaded, point, 0, 100, 3, rows, spec)
    configs = first.ask(1)
    first.tell(configs, [synthetic.accuracy(c) for c in configs])
    resumed = TunedAqgan(loaded, point, 0, 100, 3, rows, spec)
    resumed.load_state_dict(first.state_dict())
    _search(resumed, synthetic)
    assert [c.hash for c, _ in resumed.asked] == [c.hash for c, _ in whole.asked]


def test_store_best_takes_the_most_accurate_fitting_row_whatever_the_order(synthetic, point_at):
    rows = synthetic.rows(40)
    point = point_at("energy_mj=0.4x")
    fitting = [r for r in rows if point.fits(point.config(r["w_bits"], r["a_bits"]))]
    best = max(fitting, key=lambda r: r["val_acc"])
    assert StoreBest(point, rows).choice.hash == best["config_hash"]
    assert StoreBest(point, rows[::-1]).choice.hash == best["config_hash"]
    method = StoreBest(point, rows)
    assert method.ask(3) == [method.choice] and method.ask(3) == []
    assert StoreBest(point, []).ask(1) == []


def test_sampler_ranked_tunes_the_samplers_draws_in_the_generators_place(
    trained, synthetic, point_at
):
    from baselines.sampler_ranked import SamplerRanked

    loaded, rows = trained
    point = point_at("energy_mj=0.4x")
    method = SamplerRanked(loaded, point, seed=0, samples=100, top=2, stored=rows)
    pool, _ = method._ranked()
    assert {o.split("+")[0] for o in pool.origin} <= {"sampler", "store", "bred"}
    assert any(o.startswith("sampler") for o in pool.origin)
    measured = _search(method, synthetic)
    assert 1 <= len(measured) <= 2 and all(point.fits(c) for c, _ in method.asked)
    assert max(measured) >= method.incumbent[1]  # the same floor as AQGAN's


def test_gan_unranked_verifies_the_first_fitting_samples_for_the_highest_targets(trained, point_at):
    from baselines.gan_unranked import GanUnranked

    loaded, _ = trained
    point = point_at("energy_mj=0.5x")
    method = GanUnranked(loaded, point, seed=0, samples=100, top=3)
    picks = method.picks()
    assert len(picks) == 3 and len({c.hash for c in picks}) == 3
    assert all(point.fits(c) for c in picks)
    assert method.ask(2) == picks[:2] and method.ask(2) == picks[2:] and method.ask(2) == []
    resumed = GanUnranked(loaded, point, seed=0, samples=100, top=3)
    resumed.load_state_dict({"asked": 2})
    assert resumed.ask(5) == picks[2:]
