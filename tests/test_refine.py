"""Active refinement on real evaluations of the smoke model (in-process evaluator): targets
between the fidelity grid's, every proposal evaluated and logged, rounds resumed not redone."""

from __future__ import annotations

import numpy as np
import pytest

from aqgan_ray import aqgan, gan
from aqgan_ray.evaluate import Evaluator
from aqgan_ray.refine import TOLERANCE, refine, refinement_targets, summary
from aqgan_ray.store import EvaluationStore


def test_refinement_targets_sit_between_the_fidelity_targets():
    lo, hi = 0.1, 0.9
    fidelity = aqgan.fidelity_targets(lo, hi, 5)
    refine_at = refinement_targets(lo, hi, 4)
    assert refine_at[0] > fidelity[0] and refine_at[-1] < fidelity[-1]
    assert not np.isin(refine_at, fidelity).any()
    assert np.allclose(np.diff(refine_at), (hi - aqgan.band_start(lo, hi)) / 4)


@pytest.fixture(scope="module")
def start(collected, smoke):
    exp, prepared, splits = smoke
    names, choices = prepared.layer_names, exp.quant.bit_choices
    rows = EvaluationStore(collected / exp.name / "evaluations", None).rows()
    spec = gan.GanSpec(steps=60, predictor_members=2, predictor_epochs=200)
    model, _, _ = aqgan.fit(aqgan.training_data(rows, names, choices), choices, spec)
    return aqgan.Loaded(model, spec, names, tuple(choices), "k", {}), rows


def test_refine_evaluates_learns_and_resumes(start, smoke):
    exp, prepared, splits = smoke
    loaded, rows = start
    rows = list(rows)
    evaluator = Evaluator(prepared, (splits.val_x, splits.val_y), compile=False)
    asked, persisted = [], []

    def evaluate(configs):
        out = []
        for config in configs:
            asked.append(config.hash)
            acc = evaluator.evaluate(config).val_acc
            rows.append({"config_hash": config.hash, "w_bits": config.w_bits,
                         "a_bits": config.a_bits, "val_acc": acc})  # fmt: skip
            out.append((acc, False))
        return out

    def data_of():
        return aqgan.training_data(rows, loaded.layer_names, loaded.bit_choices)

    def on_round(r, log, model):
        persisted.append((r, len(log)))

    log: list[dict] = []
    model = refine(loaded, 2, 2, data_of, evaluate, log, on_round)
    assert model is not loaded.model and [r for r, _ in persisted] == [0, 1][: len(persisted)]
    assert persisted[0][0] == 0
    assert [row["round"] for row in log][:2] == [0, 0] and len(asked) == len(log) <= 4
    first = [row for row in log if row["round"] == 0]
    hit = {row["target_index"] for row in first if
           abs(row["achieved_val_acc"] - row["target_acc"]) <= TOLERANCE}  # fmt: skip
    second = {row["target_index"] for row in log if row["round"] == 1}
    assert not hit & second  # a target already reached is not asked again
    assert [s["evaluations"] for s in summary(log)] == [2, len(second)][: 1 + bool(second)]

    before, rounds = len(asked), len(persisted)
    refine(loaded, 2, 2, data_of, evaluate, log, on_round)  # both rounds done: nothing to do
    assert len(asked) == before and len(persisted) == rounds
    done = len(log)
    refine(loaded, 3, 2, data_of, evaluate, log, on_round)  # one more round, and only that
    assert {row["round"] for row in log[done:]} <= {2} and len(asked) == before + len(log) - done
