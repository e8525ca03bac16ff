from __future__ import annotations

import numpy as np
import pytest
import torch

from aqgan_ray.config import QuantConfig
from aqgan_ray.quant import (
    QuantizedModel,
    act_range,
    choose_act_scale,
    choose_weight_scales,
    fake_quant_act,
    fake_quant_weight,
)


def test_weight_quantization_is_symmetric_per_channel():
    w = torch.tensor([[0.5, -1.0, 0.26], [4.0, -2.0, 1.0]])
    scale = torch.tensor([1.0 / 3, 4.0 / 3])  # 3 bits: levels -3..3 per channel
    q = fake_quant_weight(w, scale, 3)
    assert torch.allclose(q[0], torch.tensor([2, -3, 1]) / 3)
    assert torch.allclose(q[1], torch.tensor([3.0, -2.0, 1.0]) * 4 / 3)
    # Narrow range: -4 never appears at 3 bits, so +x and -x quantize symmetrically.
    assert torch.equal(fake_quant_weight(-w, scale, 3), -q)


def test_activation_ranges():
    assert act_range(4, signed=False) == (0, 15)
    assert act_range(4, signed=True) == (-8, 7)
    x = torch.linspace(-1, 3, 101)
    y = fake_quant_act(x, 0.25, *act_range(4, signed=False))
    assert y.min() == 0 and y.max() == 3.0  # clipped at 15 * 0.25 = 3.75, negatives to 0
    assert torch.allclose(y / 0.25, (y / 0.25).round())


def test_eval_and_autograd_paths_agree():
    x = torch.randn(1000) * 3
    fused = torch.fake_quantize_per_tensor_affine(x, 0.1, 0, -8, 7)
    assert torch.equal(fake_quant_act(x, 0.1, -8, 7), fused)
    xg = x.clone().requires_grad_(True)
    fake_quant_act(xg, 0.1, -8, 7).sum().backward()
    inside = (x / 0.1).round().clamp(-8, 7) == (x / 0.1).round()
    assert torch.equal(xg.grad, inside.float())  # straight-through inside the range


def _mse(x, q):
    return float(((x - q) ** 2).sum())


def test_clip_search_beats_max_abs_at_low_bits():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 64, generator=gen)
    w[:, 0] = 8.0  # one outlier per channel
    for bits in (2, 4):
        best = choose_weight_scales(w, bits)
        max_abs = w.abs().amax(1) / (2 ** (bits - 1) - 1)
        assert _mse(w, fake_quant_weight(w, best, bits)) < _mse(
            w, fake_quant_weight(w, max_abs, bits)
        )
    x = torch.randn(10000, generator=gen).relu()
    x[0] = 20.0
    s = choose_act_scale(x, 3, signed=False)
    assert s < 20.0 / 7
    assert _mse(x, fake_quant_act(x, s, 0, 7)) < _mse(x, fake_quant_act(x, 20.0 / 7, 0, 7))


def test_quantized_model_applies_in_place_and_resets(smoke):
    exp, prepared, splits = smoke
    qm = QuantizedModel(prepared.folded_model(), prepared.layers, prepared.calibration)
    x = torch.randn(8, *prepared.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = qm(x).clone()
    ptrs = {k: p.data_ptr() for k, p in qm.model.named_parameters()}
    names = prepared.layer_names
    qm.apply(QuantConfig.uniform(names, 2))
    with torch.no_grad():
        low = qm(x)
    assert not torch.allclose(low, ref, atol=1e-3)
    # No copy of the model per config: the same parameter storage is overwritten.
    assert ptrs == {k: p.data_ptr() for k, p in qm.model.named_parameters()}
    first = qm.model.get_submodule(names[0]).weight
    steps = first / prepared.calibration.weight_scale[0][2].reshape(-1, 1, 1, 1)
    assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 1
    qm.reset()
    with torch.no_grad():
        assert torch.equal(qm(x), ref)
    with pytest.raises(Exception, match="allowed bitwidths"):
        qm.apply(QuantConfig.uniform(names, 9))


def test_activation_signedness_follows_relu(smoke):
    _, prepared, _ = smoke
    cal = prepared.calibration
    signed = dict(zip(cal.layers, cal.act_signed, strict=True))
    assert signed["features.0.0"]  # the normalized image has negative values
    assert not signed["classifier.1"]  # pooled ReLU6 output
    # MobileNetV2 projection convs read ReLU6 outputs: unsigned.
    assert not signed["features.1.conv.1"]
    rng = np.random.default_rng(0)
    for i in rng.choice(len(cal.layers), 5, replace=False):
        scales = [cal.act_scale[i][b] for b in sorted(cal.bit_choices)]
        levels = [act_range(b, cal.act_signed[i])[1] for b in sorted(cal.bit_choices)]
        clip = [s * q for s, q in zip(scales, levels, strict=True)]
        assert all(c > 0 for c in clip)


def test_keep_first_last_leaves_the_image_unquantized(smoke):
    """HAQ's search space: the first layer sees the normalized image as it is."""
    _, prepared, _ = smoke
    names = prepared.layer_names
    x = torch.randn(4, *prepared.input_shape, generator=torch.Generator().manual_seed(2))
    config = QuantConfig.uniform(names, 2).pinned()
    seen = {}
    for keep in (True, False):
        qm = QuantizedModel(prepared.folded_model(), prepared.layers, prepared.calibration,
                            keep_first_last=keep)  # fmt: skip
        first = qm.model.get_submodule(names[0])
        # registered after the model's own hooks, so it sees what the layer computes on
        handle = first.register_forward_pre_hook(
            lambda m, args, keep=keep: seen.__setitem__(keep, args[0])
        )
        qm.apply(config)
        with torch.no_grad():
            qm(x)
        handle.remove()
        if keep:
            with pytest.raises(Exception, match="keep_first_last"):
                qm.apply(QuantConfig.uniform(names, 2))
    assert torch.equal(seen[True], x)
    assert not torch.equal(seen[False], x)  # quantized to 8 bits otherwise


def test_pinning_sets_the_first_and_last_layers_to_8_bits():
    config = QuantConfig(("a", "b", "c"), (2, 3, 4), (5, 6, 7)).pinned()
    assert config.w_bits == (8, 3, 8) and config.a_bits == (8, 6, 8)
    assert config.check_pinned() is config
