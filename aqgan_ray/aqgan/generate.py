"""Generation and selection: proposals for a target accuracy, priced analytically on a
hardware model, filtered by a budget, ranked. The paper's HW-tuning flow: no search, no
evaluation, milliseconds per design point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

import numpy as np
import torch

from aqgan_ray.aqgan import model as gan
from aqgan_ray.aqgan.checkpoint import Loaded, told
from aqgan_ray.aqgan.data import configs_of, indices_of
from aqgan_ray.config import QuantConfig
from aqgan_ray.cost import Budget, CostModel, within_budget
from aqgan_ray.errors import UserError
from aqgan_ray.layers import Layer

# Targets tried from high to low when only a budget is given.
SWEEP_STEPS = 24


@dataclass(frozen=True)
class Query:
    """What is asked of the trained generator: a target accuracy, a budget on a hardware
    model, or both; ``n`` samples are drawn (per target) and the ``top`` best returned."""

    target_acc: float | None = None  # None: the most accurate proposals that fit the budget
    hw: CostModel | None = None
    budget: Budget | None = None
    n: int = 1000
    top: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.target_acc is not None and not 0.0 <= self.target_acc <= 1.0:
            raise UserError(f"target accuracy {self.target_acc} must be an accuracy in [0, 1]")
        if self.budget is not None and self.hw is None:
            raise UserError("a budget needs the hardware model it is priced on")
        if self.target_acc is None and self.budget is None:
            raise UserError("ask for a target accuracy, a budget on a hardware model, or both")
        if self.n < 1 or self.top < 1:
            raise UserError(f"n ({self.n}) and top ({self.top}) must be at least 1")


@dataclass(frozen=True)
class Proposal:
    config: QuantConfig
    target_acc: float | None  # None: tuned to a budget (``hw_tune``), no target
    predicted_acc: float  # tuned: the pessimistic estimate, or a stored config's measured
    predicted_std: float  # the ranker's posterior std (the residual GP's)
    cost: float | None  # the budget metric on the chosen hardware model
    within_budget: bool
    origin: str = "generator"  # tuned: generator, store, bred (+tuned) as in ``hw_tune``

    def to_dict(self) -> dict[str, Any]:
        return {
            "config_hash": self.config.hash,
            **self.config.to_dict(),
            "target_acc": self.target_acc,
            "predicted_acc": self.predicted_acc,
            "predicted_std": self.predicted_std,
            "within_budget": self.within_budget,
            "origin": self.origin,
        }


def unique_rows(idx: np.ndarray) -> np.ndarray:
    """Rows of [n, L, 2] without repeats, first occurrence kept."""
    _, first = np.unique(idx.reshape(len(idx), -1), axis=0, return_index=True)
    return np.sort(first)


def propose(
    loaded: Loaded,
    layers: Sequence[Layer],
    query: Query,
    exclude: frozenset[str] = frozenset(),
    extra: np.ndarray | None = None,
) -> list[Proposal]:
    """Up to ``query.top`` distinct proposals for ``query.target_acc``, those over budget and
    those whose hash is in ``exclude`` dropped, ranked by predicted distance to the target plus
    the ranker's posterior std (``model.TrainedGan``). ``extra`` (choice indices [m, L, 2])
    joins the generator's ``query.n`` samples as candidates."""
    target_acc, top = float(query.target_acc), query.top
    idx, pred, std = _sample(loaded, target_acc, query.n, query.seed)
    if extra is not None and len(extra):
        extra = loaded.pinned(extra)
        more, more_std = gan.predict(loaded.model, torch.as_tensor(extra), len(loaded.bit_choices))
        idx = np.concatenate([idx, extra])
        pred, std = np.concatenate([pred, more]), np.concatenate([std, more_std])
    keep = unique_rows(idx)
    idx, pred, std = idx[keep], pred[keep], std[keep]
    cost, fits = _price(loaded, layers, idx, query.hw, query.budget)

    def excluded(i: int) -> bool:
        # hashed lazily, best first: hashing all of a verification round's 2000 candidates
        # cost about 57 ms, more than generating them
        config = configs_of(idx[i : i + 1], loaded.layer_names, loaded.bit_choices)[0]
        return config.hash in exclude

    ranked = np.argsort(np.abs(pred - target_acc) + std)
    order = list(islice((i for i in ranked if fits[i] and not (exclude and excluded(i))), top))
    return _proposals(loaded, idx, pred, std, cost, fits, order, target_acc)


