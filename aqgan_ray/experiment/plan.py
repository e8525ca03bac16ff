"""What a run will ask for, before anything runs (``aqgan-ray run --plan``, ``aqgan_ray.plan``):
its design points checked as ``run`` checks them (every budget feasible, identical points merged),
the methods on each, and the evaluations each may spend, from the layer table of the
architecture alone: no data, no training, no Ray.

The counts are upper bounds: AQGAN and its ablations stop early, uniform's sweep ends when
narrower bits stop helping, refinement skips targets the generator already meets, and a config
asked twice is a cache hit, charged but not run again. Seconds are estimated only from a
measurement: the median evaluator seconds of the experiment's own store, when ``results`` holds
one (``collect`` or an interrupted ``run`` made it).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aqgan_ray.experiment import design
from aqgan_ray.settings import Experiment, check_seeds


@dataclass(frozen=True)
class Plan:
    experiment: str
    seeds: tuple[int, ...]
    # one per distinct design point: hw, budget, the points merged into it, methods run there
    points: list[dict[str, Any]]
    one_time: int  # per seed, at most: collection, active refinement and fidelity checks
    evaluations: dict[str, int]  # per method, every point and seed, at most
    serial: int = 0  # evaluations of the searching methods that ask one config at a time
    eval_s: float | None = None  # median evaluator seconds in the experiment's store

    @property
    def total(self) -> int:
        return len(self.seeds) * self.one_time + sum(self.evaluations.values())

    @property
    def cpu_hours(self) -> float | None:
        """Evaluator hours at the measured median seconds, counting every evaluation as run."""
        return None if self.eval_s is None else self.total * self.eval_s / 3600

    @property
    def sequential_hours(self) -> float | None:
        """Hours of the searches that ask one config at a time (HAQ's loop), which no number
        of evaluators shortens: ``run`` runs one search after another."""
        return None if self.eval_s is None else self.serial * self.eval_s / 3600

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "seeds": list(self.seeds),
            "design_points": self.points,
            "one_time_evaluations_per_seed": self.one_time,
            "evaluations": self.evaluations,
            "total_evaluations": self.total,
            "median_eval_s": self.eval_s,
            "cpu_hours": self.cpu_hours,
            "sequential_evaluations": self.serial,
            "sequential_hours": self.sequential_hours,
        }


def plan(exp: Experiment, results: str | Path | None = None, seeds=None) -> Plan:
    """The plan of ``run(exp, results, seeds=seeds)``; refuses what ``run`` would refuse
    about the design, in one line."""
    from aqgan_ray.prepare import architecture_layers
    from baselines import METHODS

    seeds = check_seeds(exp.design.seeds if seeds is None else seeds)
    planned = design.design_points(exp, architecture_layers(exp), seeds)
    first = [p for p in planned if p.seed == seeds[0]]
    points, evaluations = [], dict.fromkeys(METHODS, 0)
    for p in first:
        methods = [m for m in METHODS if design.runs_on(m, p, exp)]
        points.append({"hw": p.hw_name, "budget": p.budget_text, "merged": list(p.merged),
                       "methods": methods})  # fmt: skip
        for m in methods:
            evaluations[m] += len(seeds) * METHODS[m].evaluations(exp)
    a = exp.aqgan
    one_time = exp.collect.samples + a.refine_rounds * a.refine_targets
    one_time += a.fidelity_targets * a.fidelity_top
    serial = sum(n for m, n in evaluations.items()
                 if METHODS[m].searching and METHODS[m].batch(exp, 64) == 1)  # fmt: skip
    return Plan(exp.name, seeds, points, one_time, {m: n for m, n in evaluations.items() if n},
                serial, _median_eval_s(exp, results))  # fmt: skip


def _median_eval_s(exp: Experiment, results: str | Path | None) -> float | None:
    from aqgan_ray.store import read_frame

    if results is None:
        return None
    store = Path(results) / exp.name / "evaluations"
    if not store.is_dir() or not any(store.glob("*.parquet")):
        return None
    times = [t for t in read_frame(store)["eval_s"] if math.isfinite(t)]
    return float(statistics.median(times)) if times else None
