"""The experiment's design: its design points (hardware model x budget x seed), which methods
run where, where each search lives on disk and what identifies it, and what ties a results
directory to an experiment."""

from __future__ import annotations

import hashlib
import itertools
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aqgan_ray.cost import get_hw_model, parse_budget
from aqgan_ray.errors import UserError
from aqgan_ray.layers import Layer
from aqgan_ray.search import DesignPoint, read_identity
from baselines import METHODS


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
    """AQGAN and uniform run on every point; the searching methods (those that spend
    ``baselines.evaluations``) on the preset's subset."""
    if not METHODS[method].searching:
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


def experiment_fingerprint(exp_dict: dict[str, Any]) -> dict[str, Any]:
    """What ties a results directory to an experiment: what its evaluations and model depend
    on (not where the data lives). Design points, budgets and search lengths may change between
    runs of one experiment: the store and every finished search stay valid."""
    data = {k: v for k, v in exp_dict["data"].items() if k != "data_dir"}
    keys = ("name", "seed", "model", "train", "quant", "eval")
    return {"data": data, **{k: exp_dict[k] for k in keys}}
