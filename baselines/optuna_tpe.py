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

Resuming goes through Optuna's own storage: the study lives in ``optuna.journal`` next to the
trace. Trial ``k`` is trace row ``k``; trials the study holds beyond the last checkpoint (asked,
perhaps even told, just before an interruption) are asked again first, answered from the
evaluation store, so nothing is lost or charged twice. The sampler's random stream restarts
from the seed on resume, so a resumed study is valid but not draw-for-draw the same as an
uninterrupted one.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from aqgan_ray.config import PINNED_BITS, QuantConfig
from aqgan_ray.search import DesignPoint, Proposer

STARTUP_TRIALS = 10  # Optuna's default: random trials before TPE models the results


class OptunaTPE(Proposer):
    name = "optuna"

    def __init__(self, point: DesignPoint, seed: int, storage_path: Path):
        self.point = point
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():  # multivariate/constant_liar are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=seed,
                multivariate=True,
                constant_liar=True,
                n_startup_trials=STARTUP_TRIALS,
            )
        storage_path.parent.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(storage_path)))
        self.study = optuna.create_study(
            study_name="optuna-tpe",
            storage=storage,
            sampler=sampler,
            direction="maximize",
            load_if_exists=True,
        )
        self.distributions = self._space(point)
        self.told = 0
        self._replay: list[optuna.trial.FrozenTrial] = []
        self._asked: list[tuple[int, bool]] = []  # (trial number, already complete)

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
        while len(configs) < n and self._replay:
            trial = self._replay.pop(0)
            self._asked.append((trial.number, trial.state == TrialState.COMPLETE))
            configs.append(self._config(trial.params))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            while len(configs) < n:
                trial = self.study.ask(self.distributions)
                config = self._config(trial.params)
                trial.set_user_attr("config_hash", config.hash)  # the repaired config's
                self._asked.append((trial.number, False))
                configs.append(config)
        return configs

    def tell(self, configs: Sequence[QuantConfig], val_accs: Sequence[float]) -> None:
        asked, self._asked = self._asked, []
        for (number, complete), acc in zip(asked, val_accs, strict=True):
            if not complete:
                self.study.tell(number, float(acc))
            self.told += 1

    def state_dict(self) -> dict[str, Any]:
        return {"told": self.told}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.told = state["told"]
        trials = sorted(self.study.get_trials(deepcopy=False), key=lambda t: t.number)
        self._replay = [t for t in trials if t.number >= self.told]

    def summary(self) -> dict[str, Any]:
        return {"trials": len(self.study.trials), "startup_trials": STARTUP_TRIALS}
