"""Hardware tuning: from the trained generator to the most accurate config that fits one design
point, within AQGAN's marginal budget of verified evaluations (``aqgan.verify_top``).

The paper keeps only the generator's proposals that already fit. Under a tight budget, or Bit
Fusion's 2/4/8-bit lanes (a 5-bit layer costs what an 8-bit one does), almost nothing the
generator makes for a high target fits, and what fits is what it made for low targets. Here
every candidate is made to fit, and the ranker (``TrainedGan.rank_predict``) decides:

- **candidates**, each with its ``origin``: the generator's samples for targets swept over the
  store's range (``generator``), AQGAN's own training rows (``store``: collected and refined,
  measured) and one-step mutations of the most accurate of them (``bred``). One over budget is
  projected onto it (``project``), then every one is filled (``fill``); ``+tuned`` in its origin
  says that either changed it.
- **the incumbent**: the most accurate training row within budget, measured already. The
  collection starts with the uniform configs (``collect.anchors``), so the incumbent is never
  below uniform quantization at a point where the uniform config AQGAN collected fits.
- **verification, one at a time**: the candidate the ranker, told every verification so far,
  predicts most accurate is verified while it is predicted above the best measured; the
  incumbent is asked (a cache hit, charged like any) when no candidate is predicted to beat it,
  or when one slot is left and nothing verified has. The choice is never below the incumbent,
  and costs at most ``verify_top`` evaluations.

The variants measured against each other (the paper's flow, the store alone, without the
store's candidates, without projection) are in docs/measurements.md ("Hardware tuning").
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from aqgan_ray.aqgan import model as gan
from aqgan_ray.aqgan.checkpoint import Loaded, told
from aqgan_ray.aqgan.data import band_start, configs_of, indices_of
from aqgan_ray.aqgan.generate import unique_rows
from aqgan_ray.config import QuantConfig
from aqgan_ray.cost import within_budget
from aqgan_ray.search import DesignPoint, Proposer


@dataclass(frozen=True)
class TuneSpec:
    """How many candidates of each kind are tuned; the defaults keep a design point's tuning to
    a few seconds on one core for a 53-layer network."""

    targets: int = 6  # generator targets, from the store's best accuracy down to the band start
    per_target: int = 4  # the generator's samples kept per target, most accurate predicted first
    stored: int = 16  # training rows tuned, most accurate measured first
    bred: int = 16  # mutations of the most accurate training rows
    parents: int = 4
    mutate_prob: float = 0.1
    sources: tuple[str, ...] = ("generator", "store", "bred")
    project: bool = True  # False: candidates over budget are dropped (the paper's filter)
    kappa: float = 1.0  # posterior stds taken off the ranker's capped mean (``Ranker.predict``)
    # The first of two or more slots on the paper's pick (``generate.best_under_budget``'s top
    # proposal, untuned) whatever its estimate: a variant `bench tuning` measures, not `run`.
    lead: bool = False


def free_layers(loaded: Loaded) -> np.ndarray:
    """[L] mask of the layers whose bits a method may change (not the pinned first and last)."""
    free = np.ones(len(loaded.layer_names), dtype=bool)
    if loaded.keep_first_last and len(free) > 1:
        free[[0, -1]] = False
    return free


class Ranker:
    """The design point's prices and the ranker's predictions on choice indices ``[n, L, 2]``."""

    def __init__(self, loaded: Loaded, point: DesignPoint, kappa: float = 1.0):
        self.loaded, self.point, self.kappa = loaded, point, kappa
        self.choices = np.asarray(loaded.bit_choices)
        self.free = free_layers(loaded)

    def cost(self, idx: np.ndarray) -> np.ndarray:
        bits = self.choices[idx]
        return self.point.costs(bits[:, :, 0], bits[:, :, 1])

    def fits(self, cost: np.ndarray) -> np.ndarray:
        return within_budget(cost, self.point.budget)

    def predict(self, idx: np.ndarray) -> np.ndarray:
        """A pessimistic estimate: the ranker's mean, capped at the best accuracy its training
        data holds, minus its posterior std. Descending on the raw mean found configs predicted
        30 points above anything measured (docs/measurements.md, "Hardware tuning"): the
        predictor extrapolates, and tuning against it finds where it does."""
        if not len(idx):
            return np.zeros(0)
        mean, std = gan.predict(self.loaded.model, torch.as_tensor(idx), len(self.choices))
        return np.minimum(mean, self.loaded.model.scaler.hi) - self.kappa * std

    def moves(self) -> tuple[np.ndarray, np.ndarray]:
        """(layer, kind) of every choice a method may move: the free layers' weights and
        activations."""
        return np.nonzero(np.repeat(self.free[:, None], 2, axis=1))

    def neighbours(self, idx: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Every config one choice away (``step`` -1: lower, +1: higher) in one of ``moves``:
        ([m, S, L, 2], valid [m, S])."""
        layers, kinds = self.moves()
        s = np.arange(len(layers))
        nb = np.repeat(idx[:, None], len(layers), axis=1)
        moved = nb[:, s, layers, kinds] + step
        valid = (moved >= 0) & (moved < len(self.choices))
        nb[:, s, layers, kinds] = np.clip(moved, 0, len(self.choices) - 1)
        return nb, valid


