"""AQGAN's model on a synthetic store of the smoke layer table (no Ray, no training of the base
model): seeded and reproducible, proposals valid and diverse, the predictor better than knowing
only the mean, checkpoints safe and checked; and once on real evaluations of the smoke model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

from aqgan_ray.aqgan import checkpoint as aqgan
from aqgan_ray.aqgan import model as gan
from aqgan_ray.aqgan.data import training_data
from aqgan_ray.aqgan.fit import fit
from aqgan_ray.errors import UserError
from aqgan_ray.settings import load_experiment
from aqgan_ray.store import EvaluationStore

QUICK = gan.GanSpec(steps=150, predictor_members=2, predictor_epochs=300)


@pytest.fixture(scope="module")
def preset(synthetic):
    """(experiment, layer names) of the smoke preset; the layer table is the architecture's."""
    return load_experiment("smoke"), synthetic.names


@pytest.fixture(scope="module")
def rows(synthetic):
    return synthetic.rows(60)


@pytest.fixture(scope="module")
def data(rows, preset):
    exp, names = preset
    return training_data(rows, names, exp.quant.bit_choices)


@pytest.fixture(scope="module")
def trained(data, preset):
    exp = preset[0]
    return fit(data, exp.quant.bit_choices, QUICK)


def test_training_is_seeded_and_reproducible(data, preset, trained):
    again, metrics, _ = fit(data, preset[0].quant.bit_choices, QUICK)
    first = trained[0]
    for a, b in zip(first.generator.parameters(), again.generator.parameters(), strict=True):
        assert torch.equal(a, b)
    one = gan.sample(first, 0.8, 32, seed=5)
    two = gan.sample(again, 0.8, 32, seed=5)
    assert np.array_equal(one[0], two[0]) and metrics == trained[1]


def test_proposals_are_valid_diverse_and_conditioned(trained, preset):
    model = trained[0]
    k = len(preset[0].quant.bit_choices)
    lo, hi = model.scaler.lo, model.scaler.hi
    high, low = hi - 0.05 * (hi - lo), lo + 0.3 * (hi - lo)
    idx_hi, pred_hi, _ = gan.sample(model, high, 128, seed=0)
    idx_lo, pred_lo, _ = gan.sample(model, low, 128, seed=0)
    assert idx_hi.shape == (128, 53, 2) and idx_hi.min() >= 0 and idx_hi.max() < k
    assert len({row.tobytes() for row in idx_hi}) > 100  # no collapse onto a few configs
    # The condition steers: a higher target gives more bits and a higher predicted accuracy.
    assert idx_hi.mean() > idx_lo.mean()
    assert np.median(pred_hi) > np.median(pred_lo)


def test_predictor_beats_the_mean_on_held_out_configs(data, trained):
    _, metrics, holdout = trained
    train = np.setdiff1d(np.arange(len(data.acc)), holdout.numpy())
    baseline = np.abs(data.acc[holdout].numpy() - data.acc[train].mean().item()).mean()
    assert metrics["heldout_mae"] < baseline
    assert set(metrics) >= {"heldout_mae", "cond_err", "objective", "top4_distinct"}


def test_on_real_evaluations_the_predictor_beats_the_mean(collected, synthetic):
    """The same check on 40 real evaluations of the smoke model, collected on Ray."""
    exp = load_experiment("smoke")
    real = EvaluationStore(collected / exp.name / "evaluations", None).rows()
    data = training_data(real, synthetic.names, exp.quant.bit_choices)  # the smoke layers
    _, metrics, holdout = fit(data, exp.quant.bit_choices, QUICK)
    train = np.setdiff1d(np.arange(len(data.acc)), holdout.numpy())
    baseline = np.abs(data.acc[holdout].numpy() - data.acc[train].mean().item()).mean()
    assert metrics["heldout_mae"] < baseline