@dataclass(frozen=True)
class Verified:
    proposal: Proposal
    val_acc: float
    cached: bool  # answered from the store (charged all the same)
    round: int  # 1 for the first proposals, as ``propose`` ranks them unverified

    def to_dict(self) -> dict[str, Any]:
        return {"val_acc": self.val_acc, "cached": self.cached, "round": self.round}


def verify_until_close(
    loaded: Loaded,
    layers: Sequence[Layer],
    query: Query,
    evaluate: Callable[[list[QuantConfig]], list[tuple[float, bool]]],
    rounds: int,
    tolerance: float,
) -> tuple[list[Verified], list[Verified]]:
    """Verify ``top`` proposals for ``query``'s target; while the ``top`` verified ones
    nearest the target are not all within ``tolerance`` of it, tell the ranker what was
    measured and verify ``top`` new proposals, for at most ``rounds`` rounds. Returns (the
    ``top`` verified configs nearest the target, every verification in order); every one of
    them is charged.

    Why: a proposal's miss is systematic (the best-ranked for a target land together, a few
    points off: docs/fidelity-history.md), so the next guess should come from a ranker that
    has seen the miss (``TrainedGan.with_evidence``: milliseconds), not from the same ranking.
    Later rounds also rank configs bred from the verified ones nearest the target
    (``breed``): on the steep part of the accuracy curve the generator's samples can cluster on
    both sides of a target and never near it; mixing a config that landed below with one that
    landed above, or moving the nearest one a step, reaches in between.
    One round is the paper's flow: generate, then verify the few proposals returned.
    """
    target_acc, top = float(query.target_acc), query.top
    done: list[Verified] = []
    for r in range(1, rounds + 1):
        seen = frozenset(v.proposal.config.hash for v in done)
        extra = breed(loaded, done, target_acc, query.n, query.seed + r) if done else None
        proposals = propose(loaded, layers, replace(query, seed=query.seed + r - 1), seen, extra)
        if not proposals:
            break
        measured = evaluate([p.config for p in proposals])
        for p, (acc, cached) in zip(proposals, measured, strict=True):
            done.append(Verified(p, acc, cached, r))
        best = sorted(done, key=lambda v: abs(v.val_acc - target_acc))[:top]
        if all(abs(v.val_acc - target_acc) <= tolerance for v in best) and len(best) == top:
            break
        if r < rounds:
            loaded = told(loaded, [p.config for p in proposals], [acc for acc, _ in measured])
    return sorted(done, key=lambda v: abs(v.val_acc - target_acc))[:top], done


def breed(
    loaded: Loaded, done: Sequence[Verified], target_acc: float, n: int, seed: int
) -> np.ndarray:
    """``n`` configs (choice indices [n, L, 2]) bred from verified ones. With the target
    bracketed: half uniform crossovers of the two nearest below the target with the two nearest
    above it (each child takes every layer's weight and activation choice from one parent, the
    share from the first parent drawn per child), half one-step mutations of the one nearest
    the target. With everything verified on one side: one-step mutations of the two nearest.
    A mutation moves each choice one step with probability 0.1.

    Why the mutations when bracketed: on a steep stretch of the accuracy curve a crossover
    lands near whichever parent it takes a sensitive layer from, while the nearest verified
    config's one-step neighbours stay near its accuracy. The variants measured, kept and left
    out are in docs/measurements.md ("What generate --verify delivers")."""
    rng = np.random.default_rng(seed)

    def mutated(parents: list[np.ndarray], m: int) -> np.ndarray:
        picked = np.stack(parents)[rng.integers(0, len(parents), m)]
        step = rng.choice([-1, 1], picked.shape) * (rng.random(picked.shape) < 0.1)
        return np.clip(picked + step, 0, len(loaded.bit_choices) - 1)

    def nearest(side: list[Verified]) -> list[np.ndarray]:
        near = sorted(side, key=lambda v: abs(v.val_acc - target_acc))[:2]
        return list(
            indices_of([(v.proposal.config.w_bits, v.proposal.config.a_bits) for v in near],
                       loaded.bit_choices)
        )  # fmt: skip

    below = nearest([v for v in done if v.val_acc < target_acc])
    above = nearest([v for v in done if v.val_acc >= target_acc])
    if not (below and above):
        return mutated(below or above, n)
    m = n // 2
    pairs = [(b, a) for b in below for a in above]
    pick = rng.integers(0, len(pairs), m)
    first = np.stack([b for b, _ in pairs])[pick]
    second = np.stack([a for _, a in pairs])[pick]
    share = rng.uniform(0.1, 0.9, (m, 1, 1))
    crossed = np.where(rng.random(first.shape) < share, first, second)
    return np.concatenate([crossed, mutated(nearest(list(done))[:1], n - m)])


