"""Sensitivity + ILP: the integer program against brute force on small layer tables, its
solution pool in order, the proposer's resume, and the sensitivity pass against exact Hessian
traces and per-image gradients on a tiny real model."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from aqgan_ray.cost import get_hw_model, parse_budget
from aqgan_ray.data import normalize
from aqgan_ray.layers import layer_table
from aqgan_ray.quant import calibrate
from aqgan_ray.search import DesignPoint
from baselines.ilp import Ilp, IntegerProgram, Sensitivity, clipped_at_zero, measure_sensitivity


def _sensitivity(layers, choices, seed=0) -> Sensitivity:
    """Random per-layer sensitivities, falling with bits as measured ones do."""
    rng = np.random.default_rng(seed)
    scale = 4.0 ** -np.asarray(choices, dtype=float)  # the quantization error's ~4^-b
    weight = rng.uniform(0.1, 2.0, (len(layers), 1)) * scale
    act = rng.uniform(0.1, 2.0, (len(layers), 1)) * scale
    return Sensitivity(
        layers=tuple(layer.name for layer in layers),
        bit_choices=tuple(choices),
        weight=tuple(map(tuple, weight)),
        act=tuple(map(tuple, act)),
        weight_trace=(1.0,) * len(layers),
        weight_trace_se=(0.1,) * len(layers),
        weight_error=tuple(map(tuple, weight)),
        act_fisher=(1.0,) * len(layers),
        images=1,
        probes=1,
        seed=seed,
        seconds=0.0,
        threads=1,
    )


def _point(layers, choices, hw, budget, keep_first_last=False) -> DesignPoint:
    model = get_hw_model(hw, layers, choices)
    parsed = parse_budget(budget, model, layers, min(choices), keep_first_last)
    return DesignPoint(tuple(layers), tuple(choices), model, parsed, keep_first_last)


def _brute_force(point: DesignPoint, sens: Sensitivity) -> list[tuple[float, tuple]]:
    """Every distinct config of the point's space that fits, with its objective, best first."""
    choices, n = point.bit_choices, len(point.layers)
    index = {b: j for j, b in enumerate(sens.bit_choices)}
    pinned = {0, n - 1} if point.keep_first_last else set()
    pairs = list(itertools.product(choices, choices))
    seen, out = set(), []
    for combo in itertools.product(pairs, repeat=n):
        config = point.config([w for w, _ in combo], [a for _, a in combo])
        key = (config.w_bits, config.a_bits)
        if key in seen or not point.fits(config):
            continue
        seen.add(key)
        objective = sum(
            sens.weight[i][index[w]] + sens.act[i][index[a]]
            for i, (w, a) in enumerate(zip(*key, strict=True))
            if i not in pinned
        )
        out.append((objective, key))
    return sorted(out)


@pytest.mark.parametrize(
    ("hw", "budget", "keep_first_last"),
    [
        ("bitops", "bitops=0.3x", False),
        ("bitfusion", "latency_ms=0.6x", False),  # padded to 2/4/8: steps, not a line
        ("bismo-cloud", "energy_mj=0.45x", True),  # HAQ's space: first and last layers at 8
    ],
)
def test_the_integer_program_finds_brute_force_optima_in_order(
    smoke_layers, hw, budget, keep_first_last
):
    layers = smoke_layers[:4] if keep_first_last else smoke_layers[1:4]
    choices = (2, 4, 8)
    point = _point(layers, choices, hw, budget, keep_first_last)
    sens = _sensitivity(layers, choices)
    exact = _brute_force(point, sens)
    assert 5 < len(exact) < 9 ** len(layers)  # the budget binds: a real choice
    program = IntegerProgram(point, sens)
    found = [program.next() for _ in range(5)]
    for solution, (objective, _) in zip(found, exact, strict=False):  # ties: any order
        assert point.fits(solution.config)
        assert solution.objective == pytest.approx(objective, rel=1e-6, abs=1e-12)
        assert solution.cost == pytest.approx(point.cost(solution.config))
    assert len({(s.config.w_bits, s.config.a_bits) for s in found}) == 5  # distinct
    if keep_first_last:
        assert all(s.config == s.config.pinned() for s in found)
    assert program.solve_s > 0