def project(ranker: Ranker, idx: np.ndarray, max_rounds: int = 200) -> np.ndarray:
    """Configs over budget lowered until they fit: each round scores every one-choice-lower
    neighbour by budget saved per predicted accuracy lost, and takes the best steps together
    while their savings add up to at most half of what is still over (one step at least; all
    metrics are monotone in every bitwidth, so it ends within budget or at the lowest choices).
    A single step that fits is taken as soon as one exists, the one predicted most accurate."""
    idx = np.array(idx, copy=True)
    for _ in range(max_rounds):
        cost = ranker.cost(idx)
        over = np.flatnonzero(~ranker.fits(cost))
        if not len(over):
            break
        sub = idx[over]
        nb, valid = ranker.neighbours(sub, -1)
        layers, kinds = ranker.moves()
        m, s = valid.shape
        flat = nb.reshape(m * s, *sub.shape[1:])
        nb_cost = ranker.cost(flat).reshape(m, s)
        nb_pred = ranker.predict(flat).reshape(m, s)
        pred = ranker.predict(sub)
        saving = cost[over][:, None] - nb_cost
        loss = np.maximum(pred[:, None] - nb_pred, 1e-4)
        score = np.where(valid & (saving > 0), saving / loss, -np.inf)
        fitting = np.where(valid & ranker.fits(nb_cost), nb_pred, -np.inf)
        excess = cost[over] - ranker.point.budget.value
        for row in range(m):
            if np.isfinite(fitting[row]).any():
                sub[row] = nb[row, int(np.argmax(fitting[row]))]
                continue
            order = np.argsort(-score[row])
            order = order[np.isfinite(score[row, order])]
            if not len(order):
                continue  # at the lowest choices already
            take = order[np.cumsum(saving[row, order]) <= 0.5 * excess[row]]
            take = take if len(take) else order[:1]
            sub[row, layers[take], kinds[take]] -= 1
        idx[over] = sub
    return idx


def fill(ranker: Ranker, idx: np.ndarray, max_rounds: int = 200) -> np.ndarray:
    """Configs within budget raised while the ranker predicts a gain: each round takes, per
    config, the one-choice-higher neighbour that still fits and is predicted most accurate."""
    idx = np.array(idx, copy=True)
    active = np.arange(len(idx))
    for _ in range(max_rounds):
        if not len(active):
            break
        sub = idx[active]
        nb, valid = ranker.neighbours(sub, +1)
        m, s = valid.shape
        flat = nb.reshape(m * s, *sub.shape[1:])
        nb_fits = ranker.fits(ranker.cost(flat)).reshape(m, s)
        gain = ranker.predict(flat).reshape(m, s) - ranker.predict(sub)[:, None]
        gain = np.where(valid & nb_fits & (gain > 1e-4), gain, -np.inf)
        moved = np.isfinite(gain).any(axis=1)
        best = np.argmax(gain, axis=1)
        idx[active[moved]] = nb[np.flatnonzero(moved), best[moved]]
        active = active[moved]
    return idx


