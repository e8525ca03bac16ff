"""The search-cost ledger: what every method paid at every design point, and the one-time costs
(AQGAN's collection and training, the ILP's sensitivity pass) shared by the points they served.

Search cost (``search_cost.parquet``, one row per method, design point and seed):

- ``evaluations``: every evaluation the method asked for at this point, cache hits included.
  For AQGAN, its marginal cost: the top proposals it verified.
- ``amortized_evaluations``: for AQGAN (and store-best, built from its store), plus its one-time
  cost (the store's ``collect`` evaluations, active refinement and the fidelity verification of
  ``train``) shared equally by the design points it served; for the ILP, plus its sensitivity
  pass shared the same way, counted in evaluations as the pass's seconds over the median
  seconds of one evaluation in this store; for the searching baselines, the same as
  ``evaluations`` (each search starts over).
- ``eval_cpu_s``: evaluator seconds of those evaluations (a cache hit costs what its stored
  evaluation took); ``wall_s``: the search's own wall seconds (summed over resumed runs);
  ``amortized_*``: plus the share of the one-time evaluator seconds and training time.
- ``decide_s``: driver seconds the method spent choosing what to evaluate, where it reports
  them (the ILP's solves, AQGAN's per-point tuning); part of ``wall_s``.
- ``evaluations_to_match``: from a baseline's trace, the evaluations it needed until its best
  within budget first reached the accuracy AQGAN selected at the same point and seed (NaN: not
  within its ``evaluations``, a lower bound the report shows as "> N"), so the comparison does
  not hinge on one episode count; ``evaluations_to_match_0_5`` the same for AQGAN's accuracy
  minus half a point (``NEAR``); ``eval_cpu_s_to_match`` the evaluator seconds until the match.
- ``break_even_points``: on a baseline's row, the number of design points from which AQGAN's
  one-time evaluations plus its marginal ones per point cost less than this baseline's
  evaluations to match per point (``break_even``); from ``evaluations`` where it never matched,
  an upper bound then (NaN for uniform and the ILP, which stop on their own); inf where the
  baseline matched within AQGAN's marginal cost. ``break_even_points_s`` the same in seconds:
  AQGAN's one-time evaluator seconds plus its training seconds, its marginal evaluator seconds
  at the point, and the baseline's evaluator seconds to match.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aqgan_ray.experiment.design import Planned
from aqgan_ray.search import SearchResult
from baselines import METHODS


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


@dataclass(frozen=True)
class SensitivityCost:
    """The ILP's one-time cost: its sensitivity pass. It runs in the driver with an evaluator's
    threads, and is counted in evaluations at the median seconds of one evaluation of this
    store (the same model; on evaluators faster than the driver, a GPU, that overstates it).
    Its properties are ``OneTime``'s, which the ledger reads."""

    seconds: float
    eval_s: float  # median evaluator seconds of one evaluation in the store

    @property
    def evaluations(self) -> float:
        return self.seconds / self.eval_s if self.eval_s > 0 else math.nan

    @property
    def eval_cpu_s(self) -> float:
        return self.seconds

    @property
    def train_s(self) -> float:
        return 0.0


def sensitivity_cost(seconds: float, store_rows: Sequence[dict]) -> SensitivityCost:
    times = [float(row["eval_s"]) for row in store_rows]
    return SensitivityCost(float(seconds), statistics.median(times) if times else math.nan)


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


# The looser cost-to-match target: AQGAN's accuracy minus half a point, about the spread of one
# config's validation accuracy between evaluation seeds and finer than any claim made on it.
NEAR = 0.005


def evaluations_to_match(trace: Sequence[dict], target: float) -> float:
    """1-based count of evaluations until the best within budget reached ``target``."""
    for row in trace:
        if row["within_budget"] and row["val_acc"] >= target:
            return float(row["index"] + 1)
    return math.nan


def eval_s_to_match(trace: Sequence[dict], target: float) -> float:
    """Evaluator seconds of the evaluations until the best within budget reached ``target``."""
    spent = 0.0
    for row in trace:
        spent += float(row["eval_s"])
        if row["within_budget"] and row["val_acc"] >= target:
            return spent
    return math.nan


def break_even(one_time: float, marginal: float, per_point: float) -> float:
    """Design points from which ``one_time + k * marginal <= k * per_point``: AQGAN cheaper
    than a method that spends ``per_point`` at every point (inf: never)."""
    if not per_point > marginal:
        return math.inf
    return max(1.0, math.ceil(one_time / (per_point - marginal)))


