"""Simulated (fake) linear quantization: primitives, calibration, and applying a QuantConfig.

Scheme (issue 2; facts of HAQ in shared/PAPER.md, choices ours where it is silent):
- Weights: symmetric, per output channel, narrow range [-(2^(b-1)-1), 2^(b-1)-1], applied to the
  BN-folded weights an integer accelerator would run. The clipping threshold per channel is the
  one of a grid of fractions of max|w| that minimises the quantization MSE: at 2-4 bits plain
  max-abs wastes most levels on rare outliers (HAQ picks low-bit thresholds by minimising a
  divergence for the same reason).
- Activations: per tensor, quantizing the *input* of each quantizable layer (HAQ's a_bits).
  Unsigned [0, 2^b-1] when the calibration data never goes below zero (inputs after ReLU/ReLU6),
  signed [-2^(b-1), 2^(b-1)-1] elsewhere (the image, linear bottleneck outputs). The clip value is
  MSE-optimal on a sample of calibration activations, chosen per layer and per bitwidth.
- Everything a bitwidth needs (scales) is computed once at prepare time for every allowed
  bitwidth, so applying a config is a table lookup plus one fused fake-quant op per layer.

Both fake-quant ops are PyTorch's fused kernels, whose gradient is the straight-through estimator,
so the same code serves the optional fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from aqgan_ray.config import QuantConfig
from aqgan_ray.data import normalize
from aqgan_ray.layers import Layer

# Candidate clip thresholds, as fractions of the observed maximum magnitude.
CLIP_GRID: tuple[float, ...] = tuple(1.0 - 0.025 * i for i in range(33))  # 1.0 down to 0.2
ACT_SAMPLE_PER_BATCH = 8192  # activation values kept per layer per calibration batch


def weight_qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def act_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def fake_quant_act(x: Tensor, scale: float, qmin: int, qmax: int) -> Tensor:
    """Quantize-dequantize an activation tensor per tensor (zero point 0).

    Under autograd this is PyTorch's fused op (straight-through gradient, for fine-tuning). For
    eager evaluation, four in-place passes over one new tensor are twice as fast on CPU as the
    fused kernel, which also computes a gradient mask. All paths compute round(x * (1/scale))
    with ties to even, like the fused kernel, so they agree bit for bit.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return torch.fake_quantize_per_tensor_affine(x, scale, 0, qmin, qmax)
    return torch.mul(x, 1.0 / scale).round_().clamp_(qmin, qmax).mul_(scale)


def fake_quant_weight(w: Tensor, scale: Tensor, bits: int) -> Tensor:
    """Quantize-dequantize weights per output channel (axis 0) with symmetric narrow range."""
    q = weight_qmax(bits)
    scale = scale.to(w.device)
    zero = torch.zeros(scale.shape, dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -q, q)


def choose_weight_scales(w: Tensor, bits: int, grid: Sequence[float] = CLIP_GRID) -> Tensor:
    """Per-output-channel scale minimising the squared quantization error over ``grid``."""
    flat = w.detach().reshape(w.shape[0], -1).float()
    max_abs = flat.abs().amax(1).clamp_min(1e-12)
    q = weight_qmax(bits)
    best_scale = max_abs / q
    best_err = torch.full_like(max_abs, float("inf"))
    for ratio in grid:
        scale = ratio * max_abs / q
        err = (fake_quant_weight(flat, scale, bits) - flat).pow_(2).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
    return best_scale


def choose_act_scale(
    sample: Tensor, bits: int, signed: bool, grid: Sequence[float] = CLIP_GRID
) -> float:
    """Per-tensor activation scale minimising the squared quantization error on ``sample``."""
    peak = (sample.abs().max() if signed else sample.max()).clamp_min(1e-12).item()
    qmin, qmax = act_range(bits, signed)
    best_scale, best_err = peak / qmax, float("inf")
    for ratio in grid:
        scale = ratio * peak / qmax
        err = fake_quant_act(sample, scale, qmin, qmax) - sample
        err = err.pow_(2).sum().item()
        if err < best_err:
            best_scale, best_err = scale, err
    return best_scale