def best_under_budget(loaded: Loaded, layers: Sequence[Layer], query: Query) -> list[Proposal]:
    """The most accurate proposals that fit ``query``'s budget: targets swept from the highest
    accuracy the store holds downwards, stopping once ``top`` distinct configs fit (the
    paper's HW-tuning flow). The query's target, if any, is not used."""
    lo, hi = loaded.model.scaler.lo, loaded.model.scaler.hi
    top = query.top
    found: dict[bytes, tuple] = {}
    for step, target in enumerate(np.linspace(hi, lo, SWEEP_STEPS)):
        idx, pred, std = _sample(loaded, float(target), query.n, query.seed + step)
        keep = unique_rows(idx)
        idx, pred, std = idx[keep], pred[keep], std[keep]
        cost, fits = _price(loaded, layers, idx, query.hw, query.budget)
        for i in np.flatnonzero(fits):
            found.setdefault(idx[i].tobytes(), (idx[i], pred[i], std[i], cost[i], float(target)))
        if len(found) >= top:
            break
    ranked = sorted(found.values(), key=lambda r: r[1] - r[2], reverse=True)[:top]
    return [
        Proposal(
            configs_of(r[0][None], loaded.layer_names, loaded.bit_choices)[0],
            r[4],
            float(r[1]),
            float(r[2]),
            float(r[3]),
            True,
        )
        for r in ranked
    ]


def expected_miss(verified: Sequence[tuple[float, float]], acc: float, k: int = 4) -> float | None:
    """How far this checkpoint's proposals landed near ``acc``: the mean |achieved - target| of
    the ``k`` verified proposals (``(target, achieved)`` pairs from ``fidelity.parquet``) whose
    targets lie nearest ``acc``; None without any. The ranker's own std is a model's belief; this
    is what verification measured (the ensemble's spread, the std before the residual GP, stayed
    near 0.01 on misses of 10-15 points: docs/fidelity-history.md)."""
    if not verified:
        return None
    pairs = np.asarray(verified, dtype=np.float64)
    nearest = np.argsort(np.abs(pairs[:, 0] - acc), kind="stable")[:k]
    return float(np.abs(pairs[nearest, 1] - pairs[nearest, 0]).mean())


def _sample(
    loaded: Loaded, target_acc: float, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``gan.sample`` in the checkpoint's search space: a pinned layer the generator set
    otherwise is set to 8 bits and the sample ranked as it will be evaluated."""
    idx, pred, std = gan.sample(loaded.model, target_acc, n, seed)
    pinned = loaded.pinned(idx)
    if pinned is idx or np.array_equal(pinned, idx):
        return idx, pred, std
    pred, std = gan.predict(loaded.model, torch.as_tensor(pinned), len(loaded.bit_choices))
    return pinned, pred, std


def _price(
    loaded: Loaded,
    layers: Sequence[Layer],
    idx: np.ndarray,
    hw: CostModel | None,
    budget: Budget | None,
) -> tuple[np.ndarray, np.ndarray]:
    if hw is None or budget is None:
        return np.full(len(idx), np.nan), np.ones(len(idx), dtype=bool)
    bits = np.asarray(loaded.bit_choices)[idx]
    cost = hw.batch(layers, bits[:, :, 0], bits[:, :, 1])[budget.metric]
    return cost, within_budget(cost, budget)


def _proposals(loaded, idx, pred, std, cost, fits, order, target_acc) -> list[Proposal]:
    configs = configs_of(idx[order], loaded.layer_names, loaded.bit_choices) if order else []
    return [
        Proposal(
            config,
            float(target_acc),
            float(pred[i]),
            float(std[i]),
            None if np.isnan(cost[i]) else float(cost[i]),
            bool(fits[i]),
        )
        for config, i in zip(configs, order, strict=True)
    ]