def _known(points: float, reached: bool) -> float:
    """A break-even from a lower bound that AQGAN's marginal cost already exceeds says
    nothing: unknown (NaN), not never."""
    return math.nan if not reached and math.isinf(points) else points


def cost_rows(
    exp,
    results: dict[tuple[str, Planned], SearchResult],
    test_acc: dict[str, float],
    one_time: dict[str, OneTime | SensitivityCost],
) -> list[dict[str, Any]]:
    """The ``search_cost.parquet`` rows, in method order then design-point order.
    ``one_time``: the one-time cost of each method that has one (``Method.shares``)."""
    served = {owner: sum(1 for method, _ in results if method == owner) for owner in one_time}
    aqgan_pick = {
        planned: result.best["val_acc"]
        for (method, planned), result in results.items()
        if method == "aqgan" and result.best is not None
    }
    aqgan_marginal = {  # (evaluations, evaluator seconds) at each point
        planned: (len(result.trace), float(sum(r["eval_s"] for r in result.trace)))
        for (method, planned), result in results.items()
        if method == "aqgan"
    }
    rows = []
    for (method, planned), result in sorted(
        results.items(), key=lambda kv: (list(METHODS).index(kv[0][0]), _order(kv[0][1]))
    ):
        trace, best = result.trace, result.best
        evaluations = len(trace)
        eval_cpu_s = float(sum(r["eval_s"] for r in trace))
        wall_s = float(trace[-1]["elapsed_s"]) if trace else 0.0
        owner = METHODS[method].shares
        once = one_time.get(owner) if owner else None
        share = 1.0 / served[owner] if once is not None and served[owner] else 0.0
        once_evaluations = once.evaluations if share else 0.0
        once_cpu_s = once.eval_cpu_s if share else 0.0
        once_wall_s = once.train_s + once.eval_cpu_s if share else 0.0
        target = aqgan_pick.get(planned)
        matched = not METHODS[method].one_time and target is not None
        to_match = evaluations_to_match(trace, target) if matched else math.nan
        to_match_s = eval_s_to_match(trace, target) if matched else math.nan
        breaks_even = breaks_even_s = math.nan
        # a method that stopped on its own (uniform, the ILP) and never matched has no cost to
        # match, not even a bound: more evaluations would not have been spent
        bounded = not math.isnan(to_match) or METHODS[method].searching
        if matched and bounded and "aqgan" in one_time and planned in aqgan_marginal:
            once, (marginal, marginal_s) = one_time["aqgan"], aqgan_marginal[planned]
            reached = not math.isnan(to_match)
            paid = to_match if reached else evaluations
            paid_s = to_match_s if reached else float(sum(r["eval_s"] for r in trace))
            breaks_even = _known(break_even(once.evaluations, marginal, paid), reached)
            breaks_even_s = _known(
                break_even(once.eval_cpu_s + once.train_s, marginal_s, paid_s), reached
            )
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
                "amortized_evaluations": evaluations + share * once_evaluations,
                "eval_cpu_s": eval_cpu_s,
                "amortized_eval_cpu_s": eval_cpu_s + share * once_cpu_s,
                "wall_s": wall_s,
                "amortized_wall_s": wall_s + share * once_wall_s,
                "decide_s": float(result.summary.get("decide_s", math.nan)),
                "evaluations_to_match": to_match,
                "evaluations_to_match_0_5": (
                    evaluations_to_match(trace, target - NEAR) if matched else math.nan
                ),
                "eval_cpu_s_to_match": to_match_s,
                "break_even_points": breaks_even,
                "break_even_points_s": breaks_even_s,
                "config_hash": None if best is None else best["config_hash"],
                "w_bits": None if best is None else best["w_bits"],
                "a_bits": None if best is None else best["a_bits"],
                "val_acc": math.nan if best is None else best["val_acc"],
                "test_acc": math.nan if best is None else test_acc[best["config_hash"]],
                "cost_value": math.nan if best is None else best["cost"],
                "within_budget": best is not None and bool(best["within_budget"]),
                # where the chosen config came from (a trace from before origins: the method)
                "origin": None if best is None else best.get("origin", method),
            }
        )
    return rows


def _order(planned: Planned) -> tuple:
    return (planned.hw_name, planned.point.budget.value, planned.seed)


def row_order(row: dict[str, Any]) -> tuple:
    """``search_cost.parquet``'s order: method, then design point, then seed."""
    return (list(METHODS).index(row["method"]), row["hw"], row["budget"], row["seed"])


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
