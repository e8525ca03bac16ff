"""The experiment runner's pieces: design points, one resumable search per (method, design point,
seed), and the search-cost accounting. ``aqgan-ray run`` strings them together after collection
and training; ``report.py`` turns the tables into a report.

Search cost (``search_cost.parquet``, one row per method, design point and seed):

- ``evaluations``: every evaluation the method asked for at this point, cache hits included.
  For AQGAN, its marginal cost: the top proposals it verified.
- ``amortized_evaluations``: for AQGAN, plus its one-time cost (the store's ``collect``
  evaluations and the fidelity verification of ``train``) shared equally by the design points it
  served; for the baselines, the same as ``evaluations`` (each search starts over).
- ``eval_cpu_s``: evaluator seconds of those evaluations (a cache hit costs what its stored
  evaluation took); ``wall_s``: the search's own wall seconds (summed over resumed runs);
  ``amortized_*``: plus AQGAN's share of the one-time evaluator seconds and training time.
- ``evaluations_to_match``: from a baseline's trace, the evaluations it needed until its best
  within budget first reached the accuracy AQGAN selected at the same point (NaN: never), so
  the comparison does not hinge on one episode count.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aqgan_ray.cost import get_hw_model, parse_budget
from aqgan_ray.errors import UserError
from aqgan_ray.layers import Layer
from aqgan_ray.search import DesignPoint, SearchResult, read_identity

METHODS: tuple[str, ...] = ("aqgan", "uniform", "haq", "optuna", "random")
# The methods that spend `baselines.evaluations` per point; they may run on a subset of points.
SEARCHING: tuple[str, ...] = ("haq", "optuna", "random")


@dataclass(frozen=True)
class Planned:
    """One design point and seed, with the names the tables use."""

    hw_name: str
    budget_text: str
    point: DesignPoint
    seed: int

    @property
    def fraction(self) -> float | None:
        return self.point.budget.relative

    def slug(self) -> str:
        budget = self.point.budget
        text = f"{self.hw_name}-{budget.metric}={budget.value:.6g}-seed{self.seed}"
        return re.sub(r"[^A-Za-z0-9.=_-]+", "_", text)


def design_points(exp, layers: Sequence[Layer]) -> list[Planned]:
    """Every hardware model with every budget, for every seed; a budget that no config can meet
    on some model is refused now, naming both."""
    design, choices = exp.design, exp.quant.bit_choices
    if not design.hw or not design.budgets or not design.seeds:
        raise UserError("design.hw, design.budgets and design.seeds must each name at least one")
    planned = []
    for hw_name, budget_text in itertools.product(design.hw, design.budgets):
        hw = get_hw_model(str(hw_name), layers, choices)
        try:
            budget = parse_budget(str(budget_text), hw, layers, min(choices))
        except UserError as exc:
            raise UserError(f"design point {hw_name} {budget_text}: {exc}") from None
        point = DesignPoint(tuple(layers), tuple(choices), hw, budget)
        planned += [Planned(str(hw_name), str(budget_text), point, int(s)) for s in design.seeds]
    return planned


def runs_on(method: str, planned: Planned, exp) -> bool:
    """AQGAN and uniform run on every point; the searching baselines on the preset's subset."""
    if method not in SEARCHING:
        return True
    design = exp.design
    return (not design.search_hw or planned.hw_name in design.search_hw) and (
        not design.search_budgets or planned.budget_text in design.search_budgets
    )


def search_dir(run_dir: Path, method: str, planned: Planned) -> Path:
    """The folder ``baseline`` uses too: a search started by hand is continued by ``run``."""
    return run_dir / "searches" / method / planned.slug()


def identity(method: str, planned: Planned, eval_key: str, extra: dict | None = None) -> dict:
    budget = planned.point.budget
    return {
        "method": method,
        "hw": planned.point.hw.name,
        "metric": budget.metric,
        "budget": budget.value,
        "seed": planned.seed,
        "eval_key": eval_key,
        "layers": list(planned.point.layer_names),
        "bit_choices": list(planned.point.bit_choices),
        **(extra or {}),
    }


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def discard_stale(folder: Path, wanted: dict) -> None:
    """AQGAN's searches belong to one checkpoint: after retraining, their folders are
    regenerated (their verifications come back from the store) instead of refused."""
    stored = read_identity(folder)
    if stored is not None and stored != wanted:
        shutil.rmtree(folder)


@dataclass(frozen=True)
class OneTime:
    """AQGAN's one-time cost: collecting the store, training, active refinement (its requests,
    cache hits included) and the fidelity verification after training."""

    collect_evaluations: int
    collect_eval_cpu_s: float
    fidelity_evaluations: int
    fidelity_eval_cpu_s: float
    train_s: float
    refine_evaluations: int = 0
    refine_eval_cpu_s: float = 0.0

    @property
    def evaluations(self) -> int:
        return self.collect_evaluations + self.refine_evaluations + self.fidelity_evaluations

    @property
    def eval_cpu_s(self) -> float:
        return self.collect_eval_cpu_s + self.refine_eval_cpu_s + self.fidelity_eval_cpu_s