@dataclass(frozen=True)
class Calibration:
    """Quantizer parameters of every layer at every allowed bitwidth (index i = layer-table row)."""

    layers: tuple[str, ...]
    bit_choices: tuple[int, ...]
    act_signed: tuple[bool, ...]
    act_scale: tuple[dict[int, float], ...]
    weight_scale: tuple[dict[int, Tensor], ...]

    def to_state(self) -> dict:
        """Plain tensors and numbers, loadable with ``torch.load(weights_only=True)``."""
        return {
            "layers": list(self.layers),
            "bit_choices": list(self.bit_choices),
            "act_signed": list(self.act_signed),
            "act_scale": [{int(b): float(s) for b, s in d.items()} for d in self.act_scale],
            "weight_scale": [{int(b): t for b, t in d.items()} for d in self.weight_scale],
        }

    @classmethod
    def from_state(cls, state: dict) -> Calibration:
        return cls(
            layers=tuple(state["layers"]),
            bit_choices=tuple(state["bit_choices"]),
            act_signed=tuple(bool(s) for s in state["act_signed"]),
            act_scale=tuple({int(b): float(s) for b, s in d.items()} for d in state["act_scale"]),
            weight_scale=tuple({int(b): t for b, t in d.items()} for d in state["weight_scale"]),
        )


@torch.no_grad()
def calibrate(
    model: nn.Module,
    layers: Sequence[Layer],
    calib_x: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    bit_choices: Sequence[int],
    seed: int = 0,
    batch_size: int = 128,
) -> Calibration:
    """Observe each quantizable layer's input on the calibration images; pick all scales."""
    modules = dict(model.named_modules())
    gen = torch.Generator().manual_seed(seed)
    samples: list[list[Tensor]] = [[] for _ in layers]
    minima = [float("inf")] * len(layers)

    def observer(i: int):
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            flat = args[0].detach().reshape(-1)
            minima[i] = min(minima[i], flat.min().item())
            keep = torch.randint(0, flat.numel(), (ACT_SAMPLE_PER_BATCH,), generator=gen)
            # The extremes matter for the clip search, so they are always kept.
            samples[i].append(torch.cat([flat[keep], flat.max().reshape(1), flat.min().reshape(1)]))

        return hook

    handles = [
        modules[layer.name].register_forward_pre_hook(observer(i)) for i, layer in enumerate(layers)
    ]
    try:
        model.eval()
        for start in range(0, len(calib_x), batch_size):
            model(normalize(calib_x[start : start + batch_size], mean, std))
    finally:
        for h in handles:
            h.remove()
    act_signed = tuple(m < 0 for m in minima)
    act_scale = tuple(
        {b: choose_act_scale(torch.cat(samples[i]), b, act_signed[i]) for b in bit_choices}
        for i in range(len(layers))
    )
    weight_scale = tuple(
        {b: choose_weight_scales(modules[layer.name].weight, b) for b in bit_choices}
        for layer in layers
    )
    return Calibration(
        layers=tuple(layer.name for layer in layers),
        bit_choices=tuple(bit_choices),
        act_signed=act_signed,
        act_scale=act_scale,
        weight_scale=weight_scale,
    )


