"""Active refinement on a synthetic store of the smoke layer table (configs scored by the
synthetic accuracy function): targets between the fidelity grid's, every proposal evaluated and
logged, rounds resumed not redone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aqgan_ray.aqgan import model as gan
from aqgan_ray.aqgan.checkpoint import Loaded
from aqgan_ray.aqgan.data import band_start, fidelity_targets, training_data
from aqgan_ray.aqgan.fit import fit
from aqgan_ray.aqgan.refine import (
    TOLERANCE,
    refine,
    refinement_targets,
    summary,
    training_rows,
)


def test_refinement_targets_sit_between_the_fidelity_targets():
    lo, hi = 0.1, 0.9
    fidelity = fidelity_targets(lo, hi, 5)
    refine_at = refinement_targets(lo, hi, 4)
    assert refine_at[0] > fidelity[0] and refine_at[-1] < fidelity[-1]
    assert not np.isin(refine_at, fidelity).any()
    assert np.allclose(np.diff(refine_at), (hi - band_start(lo, hi)) / 4)


def _data(rows, kept, loaded):
    """Training data as ``aqgan.train`` builds it for a round."""
    return training_data(training_rows(rows, kept), loaded.layer_names, loaded.bit_choices)


@pytest.fixture(scope="module")
def start(synthetic):
    names, choices = synthetic.names, synthetic.choices
    rows = synthetic.rows(40)
    spec = gan.GanSpec(steps=60, predictor_members=2, predictor_epochs=200)
    model, _, _ = fit(training_data(rows, names, choices), choices, spec)
    return Loaded(model, spec, names, tuple(choices), "k", {}), rows


def test_refine_evaluates_learns_and_resumes(start, synthetic):
    loaded, rows = start
    rows = list(rows)
    asked, persisted = [], []

    def evaluate(configs):
        out = []
        for config in configs:
            asked.append(config.hash)
            acc = synthetic.accuracy(config)
            rows.append({"config_hash": config.hash, "w_bits": config.w_bits,
                         "a_bits": config.a_bits, "val_acc": acc, "source": "refine"})  # fmt: skip
            out.append((acc, False))
        return out

    def data_of(kept):
        return _data(rows, kept, loaded)

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


def test_a_resumed_refinement_ends_with_the_uninterrupted_model(start, synthetic):
    """Interrupted after round 0 was written and after round 1's evaluations landed in the
    store (not yet in the log): resuming replays round 0's training on the store as it was
    then and gives the model of a run never interrupted."""
    loaded, base = start
    memo: dict[str, float] = {}

    def run(rounds, log, rows, stop_after_eval=None):
        def evaluate(configs):
            out = []
            for config in configs:
                cached = any(r["config_hash"] == config.hash for r in rows)
                if config.hash not in memo:
                    memo[config.hash] = synthetic.accuracy(config)
                if not cached:
                    rows.append({"config_hash": config.hash, "w_bits": config.w_bits,
                                 "a_bits": config.a_bits, "val_acc": memo[config.hash],
                                 "source": "refine"})  # fmt: skip
                out.append((memo[config.hash], cached))
            if stop_after_eval is not None and log and log[-1]["round"] == stop_after_eval - 1:
                raise KeyboardInterrupt  # round stop_after_eval evaluated, not yet logged
            return out

        return refine(loaded, rounds, 3, lambda kept: _data(rows, kept, loaded), evaluate, log,
                      lambda *_: None)  # fmt: skip

    whole = run(2, [], list(base))
    log, rows = [], list(base)
    with pytest.raises(KeyboardInterrupt):
        run(2, log, rows, stop_after_eval=1)
    assert {r["round"] for r in log} == {0} and len(rows) > len(base) + len(log)
    resumed = run(2, log, rows)
    for a, b in zip(whole.generator.parameters(), resumed.generator.parameters(), strict=True):
        assert torch.equal(a, b)
    assert np.array_equal(gan.sample(whole, 0.5, 16, 3)[1], gan.sample(resumed, 0.5, 16, 3)[1])


def test_training_rows_are_the_collected_and_the_kept_refinement_only(synthetic):
    rows = synthetic.rows(6)
    sources = ["collect", "collect", "refine", "refine", "random", "aqgan"]
    tagged = [{**row, "source": source} for row, source in zip(rows, sources, strict=True)]
    kept = {tagged[2]["config_hash"]}
    assert training_rows(tagged, kept) == tagged[:3]
