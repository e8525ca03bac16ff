"""Baseline search methods, one readable file each: HAQ's DDPG (``haq``), uniform
quantization (``uniform``), Optuna's TPE (``optuna``) and random search (``random``).

Every one is an ``aqgan_ray.search.Proposer``: it asks for configs and is told their accuracies,
and never touches an evaluator or a cost model itself, so ``aqgan_ray.search.run_search`` drives
them, and AQGAN's verification, through the same evaluators, store and hardware models.
"""

from __future__ import annotations

from pathlib import Path

from aqgan_ray.errors import UserError
from aqgan_ray.search import DesignPoint, Proposer
from baselines.haq import Haq, HaqArgs
from baselines.optuna_tpe import OptunaTPE
from baselines.random_search import RandomSearch
from baselines.uniform import Uniform

__all__ = ["BASELINES", "Haq", "HaqArgs", "OptunaTPE", "RandomSearch", "Uniform", "make"]

BASELINES: tuple[str, ...] = ("haq", "uniform", "optuna", "random")


def make(
    name: str,
    point: DesignPoint,
    seed: int,
    run_dir: Path,
    fp_val_acc: float,
    batch: int = 1,
    haq_warmup: int = 20,
) -> Proposer:
    """The baseline called ``name``, set up for one design point."""
    if name == "haq":
        return Haq(point, seed, fp_val_acc, HaqArgs(warmup=haq_warmup, episodes_per_ask=batch))
    if name == "uniform":
        return Uniform(point, seed)
    if name == "optuna":
        return OptunaTPE(point, seed, run_dir / "optuna.journal")
    if name == "random":
        return RandomSearch(point, seed)
    raise UserError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
