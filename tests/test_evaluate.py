from __future__ import annotations

from dataclasses import replace

import pytest

import aqgan_ray.prepare as prepare_module
from aqgan_ray.config import QuantConfig
from aqgan_ray.evaluate import Evaluator
from aqgan_ray.prepare import prepare


@pytest.fixture(scope="module")
def evaluator(smoke):
    _, prepared, splits = smoke
    return Evaluator.from_splits(prepared, splits)


def test_float_model_is_trained(smoke):
    _, prepared, splits = smoke
    assert prepared.fp_val_acc > 0.8 and prepared.fp_test_acc > 0.8
    assert len(splits.val_x) == 2000


def test_eight_bits_keeps_accuracy_two_bits_loses_it(smoke, evaluator):
    _, prepared, _ = smoke
    names = prepared.layer_names
    eight = evaluator.evaluate(QuantConfig.uniform(names, 8), with_test=True)
    two = evaluator.evaluate(QuantConfig.uniform(names, 2).pinned(), with_test=True)
    assert abs(eight.val_acc - prepared.fp_val_acc) <= 0.005
    assert abs(eight.test_acc - prepared.fp_test_acc) <= 0.01
    assert two.val_acc < prepared.fp_val_acc - 0.2
    assert (
        evaluator.evaluate(QuantConfig.uniform(names, 4).pinned()).test_acc is None
    )  # only when asked


def test_evaluation_is_deterministic_and_order_free(smoke, evaluator):
    names = smoke[1].layer_names
    n = len(names)
    mixed = QuantConfig(
        names, tuple(2 + i % 7 for i in range(n)), tuple(8 - i % 5 for i in range(n))
    ).pinned()  # HAQ's search space, the smoke preset's
    first = evaluator.evaluate(mixed).val_acc
    evaluator.evaluate(QuantConfig.uniform(names, 3).pinned())
    assert evaluator.evaluate(mixed).val_acc == first
    assert evaluator.float_accuracy(*evaluator.val) == smoke[1].fp_val_acc


def test_compiled_matches_eager(smoke, evaluator):
    _, prepared, splits = smoke
    compiled = Evaluator(prepared, val=(splits.val_x[:1500], splits.val_y[:1500]), compile=True)
    eager = Evaluator(prepared, val=(splits.val_x[:1500], splits.val_y[:1500]), compile=False)
    names = prepared.layer_names
    for bits in (3, 6):  # the second config must reuse the compiled graph with new scales
        config = QuantConfig.uniform(names, bits, a_bits=bits + 1).pinned()
        assert abs(compiled.evaluate(config).val_acc - eager.evaluate(config).val_acc) <= 0.001


def test_finetune_recovers_low_bit_accuracy(smoke):
    exp, prepared, splits = smoke
    spec = replace(exp.eval, finetune_steps=40, finetune_lr=0.01)
    tuned = Evaluator(
        prepared,
        val=(splits.val_x, splits.val_y),
        train=(splits.train_x, splits.train_y),
        spec=spec,
    )
    config = QuantConfig(
        prepared.layer_names, (3,) * len(prepared.layers), (4,) * len(prepared.layers)
    ).pinned()
    ptq = Evaluator(prepared, val=(splits.val_x, splits.val_y)).evaluate(config).val_acc
    assert tuned.evaluate(config).val_acc > ptq + 0.02
    # The fine-tuned weights do not leak into the next config.
    assert tuned.float_accuracy(*tuned.val) == prepared.fp_val_acc


def test_second_prepare_uses_the_cache(smoke, cache_dir, monkeypatch):
    exp, prepared, _ = smoke

    def no_training(*args, **kwargs):
        raise AssertionError("prepare retrained a cached model")

    monkeypatch.setattr(prepare_module, "train_model", no_training)
    again, _ = prepare(exp, cache_dir, progress=False)
    assert again.checkpoint == prepared.checkpoint
    assert again.fp_val_acc == prepared.fp_val_acc
    assert again.calibration.act_scale == prepared.calibration.act_scale