def test_the_pool_ends_once_every_fitting_config_was_returned(smoke_layers):
    layers, choices = smoke_layers[1:3], (2, 8)
    point = _point(layers, choices, "bitops", "bitops=0.2x")
    exact = _brute_force(point, _sensitivity(layers, choices))
    proposer = Ilp(point, _sensitivity(layers, choices))
    asked = proposer.ask(100)
    assert len(asked) == len(exact) and proposer.ask(1) == []
    assert {(c.w_bits, c.a_bits) for c in asked} == {key for _, key in exact}


def test_the_proposer_resumes_where_it_stopped(point_at, smoke_layers):
    point = point_at("energy_mj=0.5x")
    sens = _sensitivity(smoke_layers, point.bit_choices)
    first = Ilp(point, sens)
    asked = first.ask(1)
    assert point.fits(asked[0])
    first.tell(asked, [0.5])
    state = first.state_dict()
    resumed = Ilp(point, sens)
    resumed.load_state_dict(state)
    assert resumed.solve_s == state["solve_s"]  # the replayed solve is not charged again
    assert resumed.ask(1) == first.ask(1) != asked
    assert resumed.solve_s > state["solve_s"]  # the new one is
    summary = first.summary()
    assert summary["solve_s"] == summary["decide_s"] > 0 and len(summary["objectives"]) == 2
    with pytest.raises(ValueError, match="another layer table"):
        Ilp(point, _sensitivity(smoke_layers[:3], point.bit_choices))


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _exact_traces(model, x, y):
    """Per layer: Tr(H)/n of the mean loss in that layer's weight (the full Hessian)."""
    from torch.func import functional_call

    params = dict(model.named_parameters())
    out = []
    for name in ("conv.weight", "fc.weight"):

        def loss(w, name=name):
            logits = functional_call(model, {**params, name: w}, (x,))
            return nn.functional.cross_entropy(logits, y)

        hessian = torch.autograd.functional.hessian(loss, params[name].detach())
        n = params[name].numel()
        out.append(float(hessian.reshape(n, n).trace()) / n)
    return out


def test_the_sensitivity_pass_estimates_the_exact_traces_and_gradients():
    torch.manual_seed(0)
    model = _Tiny().eval()
    mean, std = (0.5,), (0.25,)
    images = torch.randint(0, 256, (64, 1, 6, 6), dtype=torch.uint8)
    labels = torch.randint(0, 3, (64,))
    layers = layer_table(model, (1, 6, 6))
    calibration = calibrate(model, layers, images, mean, std, (2, 4, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sens = measure_sensitivity(model, layers, calibration, images, labels, mean, std,
                               probes=400, seed=0, batch_size=64)  # fmt: skip
    x = normalize(images, mean, std)
    for got, exact in zip(sens.weight_trace, _exact_traces(model, x, labels), strict=True):
        assert got == pytest.approx(exact, rel=0.15)
    # the input's Fisher: each image's own loss gradient, squared, per element and image
    inputs = {}
    hook = model.fc.register_forward_pre_hook(lambda m, a: inputs.update(fc=a[0]))
    loss = nn.functional.cross_entropy(model(x), labels, reduction="sum")
    grad = torch.autograd.grad(loss, inputs["fc"])[0]
    hook.remove()
    assert sens.act_fisher[1] == pytest.approx(float(grad.pow(2).sum()) / 64 / 32, rel=1e-5)
    omega_w, omega_a = np.array(sens.weight), np.array(sens.act)
    assert (omega_w >= 0).all() and (omega_a >= 0).all()
    assert (np.diff(omega_w, axis=1) <= 0).all() and (np.diff(omega_a, axis=1) <= 0).all()
    # the model is left as it was: weights, gradient flags, no hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert not model.conv._forward_pre_hooks and not model.fc._forward_pre_hooks
    again = measure_sensitivity(model, layers, calibration, images, labels, mean, std, probes=400,
                                seed=0, batch_size=64, keep_first_last=True)  # fmt: skip
    assert again.weight == sens.weight and again.act[0] == (0.0, 0.0, 0.0)  # the image
    assert Sensitivity.from_dict(sens.to_dict()) == sens
    assert Sensitivity.from_dict(sens.to_dict()).digest == sens.digest != again.digest
    # an unresolved trace counts at its standard error; clipped at zero, its layer would be free
    traces, errors = np.array(sens.weight_trace), np.array(sens.weight_trace_se)
    assert np.allclose(omega_w, np.maximum(traces, errors)[:, None] * sens.weight_error)
    assert np.allclose(
        clipped_at_zero(sens).weight, np.clip(traces, 0, None)[:, None] * sens.weight_error
    )
