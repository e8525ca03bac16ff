"""Every search method the comparison runs, in one registry: AQGAN and the baselines, HAQ's DDPG
(``haq``), uniform quantization (``uniform``), Optuna's TPE (``optuna``) and random search
(``random``), one readable file each.

Every one is an ``aqgan_ray.search.Proposer``: it asks for configs and is told their accuracies,
and never touches an evaluator or a cost model itself, so ``aqgan_ray.search.run_search`` drives
them all through the same evaluators, store and hardware models. ``METHODS`` is the one list of
them: the CLI's choices, the runner's order, the report's colours all read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aqgan_ray.errors import UserError

if TYPE_CHECKING:
    from aqgan_ray.aqgan.checkpoint import Loaded
    from aqgan_ray.search import DesignPoint, Proposer
    from aqgan_ray.settings import Experiment

__all__ = ["BASELINES", "METHODS", "Method", "SearchSetup", "get_method"]


@dataclass(frozen=True)
class SearchSetup:
    """What a method is built from at one design point."""

    point: DesignPoint
    seed: int
    folder: Path  # the search's own folder (checkpoint, trace, a method's own storage)
    fp_val_acc: float  # the float model's validation accuracy (HAQ's reward baseline)
    batch: int  # configs asked at once
    exp: Experiment
    generator: Loaded | None = None  # AQGAN's trained model


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    color: str  # in the report's plots
    # Spends the preset's `baselines.evaluations` per point (and may run on a subset of points).
    searching: bool
    build: Callable[[SearchSetup], Proposer]
    # Evaluations it may spend per point, and configs asked at once given the evaluator count.
    evaluations: Callable[[Experiment], int]
    batch: Callable[[Experiment, int], int]


# Each method's module is imported when it is built: the registry itself is cheap to import (the
# command line reads it to parse arguments).
def _aqgan(setup: SearchSetup) -> Proposer:
    from aqgan_ray.aqgan.generate import AqganSearch

    if setup.generator is None:
        raise ValueError("AQGAN's search needs the trained generator")
    spec = setup.exp.aqgan
    return AqganSearch(setup.generator, setup.point, setup.seed, spec.proposals, spec.verify_top)


def _uniform(s: SearchSetup) -> Proposer:
    from baselines.uniform import Uniform

    return Uniform(s.point, s.seed)


def _haq(s: SearchSetup) -> Proposer:
    from baselines.haq import Haq, HaqArgs

    args = HaqArgs(warmup=s.exp.baselines.haq_warmup, episodes_per_ask=s.batch)
    return Haq(s.point, s.seed, s.fp_val_acc, args)


def _optuna(s: SearchSetup) -> Proposer:
    from baselines.optuna_tpe import OptunaTPE

    return OptunaTPE(s.point, s.seed, s.folder / "optuna.journal")


def _random(s: SearchSetup) -> Proposer:
    from baselines.random_search import RandomSearch

    return RandomSearch(s.point, s.seed)


def _searching_evaluations(exp: Experiment) -> int:
    return exp.baselines.evaluations


def _one_per_evaluator(exp: Experiment, workers: int) -> int:
    return max(1, workers)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "aqgan",
            "AQGAN: the trained generator's most accurate proposals that fit, verified",
            "tab:red",
            False,
            _aqgan,
            lambda exp: exp.aqgan.verify_top,
            lambda exp, workers: exp.aqgan.verify_top,  # one ask: every proposal at once
        ),
        Method(
            "uniform",
            "uniform quantization: the widest bitwidth that fits, then narrower while it helps",
            "tab:gray",
            False,
            _uniform,
            lambda exp: len(exp.quant.bit_choices),
            _one_per_evaluator,
        ),
        Method(
            "haq",
            "HAQ's DDPG agent (Wang et al., CVPR 2019)",
            "tab:blue",
            True,
            _haq,
            _searching_evaluations,
            lambda exp, workers: 1,  # HAQ's sequential loop
        ),
        Method(
            "optuna",
            "Optuna's multivariate TPE over one integer parameter per layer and kind",
            "tab:green",
            True,
            _optuna,
            _searching_evaluations,
            _one_per_evaluator,
        ),
        Method(
            "random",
            "random search: uniform random bits per layer, rejection-sampled against the budget",
            "tab:orange",
            True,
            _random,
            _searching_evaluations,
            _one_per_evaluator,
        ),
    )
}
# The methods `aqgan-ray baseline` runs: every one but AQGAN, which needs its trained generator.
BASELINES: tuple[str, ...] = tuple(name for name in METHODS if name != "aqgan")


def get_method(name: str, kind: str = "method") -> Method:
    """The method called ``name``; ``kind="baseline"`` accepts only ``BASELINES``."""
    choices = BASELINES if kind == "baseline" else tuple(METHODS)
    if name not in choices:
        raise UserError(f"unknown {kind} {name!r}; choose one of {', '.join(choices)}")
    return METHODS[name]
