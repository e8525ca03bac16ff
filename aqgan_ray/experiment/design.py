"""The experiment's design: its design points (hardware model x budget x seed), which methods
run where, where each search lives on disk and what identifies it, and what ties a results
directory to an experiment."""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aqgan_ray.atomic import fsync_dir
from aqgan_ray.cost import get_hw_model, parse_budget, within_budget
from aqgan_ray.errors import UserError
from aqgan_ray.layers import Layer
from aqgan_ray.search import DesignPoint, read_identity
from aqgan_ray.settings import check_seeds
from baselines import METHODS


@dataclass(frozen=True)
class Planned:
    """One design point and seed, with the names the tables use."""

    hw_name: str
    budget_text: str  # without its hardware prefix
    point: DesignPoint
    seed: int
    merged: tuple[str, ...] = ()  # design points that price every config as this one does

    @property
    def label(self) -> str:
        return f"{self.hw_name} {self.budget_text}"

    @property
    def fraction(self) -> float | None:
        return self.point.budget.relative

    def slug(self) -> str:
        budget = self.point.budget
        text = f"{self.hw_name}-{budget.metric}={budget.value:.6g}-seed{self.seed}"
        return re.sub(r"[^A-Za-z0-9.=_-]+", "_", text)


# How many random configs decide that two design points are one (with the uniform configs).
_DISTINCT_SAMPLE = 256


class DesignWarning(UserWarning):
    """A design that is not what it says (points merged); the CLI prints it as one line."""


def split_budget(text: str) -> tuple[str | None, str]:
    """``"bitfusion:energy_mj=0.8x"`` -> ``("bitfusion", "energy_mj=0.8x")``; no prefix: None."""
    hw, sep, budget = text.rpartition(":")
    return (hw, budget) if sep else (None, text)


def budgets_for(design, hw_name: str) -> list[str]:
    """A model's budgets: those prefixed with its name, or else the unprefixed ones (a machine's
    feasible range is its own: Bit Fusion's energy barely halves between 8 and 2 bits)."""
    parts = [split_budget(str(b)) for b in design.budgets]
    own = [budget for hw, budget in parts if hw == hw_name]
    return own or [budget for hw, budget in parts if hw is None]


def design_points(
    exp, layers: Sequence[Layer], seeds: Sequence[int] | None = None
) -> list[Planned]:
    """Every hardware model with each of its budgets, for every seed (default: ``[design]
    seeds``); a budget that no config can meet on some model is refused now, naming both.
    Points that price every config the same way (same ranking, same configs within budget) are
    merged into the first, with a warning: a design's points are what AQGAN's one-time cost is
    shared over."""
    design, choices, pinned = exp.design, exp.quant.bit_choices, exp.quant.keep_first_last
    seeds = check_seeds(design.seeds if seeds is None else seeds)
    if not design.hw or not design.budgets:
        raise UserError("design.hw and design.budgets must each name at least one")
    points: list[tuple[str, str, DesignPoint]] = []
    for hw_name in design.hw:
        hw = get_hw_model(str(hw_name), layers, choices)
        budgets = budgets_for(design, str(hw_name))
        if not budgets:
            raise UserError(f"design.budgets holds no budget for {hw_name} (prefixed or plain)")
        for budget_text in budgets:
            try:
                budget = parse_budget(budget_text, hw, layers, min(choices), pinned)
            except UserError as exc:
                raise UserError(f"design point {hw_name} {budget_text}: {exc}") from None
            point = DesignPoint(tuple(layers), tuple(choices), hw, budget, pinned)
            points.append((str(hw_name), budget_text, point))
    merged = _merge_identical(points, choices, exp.seed)
    planned = []
    for i, (hw_name, budget_text, point) in enumerate(points):
        if i not in merged:
            continue
        labels = tuple(f"{points[j][0]} {points[j][1]}" for j in merged[i])
        planned += [Planned(hw_name, budget_text, point, int(s), labels) for s in seeds]
    return planned


