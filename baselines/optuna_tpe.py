"""Optuna's TPE over per-layer bits: the strong generic black-box baseline.

Search space: one integer parameter per layer and kind (``w017``, ``a017``) over the bit choices
(an ordered integer range when the choices are contiguous, so TPE can use the order;
categorical otherwise). The budget is met by HAQ's enforcement (``DesignPoint.repair``): the
config evaluated is the repaired one, and TPE is told its accuracy for the parameters it
proposed, as HAQ's agent learns from its unrepaired actions.

Sampler: ``TPESampler(multivariate=True)``, which models the layers jointly (per-layer bits
interact through the accuracy), with ``constant_liar`` so that a batch asked at once for
parallel evaluators spreads out instead of repeating one point, and Optuna's default ten random
start-up trials.

Resuming: the checkpoint (``state.pt``) is the one record of what TPE paid for, and the study
in ``optuna.journal`` is brought in line with it, never ahead of it. ``tell`` only records
results; the journal is told them in ``committed``, once the checkpoint holding them is written.
So after a kill the journal may lag (trials the checkpoint holds, still running there: told from
the checkpoint on resume) or hold trials asked after the last checkpoint (failed on resume:
TPE ignores failed trials, so it learns from nothing it was not charged for), never a result
the trace lacks. Each ask's draws are seeded by the seed and the trial's place in the trace,
so the sampler holds no state of its own, and the failed trials' configs are asked again,
exactly as an uninterrupted search would ask them (answered from the evaluation store).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from aqgan_ray.config import PINNED_BITS, QuantConfig
from aqgan_ray.errors import UserError
from aqgan_ray.search import DesignPoint, Proposer

STARTUP_TRIALS = 10  # Optuna's default: random trials before TPE models the results


class OptunaTPE(Proposer):
    name = "optuna"

    def __init__(self, point: DesignPoint, seed: int, storage_path: Path):
        self.point, self.seed, self.storage_path = point, seed, storage_path
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage_path.parent.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(storage_path)))
        self.distributions = self._space(point)
        self.trials: list[int] = []  # the study's trial number of every trace row, in order
        self.values: list[float] = []  # and its validation accuracy
        self._asked: list[int] = []  # trial numbers of the last ask, not told yet
        self.study = optuna.create_study(
            study_name="optuna-tpe",
            storage=storage,
            sampler=self._sampler(0),
            direction="maximize",
            load_if_exists=True,
        )

    def _seed(self, k: int) -> int:
        return int(np.random.SeedSequence([self.seed, k]).generate_state(1)[0])

    def _sampler(self, k: int) -> optuna.samplers.BaseSampler:
        """The sampler for the ``k``-th trial of the trace: seeded by (seed, k), so no random
        state outlives an ask and none needs checkpointing."""
        with warnings.catch_warnings():  # multivariate/constant_liar are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=self._seed(k),
                multivariate=True,
                constant_liar=True,
                n_startup_trials=STARTUP_TRIALS,
            )

    @staticmethod
    def _space(point: DesignPoint) -> dict[str, BaseDistribution]:
        choices = sorted(point.bit_choices)
        contiguous = choices == list(range(choices[0], choices[-1] + 1))

        def dist() -> BaseDistribution:
            if contiguous:
                return IntDistribution(choices[0], choices[-1])
            return CategoricalDistribution(choices)

        n = len(point.layers)
        # Layers pinned by keep_first_last are no parameters: TPE models only what is free.
        pinned = {0, n - 1} if point.keep_first_last else set()
        space: dict[str, BaseDistribution] = {}
        for i in (i for i in range(n) if i not in pinned):
            space[f"w{i:03d}"] = dist()
            space[f"a{i:03d}"] = dist()
        return space

    def _config(self, params: dict[str, Any]) -> QuantConfig:
        n = len(self.point.layers)
        config = self.point.config(  # a pinned layer's bits: point.config sets them
            [params.get(f"w{i:03d}", PINNED_BITS) for i in range(n)],
            [params.get(f"a{i:03d}", PINNED_BITS) for i in range(n)],
        )
        return self.point.repair(config)

    def ask(self, n: int) -> list[QuantConfig]:
        configs = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for _ in range(n):
                self.study.sampler = self._sampler(len(self.trials) + len(self._asked))
                trial = self.study.ask(self.distributions)
                config = self._config(trial.params)
                trial.set_user_attr("config_hash", config.hash)  # the repaired config's
                self._asked.append(trial.number)
                configs.append(config)
        return configs

    def tell(self, configs: Sequence[QuantConfig], val_accs: Sequence[float]) -> None:
        """Recorded here, told to the study in ``committed`` (after the checkpoint)."""
        asked, self._asked = self._asked, []
        for number, acc in zip(asked, val_accs, strict=True):
            self.trials.append(number)
            self.values.append(float(acc))

    def committed(self) -> None:
        """Bring the journal in line with the checkpoint: tell it the checkpointed results it
        lacks, fail the trials asked after the checkpoint."""
        told = dict(zip(self.trials, self.values, strict=True))
        in_study = set()
        for trial in self.study.get_trials(deepcopy=False):
            in_study.add(trial.number)
            if trial.number in told and trial.state == TrialState.RUNNING:
                self.study.tell(trial.number, told[trial.number])
            elif trial.number not in told and trial.state == TrialState.RUNNING:
                self.study.tell(trial.number, state=TrialState.FAIL)
            elif (trial.number in told) != (trial.state == TrialState.COMPLETE):
                raise UserError(self._foreign(f"trial {trial.number} is {trial.state.name}"))
        if told.keys() - in_study:
            raise UserError(self._foreign("it lacks trials the checkpoint holds"))

    def _foreign(self, what: str) -> str:
        return (
            f"{self.storage_path} does not match its search's checkpoint ({what}); delete the "
            "search's folder to start it over"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"trials": list(self.trials), "values": list(self.values)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "trials" not in state:  # the earlier format could charge a trial twice: not continued
            raise UserError(self._foreign("a checkpoint of an earlier aqgan-ray"))
        self.trials, self.values = list(state["trials"]), list(state["values"])
        self._asked = []

    def summary(self) -> dict[str, Any]:
        return {"trials": len(self.trials), "startup_trials": STARTUP_TRIALS}


class OptunaSamplerStart(OptunaTPE):
    """TPE whose start-up trials are the collection sampler's draws within budget
    (``random_sampler.fitting_draw``) instead of uniform random ones: the prior AQGAN's data
    comes from, so TPE is not handicapped by starting at chance accuracy. Start-up is what TPE
    counts as such, every trial asked while fewer than ``STARTUP_TRIALS`` are complete (a
    first batch of 64 is 64 of them). Draw ``k`` comes from a sampler seeded by (seed, k) and
    told nothing, so a resumed search draws it again."""

    name = "optuna-sampler"

    def _sampler(self, k: int) -> optuna.samplers.BaseSampler:
        tpe = super()._sampler(k)
        if len(self.trials) >= STARTUP_TRIALS:  # the checkpoint's count: the journal's too
            return tpe
        from baselines.random_sampler import fitting_draw, sampler_for

        config, _ = fitting_draw(sampler_for(self.point, self._seed(k)), self.point)
        bits = {"w": config.w_bits, "a": config.a_bits}
        fixed = {name: bits[name[0]][int(name[1:])] for name in self.distributions}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.PartialFixedSampler(fixed, tpe)
