"""Optuna's TPE as a proposer: its journal never runs ahead of the checkpoint, and is brought in
line with it on resume. Searches killed at every point of the loop are in tests/test_search.py."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from aqgan_ray.errors import UserError
from baselines.optuna_tpe import OptunaTPE


@pytest.fixture
def point(point_at):
    return point_at("latency_ms=0.5x")


def test_the_journal_is_told_only_once_the_checkpoint_is_written(point, tmp_path):
    journal = tmp_path / "optuna.journal"
    tpe = OptunaTPE(point, seed=3, storage_path=journal)
    tpe.committed()
    configs = tpe.ask(2)
    tpe.tell(configs, [0.5, 0.6])
    state = tpe.state_dict()  # the checkpoint; the driver is killed before `committed`
    assert [t.state for t in tpe.study.trials] == [TrialState.RUNNING] * 2

    resumed = OptunaTPE(point, seed=3, storage_path=journal)
    resumed.load_state_dict(state)
    resumed.committed()  # told from the checkpoint
    assert [(t.state, t.value) for t in resumed.study.trials] == [
        (TrialState.COMPLETE, 0.5),
        (TrialState.COMPLETE, 0.6),
    ]
    asked_after = resumed.ask(1)  # then killed before its checkpoint: failed on the next start
    again = OptunaTPE(point, seed=3, storage_path=journal)
    again.load_state_dict(state)
    again.committed()
    assert again.study.trials[-1].state == TrialState.FAIL
    assert again.ask(1) == asked_after  # seeded by its place in the trace: asked again as it was


def test_a_journal_ahead_of_its_checkpoint_is_refused(point, tmp_path):
    journal = tmp_path / "optuna.journal"
    tpe = OptunaTPE(point, seed=3, storage_path=journal)
    tpe.tell(tpe.ask(1), [0.5])
    tpe.committed()
    fresh = OptunaTPE(point, seed=3, storage_path=journal)  # its state.pt deleted, say
    with pytest.raises(UserError, match="does not match its search's checkpoint"):
        fresh.committed()  # TPE would learn from a result no trace charges
    with pytest.raises(UserError, match="earlier aqgan-ray"):
        fresh.load_state_dict({"told": 1})  # the format that could charge a trial twice


def test_the_sampler_variant_starts_from_the_collection_samplers_fitting_draws(point, tmp_path):
    from baselines.optuna_tpe import STARTUP_TRIALS, OptunaSamplerStart
    from baselines.random_sampler import fitting_draw, sampler_for

    tpe = OptunaSamplerStart(point, seed=2, storage_path=tmp_path / "a.journal")
    tpe.committed()
    configs = tpe.ask(STARTUP_TRIALS + 2)
    expected = [
        fitting_draw(sampler_for(point, tpe._seed(k)), point)[0] for k in range(STARTUP_TRIALS)
    ]
    assert configs[:STARTUP_TRIALS] == expected  # fit as drawn: repair leaves them unchanged
    assert all(point.fits(c) for c in configs)
    # a second search with the same seed asks the same, the TPE trials after start-up included
    again = OptunaSamplerStart(point, seed=2, storage_path=tmp_path / "b.journal")
    again.committed()
    assert again.ask(STARTUP_TRIALS + 2) == configs


def test_a_first_batch_larger_than_the_start_up_is_drawn_from_the_sampler_whole(point, tmp_path):
    """TPE draws at random until ten trials are complete: with a batch of 16 all 16 are start-up
    trials, so all come from the collection sampler."""
    from baselines.optuna_tpe import OptunaSamplerStart
    from baselines.random_sampler import fitting_draw, sampler_for

    tpe = OptunaSamplerStart(point, seed=5, storage_path=tmp_path / "a.journal")
    tpe.committed()
    configs = tpe.ask(16)
    expected = [fitting_draw(sampler_for(point, tpe._seed(k)), point)[0] for k in range(16)]
    assert configs == expected