@dataclass(frozen=True)
class Candidates:
    idx: np.ndarray  # [n, L, 2], every one within budget, none a training row
    origin: tuple[str, ...]


def training_arrays(
    loaded: Loaded, rows: Sequence[dict[str, Any]]
) -> tuple[np.ndarray, np.ndarray]:
    """AQGAN's training rows as (choice indices [n, L, 2], validation accuracy)."""
    if not rows:
        return np.zeros((0, len(loaded.layer_names), 2), dtype=np.int64), np.zeros(0)
    idx = indices_of([(r["w_bits"], r["a_bits"]) for r in rows], loaded.bit_choices)
    return np.asarray(idx, dtype=np.int64), np.array([float(r["val_acc"]) for r in rows])


def candidates(
    ranker: Ranker,
    stored_idx: np.ndarray,
    stored_acc: np.ndarray,
    seed: int,
    samples: int,
    spec: TuneSpec = TuneSpec(),
) -> Candidates:
    """The candidates of one design point, tuned to its budget (see the module's docstring)."""
    loaded = ranker.loaded
    parts: list[tuple[np.ndarray, str]] = []
    if "generator" in spec.sources:
        lo, hi = loaded.model.scaler.lo, loaded.model.scaler.hi
        for step, target in enumerate(np.linspace(hi, band_start(lo, hi), spec.targets)):
            idx, _, _ = gan.sample(loaded.model, float(target), samples, seed + step)
            idx = loaded.pinned(idx)
            pred = ranker.predict(idx)
            keep = unique_rows(idx)
            idx, pred = idx[keep], pred[keep]
            fits = ranker.fits(ranker.cost(idx))
            # the most accurate that fit as they are (the paper's flow) and those that do not
            for mask in (fits, ~fits):
                best = np.flatnonzero(mask)[np.argsort(-pred[mask], kind="stable")]
                parts.append((idx[best[: spec.per_target]], "generator"))
    if "sampler" in spec.sources:  # the ablation `sampler-ranked`: the generator's place
        parts += _sampler_parts(ranker, stored_idx, stored_acc, seed, spec.targets * samples,
                                2 * spec.targets * spec.per_target)  # fmt: skip
    order = np.argsort(-stored_acc, kind="stable")
    if "store" in spec.sources and len(order):
        parts.append((stored_idx[order[: spec.stored]], "store"))
    if "bred" in spec.sources and len(order):
        rng = np.random.default_rng(seed)
        parents = stored_idx[order[: spec.parents]]
        picked = parents[rng.integers(0, len(parents), spec.bred)]
        moves = rng.choice([-1, 1], picked.shape) * (rng.random(picked.shape) < spec.mutate_prob)
        bred = loaded.pinned(np.clip(picked + moves, 0, len(loaded.bit_choices) - 1))
        parts.append((bred, "bred"))
    parts = [(idx, name) for idx, name in parts if len(idx)]
    if not parts:
        return Candidates(np.zeros((0, *stored_idx.shape[1:]), dtype=np.int64), ())
    raw = np.concatenate([idx for idx, _ in parts])
    origin = [name for idx, name in parts for _ in range(len(idx))]
    if spec.project:
        tuned = project(ranker, raw)
    else:  # the paper's filter: what does not fit is dropped
        fits = ranker.fits(ranker.cost(raw))
        raw, origin = raw[fits], [o for o, f in zip(origin, fits, strict=True) if f]
        tuned = raw
    tuned = fill(ranker, tuned)
    changed = (tuned != raw).reshape(len(raw), -1).any(axis=1)
    origin = [o + "+tuned" if c else o for o, c in zip(origin, changed, strict=True)]
    # a training row is measured already: within budget, the incumbent covers it
    known = {row.tobytes() for row in stored_idx}
    fits = ranker.fits(ranker.cost(tuned))
    keep = [i for i in unique_rows(tuned) if fits[i] and tuned[i].tobytes() not in known]
    return Candidates(tuned[keep], tuple(origin[i] for i in keep))


