"""Layer sensitivity plus integer programming (HAWQ-V3, Yao et al., ICML 2021): measure each
layer's sensitivity once, then solve for the bits under the budget. No search: its cost is one
sensitivity pass (shared by every design point of a seed) and the configs it verifies.

Sensitivity (HAWQ-V2/V3): quantizing layer i's weights to b bits raises the loss by about
``Omega_w[i, b] = Tr(H_i) / n_i * ||Q_b(W_i) - W_i||^2``, the Hessian's mean diagonal (its trace
estimated with Hutchinson's method, ``E[v^T H v]`` over Rademacher probes ``v``) times the
quantization perturbation, measured with the evaluator's own quantizers on the BN-folded model.
The integer program picks one (w, a) per layer minimising ``sum_i Omega_w[i, w_i] + Omega_a[i,
a_i]`` subject to the budget, solved exactly by HiGHS (``scipy.optimize.milp``; a solve that
reaches ``SOLVE_LIMIT_S`` keeps its best solution and is counted). Every cost model
here is a sum of per-layer costs that depend only on that layer's bits (cost.py), so the budget is
one linear constraint for any of them, lookup tables included; the config is priced again before
it is asked for. The search space and the first/last-layer rule are the design point's.

Deviations from HAWQ-V3, each because our search space or protocol differs:
- *Activations too, by their Fisher.* HAWQ-V3 gives a layer's weights and activations one
  precision and measures the weights' sensitivity only; here they are chosen separately, as for
  every method, so ``Omega_a[i, a]`` is the loss's curvature in the layer's input times the mean
  squared error of quantizing that input on the calibration images. The curvature is the
  per-image Fisher's mean diagonal (squared input gradients, exact from one backward pass), not
  the Hessian's: the loss is not at a minimum in the activations, and Hutchinson's estimate of
  that Hessian came out negative at 13 of the smoke model's 53 layers (docs/measurements.md).
  Weights and activations add, as layers do (HAWQ's assumption).
- *A fixed probe count* (``baselines.ilp_probes`` per batch of 128 calibration images) instead
  of PyHessian's tolerance loop. Per-layer estimates are noisy (their standard error is a third
  of their size at 32 probes), so an estimate below its standard error counts at that error:
  clipped at zero instead, a layer whose curvature the probes did not resolve was free to take
  2 bits, and the ILP's picks fell to 0.20-0.74 on the smoke points at 4-16 probes
  (docs/measurements.md, "Sensitivity + ILP", where the probe count was chosen).
- *HiGHS, not PuLP/CBC*; ``--evaluations K`` verifies the K best solutions (each next one the
  optimum with the earlier ones cut off), and the most accurate on validation is its choice.
- *No fine-tuning after the choice* beyond the evaluator's protocol, the same for every method.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import Tensor, nn
from tqdm import tqdm

from aqgan_ray.config import PINNED_BITS, QuantConfig
from aqgan_ray.data import normalize
from aqgan_ray.layers import Layer
from aqgan_ray.quant import Calibration, act_range, fake_quant_act, fake_quant_weight
from aqgan_ray.search import DesignPoint, Proposer

SENSITIVITY_FORMAT = 2
SOLVE_LIMIT_S = 60.0  # per solve; the design points here take about a second


@dataclass(frozen=True)
class Sensitivity:
    """Predicted loss increase of quantizing each layer's weights (``weight[i][j]``) or its input
    (``act[i][j]``) to ``bit_choices[j]``, with the traces behind them and what the pass cost."""

    layers: tuple[str, ...]
    bit_choices: tuple[int, ...]
    weight: tuple[tuple[float, ...], ...]
    act: tuple[tuple[float, ...], ...]
    weight_trace: tuple[float, ...]  # Tr(H)/n per layer (Hutchinson's estimate)
    weight_trace_se: tuple[float, ...]  # its standard error over the probes
    weight_error: tuple[tuple[float, ...], ...]  # ||Q_b(W_i) - W_i||^2
    act_fisher: tuple[float, ...]  # the input's mean Fisher diagonal per image (see top)
    images: int  # calibration images
    probes: int  # Rademacher probes per batch
    seed: int
    seconds: float  # wall seconds of the pass
    threads: int  # torch's threads during it

    def to_dict(self) -> dict[str, Any]:
        return {"format": SENSITIVITY_FORMAT, **asdict(self)}

    @property
    def digest(self) -> str:
        """What the integer program reads, hashed: an ILP search belongs to one measurement."""
        text = json.dumps([self.layers, self.bit_choices, self.weight, self.act])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sensitivity:
        if data.get("format") != SENSITIVITY_FORMAT:
            raise ValueError("another sensitivity format")
        fields = {k: v for k, v in data.items() if k != "format"}
        for key in ("layers", "bit_choices", "weight_trace", "weight_trace_se", "act_fisher"):
            fields[key] = tuple(fields[key])
        for key in ("weight", "act", "weight_error"):
            fields[key] = tuple(tuple(row) for row in fields[key])
        return cls(**fields)


def measure_sensitivity(
    model: nn.Module,
    layers: Sequence[Layer],
    calibration: Calibration,
    images: Tensor,
    labels: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    probes: int,
    seed: int,
    keep_first_last: bool = False,
    batch_size: int = 128,
    threads: int | None = None,
    progress: bool = False,
) -> Sensitivity:
    """HAWQ's sensitivity of every layer at every bitwidth, on the (BN-folded, float) ``model``
    and labelled calibration images; the model's parameters are left as they were. ``threads``:
    torch's threads for the pass (an evaluator's, so that its seconds compare with theirs)."""
    if probes * -(-len(images) // batch_size) < 2:
        raise ValueError("the traces' standard error needs at least two probes in all")
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    n, choices = len(layers), calibration.bit_choices
    modules = dict(model.named_modules())
    mods = [modules[layer.name] for layer in layers]
    acts_of = [i for i in range(n) if not (keep_first_last and i == 0)]  # the image: unquantized
    gen = torch.Generator().manual_seed(seed)
    captured: dict[int, Tensor] = {}

    def capture(i: int):
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            x = args[0].clone()  # its own graph node: this layer's input alone
            captured[i] = x if x.requires_grad else x.requires_grad_(True)  # the image
            return (captured[i],)

        return hook

    was = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    weights = [m.weight for m in mods]
    for w in weights:
        w.requires_grad_(True)
    handles = [mods[i].register_forward_pre_hook(capture(i)) for i in acts_of]
    estimates: list[np.ndarray] = []  # one Hutchinson estimate of every layer's Tr(H)/n per probe
    a_fisher = np.zeros(n)
    a_err = np.zeros((n, len(choices)))
    model.eval()
    try:
        starts = range(0, len(images), batch_size)
        for lo in tqdm(starts, desc="sensitivity", unit="batch", disable=not progress):
            x = normalize(images[lo : lo + batch_size], mean, std)
            loss = nn.functional.cross_entropy(model(x), labels[lo : lo + batch_size])
            acts = [captured[i] for i in acts_of]
            grads = torch.autograd.grad(loss, [*weights, *acts], create_graph=True)
            w_grads, a_grads = grads[:n], grads[n:]
            for _ in range(probes):
                vs = [torch.randint(0, 2, g.shape, generator=gen).float() * 2 - 1 for g in w_grads]
                hvs = torch.autograd.grad(w_grads, weights, vs, retain_graph=True)
                vhv = [float((h * v).sum()) / v.numel() for h, v in zip(hvs, vs, strict=True)]
                estimates.append(np.array(vhv))
            count = len(x)
            for k, i in enumerate(acts_of):
                act, per_image = acts[k].detach(), a_grads[k].detach() * count
                # the per-image Fisher's mean diagonal: each image's input gradient is its own
                a_fisher[i] += float(per_image.pow(2).sum()) / act[0].numel()
                for j, bits in enumerate(choices):
                    qmin, qmax = act_range(bits, calibration.act_signed[i])
                    quantized = fake_quant_act(act, calibration.act_scale[i][bits], qmin, qmax)
                    a_err[i, j] += float((quantized - act).pow(2).sum())
            del grads, w_grads, a_grads, acts
        with torch.no_grad():
            w_err = np.array(
                [
                    [float((fake_quant_weight(w, scales[b], b) - w).pow(2).sum()) for b in choices]
                    for w, scales in zip(weights, calibration.weight_scale, strict=True)
                ]
            )
        seconds, used_threads = time.perf_counter() - start, torch.get_num_threads()
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(model.parameters(), was, strict=True):
            p.requires_grad_(flag)
        torch.set_num_threads(saved_threads)
    samples = np.array(estimates)
    w_trace = samples.mean(axis=0)
    w_se = samples.std(axis=0, ddof=1) / np.sqrt(len(samples)) if len(samples) > 1 else 0 * w_trace
    a_fisher /= len(images)
    # a trace within its own noise counts at its standard error, not at zero: a layer whose
    # curvature the probes did not resolve is not free to quantize (docs/measurements.md)
    omega_w = np.maximum(w_trace, w_se)[:, None] * w_err
    omega_a = a_fisher[:, None] * a_err / len(images)
    return Sensitivity(
        layers=tuple(layer.name for layer in layers),
        bit_choices=tuple(choices),
        weight=tuple(tuple(map(float, row)) for row in omega_w),
        act=tuple(tuple(map(float, row)) for row in omega_a),
        weight_trace=tuple(map(float, w_trace)),
        weight_trace_se=tuple(map(float, w_se)),
        weight_error=tuple(tuple(map(float, row)) for row in w_err),
        act_fisher=tuple(map(float, a_fisher)),
        images=len(images),
        probes=probes,
        seed=seed,
        seconds=seconds,
        threads=used_threads,
    )


def clipped_at_zero(sensitivity: Sensitivity) -> Sensitivity:
    """The weights' sensitivity with every trace estimate below zero counted as zero instead of
    at its standard error: the alternative ``bench sensitivity`` measures against."""
    traces = np.clip(np.array(sensitivity.weight_trace), 0, None)
    weight = traces[:, None] * np.array(sensitivity.weight_error)
    return replace(sensitivity, weight=tuple(tuple(map(float, row)) for row in weight))


@dataclass(frozen=True)
class Solution:
    config: QuantConfig
    objective: float  # predicted loss increase, sum of the chosen Omegas
    cost: float  # the budget metric, priced again


class IntegerProgram:
    """The multiple-choice knapsack of one design point: a binary per layer and (w, a) choice,
    exactly one per layer, the summed per-layer cost within the budget. ``next()`` returns the
    optimum not returned before (the earlier ones cut off), or None when no config is left."""

    def __init__(self, point: DesignPoint, sensitivity: Sensitivity):
        if sensitivity.layers != point.layer_names:
            raise ValueError("the sensitivity was measured on another layer table")
        self.point = point
        choices = point.bit_choices
        index = {b: j for j, b in enumerate(sensitivity.bit_choices)}
        omega_w, omega_a = np.array(sensitivity.weight), np.array(sensitivity.act)
        n = len(point.layers)
        pinned = {0, n - 1} if point.keep_first_last else set()
        # (layer, w, a) per variable; a pinned layer has one choice and no sensitivity to pay
        self.vars = [
            (i, w, a)
            for i in range(n)
            for w, a in (
                [(PINNED_BITS, PINNED_BITS)] if i in pinned else itertools.product(choices, choices)
            )
        ]
        layer = np.array([v[0] for v in self.vars])
        self.objective = np.array(
            [
                0.0 if i in pinned else omega_w[i, index[w]] + omega_a[i, index[a]]
                for i, w, a in self.vars
            ]
        )
        # Per-layer costs as differences from the all-lowest config: exact for any model whose
        # cost is a sum over layers of a function of that layer's bits (every one here).
        base = np.full(n, min(choices))
        w_bits, a_bits = np.tile(base, (len(self.vars), 1)), np.tile(base, (len(self.vars), 1))
        rows = np.arange(len(self.vars))
        w_bits[rows, layer] = [v[1] for v in self.vars]
        a_bits[rows, layer] = [v[2] for v in self.vars]
        self.base_cost = float(point.costs(base[None], base[None])[0])
        self.delta = point.costs(w_bits, a_bits) - self.base_cost
        self.one_per_layer = np.zeros((n, len(self.vars)))
        self.one_per_layer[layer, rows] = 1.0
        self.cuts: list[np.ndarray] = []
        self.solve_s = 0.0
        self.time_limited = 0  # solves stopped at SOLVE_LIMIT_S: their best, maybe not optimal
        self.repaired = 0  # solutions rounding kept over budget, lowered by HAQ's enforcement

    def next(self) -> Solution | None:
        start = time.perf_counter()
        try:
            capacity = self.point.budget.value - self.base_cost
            for attempt in range(3):  # tightened when rounding let a sum slip over the budget
                x = self._solve(capacity)
                if x is None:  # infeasible: every fitting config was returned
                    return None
                chosen = x > 0.5
                w = [w for (_, w, _), on in zip(self.vars, chosen, strict=True) if on]
                a = [a for (_, _, a), on in zip(self.vars, chosen, strict=True) if on]
                config = self.point.config(w, a)
                cost = self.point.cost(config)
                if self.point.fits(config) or attempt == 2:
                    break
                capacity -= cost - self.point.budget.value
            self.cuts.append(chosen)
            if not self.point.fits(config):
                config, self.repaired = self.point.repair(config), self.repaired + 1
                cost = self.point.cost(config)
            return Solution(config, float(self.objective[chosen].sum()), cost)
        finally:
            self.solve_s += time.perf_counter() - start

    def _solve(self, capacity: float) -> np.ndarray | None:
        n_layers = self.one_per_layer.shape[0]
        scale = max(abs(capacity), float(np.abs(self.delta).max()), 1e-30)
        constraints = [
            LinearConstraint(self.one_per_layer, 1, 1),
            LinearConstraint(self.delta[None] / scale, -np.inf, capacity / scale),
        ]
        if self.cuts:  # every earlier solution: at least one layer chosen otherwise
            constraints.append(
                LinearConstraint(np.array(self.cuts, dtype=float), -np.inf, n_layers - 1)
            )
        top = float(np.abs(self.objective).max()) or 1.0
        result = milp(
            self.objective / top,
            integrality=np.ones(len(self.vars)),
            bounds=Bounds(0, 1),
            constraints=constraints,
            options={"mip_rel_gap": 0.0, "time_limit": SOLVE_LIMIT_S},
        )
        if result.x is None:
            return None
        if result.status == 1:  # the time limit: its best feasible solution so far, counted
            self.time_limited += 1
        return result.x


class Ilp(Proposer):
    """Asks for the integer program's solutions in order, best predicted first; the verified
    one with the highest validation accuracy is its choice."""

    name = "ilp"

    def __init__(self, point: DesignPoint, sensitivity: Sensitivity):
        self.sensitivity = sensitivity
        self.program = IntegerProgram(point, sensitivity)
        self.solutions: list[Solution] = []
        self.asked = 0
        self.solve_s = 0.0  # the solver's seconds over the search, resumed runs summed
        self.exhausted = False

    def ask(self, n: int) -> list[QuantConfig]:
        before = self.program.solve_s
        while len(self.solutions) < self.asked + n and not self.exhausted:
            solution = self.program.next()
            if solution is None:
                self.exhausted = True
            else:
                self.solutions.append(solution)
        self.solve_s += self.program.solve_s - before
        out = self.solutions[self.asked : self.asked + n]
        self.asked += len(out)
        return [s.config for s in out]

    def tell(self, configs: Sequence[QuantConfig], val_accs: Sequence[float]) -> None:
        """Nothing to learn: the program ranks by its sensitivity alone."""

    def state_dict(self) -> dict[str, Any]:
        return {"asked": self.asked, "solve_s": self.solve_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        asked = int(state["asked"])
        self.ask(asked)  # the same solutions again (deterministic), their solves not recharged
        self.asked, self.solve_s = asked, float(state["solve_s"])

    def summary(self) -> dict[str, Any]:
        return {
            "decide_s": self.solve_s,
            "solve_s": self.solve_s,
            "sensitivity_s": self.sensitivity.seconds,
            "sensitivity_images": self.sensitivity.images,
            "sensitivity_probes": self.sensitivity.probes,
            "objectives": [s.objective for s in self.solutions[: self.asked]],
            "time_limited": self.program.time_limited,
            "repaired": self.program.repaired,
        }