def test_checkpoint_round_trip_is_weights_only_and_checked(tmp_path, trained, preset, synthetic):
    exp, names = preset
    model, metrics, _ = trained
    choices = exp.quant.bit_choices
    path = aqgan.save_checkpoint(
        tmp_path / "aqgan.pt", model, QUICK, names, choices, "key", metrics, aqgan.model_id(exp),
        synthetic.layers,
    )  # fmt: skip
    torch.load(path, weights_only=True)  # plain tensors and containers only
    loaded = aqgan.load_checkpoint(path, names, choices, aqgan.model_id(exp))
    for a, b in zip(gan.sample(loaded.model, 0.8, 8, 1), gan.sample(model, 0.8, 8, 1), strict=True):
        assert np.array_equal(a, b)  # configs, predictions and their std (the residual GP's)
    assert loaded.eval_key == "key" and loaded.spec == QUICK
    assert loaded.layers == synthetic.layers  # priced without the experiment: load_generator
    other = aqgan.model_id(replace(exp, model=replace(exp.model, width=1.0)))
    with pytest.raises(UserError, match="trained for mobilenet_v2 width 0.35"):
        aqgan.load_checkpoint(path, names, choices, other)
    with pytest.raises(UserError, match="bit choices"):
        aqgan.load_checkpoint(path, names, (2, 4, 8), aqgan.model_id(exp))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="unreadable"):
        aqgan.load_checkpoint(path, names, choices, aqgan.model_id(exp))


def test_training_data_does_not_depend_on_the_stores_row_order(rows, preset, data):
    """Rows land in the store in evaluation completion order, which varies from run to run."""
    exp, names = preset
    again = training_data(rows[::-1], names, exp.quant.bit_choices)
    assert torch.equal(again.idx, data.idx) and torch.equal(again.acc, data.acc)
    assert again.hashes == data.hashes == tuple(sorted(data.hashes))


def test_too_small_a_store_is_refused(rows, preset):
    exp, names = preset
    with pytest.raises(UserError, match="needs at least 30"):
        training_data(rows[:10], names, exp.quant.bit_choices)


def test_the_residual_gp_is_sklearns_posterior_and_knows_where_it_has_data(data, preset):
    """The torch posterior stored in checkpoints equals scikit-learn's; its std is small at the
    store's configs and large far from them (the ensemble's spread is not:
    docs/fidelity-history.md)."""
    choices = preset[0].quant.bit_choices
    x = gan.one_hot(data.idx, len(choices))
    power = gan.noise_power(choices)
    feats = gan.noise_features(x, power)
    residual = (data.acc - data.acc.mean()) * 3  # any target will do for the identity
    gp = gan.fit_residual(feats[:30], residual[:30], seed=0)
    amplitude, lengthscale, noise = gp.hyper.tolist()
    kernel = ConstantKernel(amplitude) * RBF(lengthscale) + WhiteKernel(noise)
    reference = GaussianProcessRegressor(kernel, optimizer=None).fit(
        feats[:30].double().numpy(), residual[:30].double().numpy()
    )
    want_mean, want_std = reference.predict(feats[30:].double().numpy(), return_std=True)
    mean, std = gp(feats[30:])
    np.testing.assert_allclose(mean.numpy(), want_mean, atol=1e-5)
    np.testing.assert_allclose(std.numpy(), want_std, atol=1e-5)
    # Far from the data: the farthest of a few extreme configs (all 2 bits can be stored).
    k = len(choices) - 1
    extremes = torch.zeros(4, 53, 2)
    extremes[1, :, 1] = k  # 2-bit weights, 8-bit activations
    extremes[2, :, 0] = k
    extremes[3, ::2] = k  # every other layer at 8 bits, the rest at 2
    candidates = gan.noise_features(gan.one_hot(extremes, len(choices)), power)
    far = candidates[torch.cdist(candidates, feats[:30]).min(1).values.argmax()][None]
    assert torch.cdist(far, feats[:30]).min() > 1.0
    assert gp(feats[:30])[1].max() < gp(far)[1].item()
    # Conditioning on more points with the hyperparameters kept is scikit-learn's posterior on
    # all of them; points it already holds change nothing.
    told = gp.condition(feats[20:], residual[20:])
    assert len(told.x) == len(feats) and gp.condition(feats[:30], residual[:30]) is gp
    reference.fit(feats.double().numpy(), residual.double().numpy())
    want_mean, want_std = reference.predict(far.double().numpy(), return_std=True)
    mean, std = told(far)
    np.testing.assert_allclose(mean.numpy(), want_mean, atol=1e-5)
    np.testing.assert_allclose(std.numpy(), want_std, atol=1e-5)
    np.testing.assert_allclose(told(feats)[0].numpy(), residual.numpy(), atol=0.05)