class QuantizedModel:
    """A BN-folded model whose quantizable layers follow the config last given to ``apply``.

    The model is never copied per config: one float copy of the parameters is kept, and
    ``apply`` writes each layer's quantized weights in place (only for layers whose weight
    bitwidth changed since the last config). Activation quantization is a forward pre-hook per
    layer that reads its scale and integer range from small tensors, also updated in place.

    Keeping every per-config value in tensors is what makes ``compile=True`` work: TorchInductor
    fuses each fake-quant into the neighbouring element-wise kernel, so quantized inference costs
    about what float inference does, and a new config never triggers a recompilation.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[Layer],
        calibration: Calibration,
        compile: bool = False,
        keep_first_last: bool = False,
    ):
        """``keep_first_last``: HAQ's search space (``config.pin_first_last``); the first layer's
        input, the image, is then never quantized, and a config must pin those layers."""
        if tuple(layer.name for layer in layers) != calibration.layers:
            raise ValueError("calibration was computed for a different layer table")
        self.model = model.eval()
        self.calibration = calibration
        self.layer_names = calibration.layers
        named = dict(model.named_modules())
        self._modules = [named[n] for n in self.layer_names]
        self._fp_params = {k: v.detach().clone() for k, v in model.named_parameters()}
        self._weight_keys = [f"{n}.weight" for n in self.layer_names]
        self._w_bits: list[int | None] = [None] * len(self._modules)  # None: float weights
        n = len(self._modules)
        device = next(model.parameters()).device  # the compiled hook reads these on-device
        self._inv_scale, self._scale = torch.ones(n, device=device), torch.ones(n, device=device)
        self._qmin, self._qmax = torch.zeros(n, device=device), torch.zeros(n, device=device)
        self._quantize_acts = False
        self._eager_params: list[tuple[float, int, int]] = []
        self.keep_first_last = keep_first_last
        self._hooks = [
            m.register_forward_pre_hook(self._act_hook(i))
            for i, m in enumerate(self._modules)
            if not (keep_first_last and i == 0)
        ]
        self._forward = torch.compile(self.model) if compile else self.model
        self.config: QuantConfig | None = None
        self._finetuned = False  # biases and weights differ from the float ones

    def _act_hook(self, i: int):
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
            if not self._quantize_acts:
                return None
            x = args[0]
            if torch.compiler.is_compiling():
                q = torch.clamp(torch.round(x * self._inv_scale[i]), self._qmin[i], self._qmax[i])
                return (q * self._scale[i],)
            return (fake_quant_act(x, *self._eager_params[i]),)

        return hook

    def _set_acts(self, a_bits: Sequence[int]) -> None:
        """Activation quantizers of ``a_bits``, as floats (eager) and as tensors (compiled)."""
        self._eager_params = []
        for i, bits in enumerate(a_bits):
            qmin, qmax = act_range(bits, self.calibration.act_signed[i])
            scale = self.calibration.act_scale[i][bits]
            self._eager_params.append((scale, qmin, qmax))
            self._scale[i], self._inv_scale[i] = scale, 1.0 / scale
            self._qmin[i], self._qmax[i] = qmin, qmax
        self._quantize_acts = True

    def _check(self, config: QuantConfig) -> None:
        if config.layers != self.layer_names:
            raise ValueError("config is for a different layer table than this model")
        config.validate(self.calibration.bit_choices)
        if self.keep_first_last:
            config.check_pinned()

    @torch.no_grad()
    def apply(self, config: QuantConfig) -> None:
        self._check(config)
        if self._finetuned:
            self.reset()
        for i, (module, key) in enumerate(zip(self._modules, self._weight_keys, strict=True)):
            bits = config.w_bits[i]
            if self._w_bits[i] != bits:
                scale = self.calibration.weight_scale[i][bits]
                module.weight.copy_(fake_quant_weight(self._fp_params[key], scale, bits))
                self._w_bits[i] = bits
        self._set_acts(config.a_bits)
        self.config = config

    @torch.no_grad()
    def reset(self) -> None:
        """Back to the float model (all parameters restored, no activation quantization)."""
        params = dict(self.model.named_parameters())
        for key, value in self._fp_params.items():
            params[key].copy_(value)
        self._w_bits = [None] * len(self._modules)
        self._quantize_acts = False
        self.config = None
        self._finetuned = False

    def finetune(
        self,
        config: QuantConfig,
        train_x: Tensor,
        train_y: Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        steps: int,
        batch_size: int,
        lr: float,
        seed: int,
    ) -> None:
        """HAQ-style short quantization-aware fine-tuning, then ``apply`` the tuned weights.

        Float master weights are trained through the fused fake-quant ops (straight-through
        gradients) with ``functional_call``, so the module itself is not copied. Biases change
        too, so the next ``apply`` first restores every float parameter.
        """
        self._check(config)
        gen = torch.Generator().manual_seed(seed)
        master = {k: v.clone().requires_grad_(True) for k, v in self._fp_params.items()}
        weight_bits = dict(zip(self._weight_keys, config.w_bits, strict=True))
        scales = {
            k: self.calibration.weight_scale[i][b] for i, (k, b) in enumerate(weight_bits.items())
        }
        self._set_acts(config.a_bits)
        optimizer = torch.optim.SGD(master.values(), lr=lr, momentum=0.9)

        def quantized(params: dict[str, Tensor]) -> dict[str, Tensor]:
            return {
                k: fake_quant_weight(v, scales[k], weight_bits[k]) if k in weight_bits else v
                for k, v in params.items()
            }

        self.model.train()
        for _ in range(steps):
            idx = torch.randint(0, len(train_x), (batch_size,), generator=gen)
            x = normalize(train_x[idx].to(self._scale.device), mean, std)
            logits = functional_call(self.model, quantized(master), (x,))
            loss = nn.functional.cross_entropy(logits, train_y[idx].to(x.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        self.model.eval()
        with torch.no_grad():
            params = dict(self.model.named_parameters())
            for key, value in quantized(master).items():
                params[key].copy_(value)
        self._w_bits = [None] * len(self._modules)
        self._finetuned = True
        self.config = config

    def __call__(self, x: Tensor) -> Tensor:
        return self._forward(x)