def _sampler_parts(
    ranker: Ranker,
    stored_idx: np.ndarray,
    stored_acc: np.ndarray,
    seed: int,
    draws: int,
    keep: int,
) -> list[tuple[np.ndarray, str]]:
    """As many draws of the collection sampler as the generator makes, the sampler told AQGAN's
    training rows as ``collect`` would have; of them the ``keep`` predicted most accurate, half
    among those that fit and half among those that do not, as the generator's are kept."""
    from aqgan_ray.sampling import CollectionSampler

    loaded = ranker.loaded
    sampler = CollectionSampler(loaded.layer_names, loaded.bit_choices, seed,
                                keep_first_last=loaded.keep_first_last)  # fmt: skip
    for config, acc in zip(configs_of(stored_idx, loaded.layer_names, loaded.bit_choices),
                           stored_acc, strict=True):  # fmt: skip
        sampler.tell(config, float(acc))
    drawn = [sampler.ask()[0] for _ in range(draws)]
    idx = indices_of([(c.w_bits, c.a_bits) for c in drawn], loaded.bit_choices)
    idx = np.asarray(idx, dtype=np.int64)[unique_rows(np.asarray(idx, dtype=np.int64))]
    pred = ranker.predict(idx)
    fits = ranker.fits(ranker.cost(idx))
    parts = []
    for mask in (fits, ~fits):
        best = np.flatnonzero(mask)[np.argsort(-pred[mask], kind="stable")]
        parts.append((idx[best[: keep // 2]], "sampler"))
    return parts


class TunedAqgan(Proposer):
    """AQGAN at one design point: hardware tuning of its candidates, verified one at a time (the
    module's docstring). ``stored`` are AQGAN's training rows (``refine.training_rows``); the
    generator is not retrained per design point, only its ranker told what was verified."""

    name = "aqgan"

    def __init__(
        self,
        loaded: Loaded,
        point: DesignPoint,
        seed: int,
        samples: int,
        top: int,
        stored: Sequence[dict[str, Any]] = (),
        spec: TuneSpec = TuneSpec(),
    ):
        # candidates are tuned on the checkpoint's ranker, whatever it was told since: a resumed
        # search tunes the same ones
        self.base = self.loaded = loaded
        self.point, self.seed = point, seed
        self.samples, self.top, self.spec = samples, top, spec
        self.stored_idx, self.stored_acc = training_arrays(loaded, stored)
        # the floor: the most accurate training row that fits (measured already)
        self.incumbent = point.best_fitting(stored)
        self.asked: list[tuple[QuantConfig, str]] = []
        self.estimates: list[float] = []  # each asked config's estimate (the floor: measured)
        self.measured: list[float] = []
        self.done = False
        self.tune_s = 0.0
        self._pool: Candidates | None = None
        self._pred: np.ndarray | None = None

    def _configs(self, idx: np.ndarray) -> list[QuantConfig]:
        return configs_of(idx, self.loaded.layer_names, self.loaded.bit_choices)

    def _ranked(self) -> tuple[Candidates, np.ndarray]:
        start = time.perf_counter()
        if self._pool is None:
            ranker = Ranker(self.base, self.point, self.spec.kappa)
            self._pool = candidates(ranker, self.stored_idx, self.stored_acc, self.seed,
                                    self.samples, self.spec)  # fmt: skip
        if self._pred is None:
            self._pred = Ranker(self.loaded, self.point, self.spec.kappa).predict(self._pool.idx)
        self.tune_s += time.perf_counter() - start
        return self._pool, self._pred

    def ask(self, n: int) -> list[QuantConfig]:
        """One config at a time: what to verify next depends on what was measured."""
        if self.done or n < 1 or len(self.asked) >= self.top:
            return []
        if self.spec.lead and not self.asked and self.top > 1:
            lead = self._paper_pick()
            if lead is not None:
                self.asked.append((lead, "generator"))
                self.estimates.append(float("nan"))
                return [lead]
        pool, pred = self._ranked()
        asked = {c.hash for c, _ in self.asked}
        best = max(self.measured, default=-np.inf)
        bar = max(best, self.incumbent[1] if self.incumbent else -np.inf)
        pick = next(
            (i for i in np.argsort(-pred, kind="stable")
             if self._configs(pool.idx[i : i + 1])[0].hash not in asked),
            None,
        )  # fmt: skip
        owed = self.incumbent is not None and best < self.incumbent[1]
        last = len(self.asked) == self.top - 1
        if pick is None or pred[pick] <= bar or (owed and last):
            self.done = True
            if not owed:
                return []
            self.asked.append((self.incumbent[0], "store"))
            self.estimates.append(self.incumbent[1])
            return [self.incumbent[0]]
        config = self._configs(pool.idx[pick : pick + 1])[0]
        self.asked.append((config, pool.origin[pick]))
        self.estimates.append(float(pred[pick]))
        return [config]

    def _paper_pick(self) -> QuantConfig | None:
        from aqgan_ray.aqgan.generate import Query, best_under_budget

        query = Query(None, self.point.hw, self.point.budget, self.samples, 1, self.seed)
        found = best_under_budget(self.base, self.point.layers, query)
        return found[0].config if found else None

    def shortlist(self, k: int) -> list[tuple[QuantConfig, float, float, str]]:
        """The ``k`` best, unverified, as (config, estimate, the ranker's std, origin): the tuned
        candidates at the ranker's estimate and the floor at its measured accuracy (std 0),
        most accurate first."""
        pool, pred = self._ranked()
        order = np.argsort(-pred, kind="stable")[:k]
        _, std = gan.predict(self.loaded.model, torch.as_tensor(pool.idx[order]),
                             len(self.loaded.bit_choices))  # fmt: skip
        rows = [(self._configs(pool.idx[i : i + 1])[0], float(pred[i]), float(sd), pool.origin[i])
                for i, sd in zip(order, std, strict=True)]  # fmt: skip
        if self.incumbent is not None:
            rows.append((self.incumbent[0], self.incumbent[1], 0.0, "store"))
        return sorted(rows, key=lambda r: -r[1])[:k]

    def tell(self, configs: Sequence[QuantConfig], val_accs: Sequence[float]) -> None:
        """The ranker is told (milliseconds) and the candidates ranked again."""
        self.measured += [float(a) for a in val_accs]
        self.loaded = told(self.loaded, list(configs), list(val_accs))
        self._pred = None

    def origin(self, config: QuantConfig) -> str:
        return next((o for c, o in self.asked if c.hash == config.hash), self.name)

    def state_dict(self) -> dict[str, Any]:
        return {
            "asked_w": [list(c.w_bits) for c, _ in self.asked],
            "asked_a": [list(c.a_bits) for c, _ in self.asked],
            "origins": [o for _, o in self.asked],
            "estimates": list(self.estimates),
            "measured": list(self.measured),
            "done": self.done,
            "tune_s": self.tune_s,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = self.loaded.layer_names
        self.asked = [
            (QuantConfig(names, tuple(w), tuple(a)), o)
            for w, a, o in zip(state["asked_w"], state["asked_a"], state["origins"], strict=True)
        ]
        self.estimates = [float(e) for e in state["estimates"]]
        self.measured, self.done = list(state["measured"]), bool(state["done"])
        self.tune_s = float(state["tune_s"])
        told_configs = [c for c, _ in self.asked][: len(self.measured)]
        if told_configs:
            self.loaded = told(self.loaded, told_configs, self.measured)
        self._pred = None

    def summary(self) -> dict[str, Any]:
        return {
            "decide_s": self.tune_s,
            "tune_s": self.tune_s,
            "verified": len(self.asked),
            "origins": [o for _, o in self.asked],
            "incumbent_val_acc": None if self.incumbent is None else self.incumbent[1],
        }