def one_time_cost(
    store_rows: Sequence[dict],
    fidelity_rows: Sequence[dict],
    train_s: float,
    refine_rows: Sequence[dict] = (),
) -> OneTime:
    """Evaluator seconds of a request are those its stored evaluation took (a cache hit is
    charged what it would have cost)."""
    eval_s = {row["config_hash"]: row["eval_s"] for row in store_rows}
    collected = [row for row in store_rows if row["source"] == "collect"]
    return OneTime(
        len(collected),
        float(sum(row["eval_s"] for row in collected)),
        len(fidelity_rows),
        float(sum(eval_s.get(row["config_hash"], 0.0) for row in fidelity_rows)),
        float(train_s),
        len(refine_rows),
        float(sum(eval_s.get(row["config_hash"], 0.0) for row in refine_rows)),
    )


def evaluations_to_match(trace: Sequence[dict], target: float) -> float:
    """1-based count of evaluations until the best within budget reached ``target``."""
    for row in trace:
        if row["within_budget"] and row["val_acc"] >= target:
            return float(row["index"] + 1)
    return math.nan


def cost_rows(
    exp,
    results: dict[tuple[str, Planned], SearchResult],
    test_acc: dict[str, float],
    one_time: OneTime,
) -> list[dict[str, Any]]:
    """The ``search_cost.parquet`` rows, in method order then design-point order."""
    served = sum(1 for method, _ in results if method == "aqgan")
    aqgan_pick = {
        planned: result.best["val_acc"]
        for (method, planned), result in results.items()
        if method == "aqgan" and result.best is not None
    }
    rows = []
    for (method, planned), result in sorted(
        results.items(), key=lambda kv: (METHODS.index(kv[0][0]), _order(kv[0][1]))
    ):
        trace, best = result.trace, result.best
        evaluations = len(trace)
        eval_cpu_s = float(sum(r["eval_s"] for r in trace))
        wall_s = float(trace[-1]["elapsed_s"]) if trace else 0.0
        share = (1.0 / served) if method == "aqgan" and served else 0.0
        target = aqgan_pick.get(planned)
        budget = planned.point.budget
        rows.append(
            {
                "method": method,
                "model": exp.model.name,
                "dataset": exp.data.name,
                "hw": planned.hw_name,
                "metric": budget.metric,
                "budget": budget.value,
                "budget_fraction": budget.relative,
                "seed": planned.seed,
                "evaluations": evaluations,
                "amortized_evaluations": evaluations + share * one_time.evaluations,
                "eval_cpu_s": eval_cpu_s,
                "amortized_eval_cpu_s": eval_cpu_s + share * one_time.eval_cpu_s,
                "wall_s": wall_s,
                "amortized_wall_s": wall_s + share * (one_time.train_s + one_time.eval_cpu_s),
                "evaluations_to_match": (
                    math.nan
                    if method == "aqgan" or target is None
                    else evaluations_to_match(trace, target)
                ),
                "config_hash": None if best is None else best["config_hash"],
                "w_bits": None if best is None else best["w_bits"],
                "a_bits": None if best is None else best["a_bits"],
                "val_acc": math.nan if best is None else best["val_acc"],
                "test_acc": math.nan if best is None else test_acc[best["config_hash"]],
                "cost_value": math.nan if best is None else best["cost"],
                "within_budget": best is not None and bool(best["within_budget"]),
            }
        )
    return rows


def _order(planned: Planned) -> tuple:
    return (planned.hw_name, planned.point.budget.value, planned.seed)


def trace_rows(results: dict[tuple[str, Planned], SearchResult]) -> list[dict[str, Any]]:
    """Every search's trace, one table: the identity columns plus the per-evaluation ones."""
    rows = []
    for (method, planned), result in results.items():
        budget = planned.point.budget
        for row in result.trace:
            rows.append(
                {
                    "method": method,
                    "hw": planned.hw_name,
                    "metric": budget.metric,
                    "budget": budget.value,
                    "budget_fraction": budget.relative,
                    "seed": planned.seed,
                    **row,
                }
            )
    return rows


def experiment_fingerprint(exp_dict: dict[str, Any]) -> dict[str, Any]:
    """What ties a results directory to an experiment: what its evaluations and model depend
    on (not where the data lives). Design points, budgets and search lengths may change between
    runs of one experiment: the store and every finished search stay valid."""
    data = {k: v for k, v in exp_dict["data"].items() if k != "data_dir"}
    keys = ("name", "seed", "model", "train", "quant", "eval")
    return {"data": data, **{k: exp_dict[k] for k in keys}}
