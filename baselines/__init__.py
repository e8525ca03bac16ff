"""Every search method the comparison runs, in one registry: AQGAN; the ablations built from its
one-time work, which share its cost (``store``: store-best, its store alone; ``sampler-ranked``:
its ranker without the generator; ``gan-unranked``: its generator without the ranker); and the
baselines, uniform quantization (``uniform``), layer sensitivity plus integer programming
(``ilp``, HAWQ-V3 style), HAQ's DDPG (``haq``), Optuna's TPE (``optuna``) and random search
(``random``), the last two also with AQGAN's prior (``optuna-sampler``, ``random-sampler``: the
collection sampler's draws), one readable file each.

Every one is an ``aqgan_ray.search.Proposer``: it asks for configs and is told their accuracies,
and never touches an evaluator or a cost model itself, so ``aqgan_ray.search.run_search`` drives
them all through the same evaluators, store and hardware models. ``METHODS`` is the one list of
them: the CLI's choices, the runner's order, the report's colours all read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aqgan_ray.errors import UserError

if TYPE_CHECKING:
    from aqgan_ray.aqgan.checkpoint import Loaded
    from aqgan_ray.search import DesignPoint, Proposer
    from aqgan_ray.settings import Experiment
    from baselines.ilp import Sensitivity

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
    # AQGAN's training rows (``refine.training_rows``: what it paid for), for AQGAN and store-best
    stored: tuple[dict[str, Any], ...] = ()
    sensitivity: Sensitivity | None = None  # the layer sensitivity pass, for the ILP


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
    # Built from AQGAN's collection: not a baseline AQGAN's accuracy is matched against, and
    # redone when AQGAN is retrained.
    one_time: bool = False
    # Whose one-time cost the ledger's amortized columns share over the points that method
    # served: AQGAN's collection and training, or the ILP's sensitivity pass.
    shares: str | None = None
    needs_sensitivity: bool = False  # built from ``Session.sensitivity()``


# Each method's module is imported when it is built: the registry itself is cheap to import (the
# command line reads it to parse arguments).
def _aqgan(setup: SearchSetup) -> Proposer:
    from aqgan_ray.aqgan.hw_tune import TunedAqgan

    if setup.generator is None:
        raise ValueError("AQGAN's search needs the trained generator")
    spec = setup.exp.aqgan
    return TunedAqgan(setup.generator, setup.point, setup.seed, spec.proposals,
                      spec.verify_top, setup.stored)  # fmt: skip


def _store(setup: SearchSetup) -> Proposer:
    from baselines.store_best import StoreBest

    return StoreBest(setup.point, setup.stored)


def _sampler_ranked(setup: SearchSetup) -> Proposer:
    from baselines.sampler_ranked import SamplerRanked

    if setup.generator is None:
        raise ValueError("sampler-ranked needs AQGAN's trained ranker")
    spec = setup.exp.aqgan
    return SamplerRanked(setup.generator, setup.point, setup.seed, spec.proposals,
                         spec.verify_top, setup.stored)  # fmt: skip


def _gan_unranked(setup: SearchSetup) -> Proposer:
    from baselines.gan_unranked import GanUnranked

    if setup.generator is None:
        raise ValueError("gan-unranked needs AQGAN's trained generator")
    spec = setup.exp.aqgan
    return GanUnranked(setup.generator, setup.point, setup.seed, spec.proposals, spec.verify_top)


def _uniform(s: SearchSetup) -> Proposer:
    from baselines.uniform import Uniform

    return Uniform(s.point, s.seed)


def _ilp(s: SearchSetup) -> Proposer:
    from baselines.ilp import Ilp

    if s.sensitivity is None:
        raise ValueError("the ILP needs the layer sensitivity")
    return Ilp(s.point, s.sensitivity)


def _haq(s: SearchSetup) -> Proposer:
    from baselines.haq import Haq, HaqArgs

    args = HaqArgs(warmup=s.exp.baselines.haq_warmup, episodes_per_ask=s.batch)
    return Haq(s.point, s.seed, s.fp_val_acc, args)


def _optuna(s: SearchSetup) -> Proposer:
    from baselines.optuna_tpe import OptunaTPE

    return OptunaTPE(s.point, s.seed, s.folder / "optuna.journal")


def _optuna_sampler(s: SearchSetup) -> Proposer:
    from baselines.optuna_tpe import OptunaSamplerStart

    return OptunaSamplerStart(s.point, s.seed, s.folder / "optuna.journal")


def _random(s: SearchSetup) -> Proposer:
    from baselines.random_search import RandomSearch

    return RandomSearch(s.point, s.seed)


def _random_sampler(s: SearchSetup) -> Proposer:
    from baselines.random_sampler import SamplerSearch

    return SamplerSearch(s.point, s.seed)


def _searching_evaluations(exp: Experiment) -> int:
    return exp.baselines.evaluations


def _one_per_evaluator(exp: Experiment, workers: int) -> int:
    return max(1, workers)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "aqgan",
            "AQGAN: the generator's proposals and its store tuned to the budget, verified",
            "tab:red",
            False,
            _aqgan,
            lambda exp: exp.aqgan.verify_top,
            lambda exp, workers: 1,  # one at a time: the next depends on what was measured
            one_time=True,
            shares="aqgan",
        ),
        Method(
            "store",
            "store-best: the most accurate of AQGAN's training rows that fits (no generator)",
            "tab:brown",
            False,
            _store,
            lambda exp: 1,
            lambda exp, workers: 1,
            one_time=True,
            shares="aqgan",
        ),
        Method(
            "sampler-ranked",
            "ablation: AQGAN's ranker and tuning over the collection sampler's draws instead "
            "of the generator's",
            "tab:pink",
            False,
            _sampler_ranked,
            lambda exp: exp.aqgan.verify_top,
            lambda exp, workers: 1,
            one_time=True,
            shares="aqgan",
        ),
        Method(
            "gan-unranked",
            "ablation: the generator's samples for high targets that fit, verified without "
            "the ranker or the store",
            "tab:olive",
            False,
            _gan_unranked,
            lambda exp: exp.aqgan.verify_top,
            lambda exp, workers: max(1, min(workers, exp.aqgan.verify_top)),
            one_time=True,
            shares="aqgan",
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
            "ilp",
            "sensitivity + ILP (HAWQ-V3 style): Hessian-trace sensitivity once, an integer "
            "program per point",
            "tab:purple",
            False,
            _ilp,
            lambda exp: exp.baselines.ilp_evaluations,
            _one_per_evaluator,  # the solutions do not depend on what was measured
            shares="ilp",
            needs_sensitivity=True,
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
            "optuna-sampler",
            "Optuna's TPE with its start-up trials drawn from AQGAN's collection sampler",
            "darkgreen",
            True,
            _optuna_sampler,
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
        Method(
            "random-sampler",
            "random search with AQGAN's prior: the collection sampler under the budget, told "
            "its results",
            "goldenrod",
            True,
            _random_sampler,
            _searching_evaluations,
            _one_per_evaluator,
        ),
    )
}
# The methods `aqgan-ray baseline` runs: every one but those built from AQGAN's collection.
BASELINES: tuple[str, ...] = tuple(name for name, m in METHODS.items() if not m.one_time)


def get_method(name: str, kind: str = "method") -> Method:
    """The method called ``name``; ``kind="baseline"`` accepts only ``BASELINES``."""
    choices = BASELINES if kind == "baseline" else tuple(METHODS)
    if name not in choices:
        raise UserError(f"unknown {kind} {name!r}; choose one of {', '.join(choices)}")
    return METHODS[name]