def _probe(n_layers: int, choices: Sequence[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The uniform configs and ``_DISTINCT_SAMPLE`` seeded random ones: what a point's prices
    are compared and fingerprinted on."""
    rng = np.random.default_rng(seed)
    bits = np.asarray(sorted(choices), dtype=np.int64)
    uniform = np.repeat(bits[:, None], n_layers, 1)
    w = np.concatenate([uniform, rng.choice(bits, (_DISTINCT_SAMPLE, n_layers))])
    a = np.concatenate([uniform, rng.choice(bits, (_DISTINCT_SAMPLE, n_layers))])
    return w, a


def price_digest(point: DesignPoint) -> str:
    """A fingerprint of what the point's hardware model charges (its budget metric on the probe
    configs): a recalibrated model or an edited table is another search, not one to continue."""
    w, a = _probe(len(point.layers), point.bit_choices, 0)
    prices = np.asarray(point.costs(w, a), dtype=np.float64)
    text = np.array2string(prices, precision=10, threshold=prices.size + 1)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _merge_identical(
    points: list[tuple[str, str, DesignPoint]], choices: Sequence[int], seed: int
) -> dict[int, list[int]]:
    """First index of each distinct point -> the later indices identical to it."""
    w, a = _probe(len(points[0][2].layers) if points else 0, choices, seed)
    signatures = []
    for _, _, point in points:
        costs = point.costs(w, a)
        signatures.append((np.argsort(costs, kind="stable"), within_budget(costs, point.budget)))
    kept: dict[int, list[int]] = {}
    for i, (order, fits) in enumerate(signatures):
        same = next(
            (k for k in kept if np.array_equal(signatures[k][0], order)
             and np.array_equal(signatures[k][1], fits)),
            None,
        )  # fmt: skip
        if same is None:
            kept[i] = []
            continue
        kept[same].append(i)
        warnings.warn(
            f"design point {points[i][0]} {points[i][1]} prices every config as "
            f"{points[same][0]} {points[same][1]} does (same ranking and budget on "
            f"{len(w)} configs); merged into it",
            DesignWarning,
            stacklevel=3,
        )
    return kept


def runs_on(method: str, planned: Planned, exp) -> bool:
    """Only the preset's ``design.methods`` (empty: all). AQGAN, its ablations, uniform and the
    ILP run on every point; the searching methods (those that spend ``baselines.evaluations``)
    on the preset's subset."""
    if exp.design.methods and method not in exp.design.methods:
        return False
    if not METHODS[method].searching:
        return True
    design = exp.design
    wanted = [split_budget(str(b)) for b in design.search_budgets]
    return (not design.search_hw or planned.hw_name in design.search_hw) and (
        not design.search_budgets
        or any(b == planned.budget_text and hw in (None, planned.hw_name) for hw, b in wanted)
    )


def search_dir(run_dir: Path, method: str, planned: Planned) -> Path:
    """The folder ``baseline`` uses too: a search started by hand is continued by ``run``."""
    return run_dir / "searches" / method / planned.slug()


def identity(method: str, planned: Planned, eval_key: str, extra: dict | None = None) -> dict:
    budget = planned.point.budget
    return {
        "method": method,
        "hw": planned.point.hw.name,
        "hw_prices": price_digest(planned.point),
        "metric": budget.metric,
        "budget": budget.value,
        "seed": planned.seed,
        "eval_key": eval_key,
        "layers": list(planned.point.layer_names),
        "bit_choices": list(planned.point.bit_choices),
        **(extra or {}),
    }


def method_identity(method: str, sensitivity=None) -> dict | None:
    """What a method's search depends on beyond the design point and the store: the ILP on
    the sensitivity it solved with."""
    if METHODS[method].needs_sensitivity:
        return {"sensitivity": sensitivity.digest}
    return None


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def discard_stale(folder: Path, wanted: dict) -> None:
    """AQGAN's searches belong to one checkpoint, the ILP's to one sensitivity setting: when
    those change, their folders are regenerated (their evaluations come back from the store)
    instead of refused."""
    stored = read_identity(folder)
    if stored is not None and stored != wanted:
        # Renamed away first (one atomic step, folder synced), then deleted: a kill halfway
        # through a bare rmtree could leave an Optuna journal without its checkpoint.
        doomed = folder.with_name(f".discarded-{folder.name}-{uuid.uuid4().hex[:8]}")
        try:
            folder.rename(doomed)
        except OSError as exc:
            raise UserError(
                f"cannot replace the stale search {folder} ({exc.strerror or exc}); delete it "
                "and run again"
            ) from None
        fsync_dir(folder.parent)
        shutil.rmtree(doomed, ignore_errors=True)


def experiment_fingerprint(exp_dict: dict[str, Any]) -> dict[str, Any]:
    """What ties a results directory to an experiment: what its evaluations and model depend
    on (not where the data lives). Design points, budgets and search lengths may change between
    runs of one experiment: the store and every finished search stay valid."""
    data = {k: v for k, v in exp_dict["data"].items() if k != "data_dir"}
    keys = ("name", "seed", "model", "train", "quant", "eval")
    return {"data": data, **{k: exp_dict[k] for k in keys}}
