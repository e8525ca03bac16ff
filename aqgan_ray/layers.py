"""The layer table: every quantizable layer of a model, with the shapes cost models need.

Quantizable layers are convolutions (dense or grouped/depthwise) and linear layers, listed in
forward execution order; that order is the order of ``w_bits``/``a_bits`` in every config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Layer:
    """One quantizable layer. Linear layers use kernel 1, stride 0 and 1x1 feature maps (as HAQ)."""

    name: str  # fully qualified module name, e.g. "features.3.conv.1.0"
    kind: str  # "conv", "dwconv" or "linear"
    in_channels: int
    out_channels: int
    kernel: int  # kernel height (square kernels; width kept for non-square ones)
    kernel_w: int
    stride: int
    groups: int
    in_h: int
    in_w: int
    out_h: int
    out_w: int
    params: int  # weight elements (bias excluded: biases stay in 32-bit, see cost.py)
    macs: int  # multiply-accumulates for one input image

    @property
    def reduction(self) -> int:
        """Length of each output's dot product (GEMM K dimension)."""
        return self.kernel * self.kernel_w * (self.in_channels // self.groups)

    @property
    def in_elems(self) -> int:
        return self.in_channels * self.in_h * self.in_w

    @property
    def out_elems(self) -> int:
        return self.out_channels * self.out_h * self.out_w

    def to_dict(self) -> dict:
        return asdict(self)


def quantizable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Quantizable modules by qualified name, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def layer_table(model: nn.Module, input_shape: tuple[int, int, int]) -> list[Layer]:
    """Trace one forward pass of a dummy image and record every quantizable layer it runs.

    Execution order (not registration order) is used, because it is what a layer index means to
    an accelerator and to HAQ's state features.
    """
    modules = quantizable_modules(model)
    names = {id(m): n for n, m in modules.items()}
    rows: list[Layer] = []

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        name = names[id(module)]
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            groups = module.groups
            is_dw = groups > 1 and groups == module.in_channels
            out_h, out_w = output.shape[-2], output.shape[-1]
            params = module.weight.numel()
            macs = params * out_h * out_w
            rows.append(
                Layer(
                    name=name,
                    kind="dwconv" if is_dw else "conv",
                    in_channels=module.in_channels,
                    out_channels=module.out_channels,
                    kernel=kh,
                    kernel_w=kw,
                    stride=module.stride[0],
                    groups=groups,
                    in_h=x.shape[-2],
                    in_w=x.shape[-1],
                    out_h=out_h,
                    out_w=out_w,
                    params=params,
                    macs=macs,
                )
            )
        else:
            params = module.weight.numel()
            rows.append(
                Layer(
                    name=name,
                    kind="linear",
                    in_channels=module.in_features,
                    out_channels=module.out_features,
                    kernel=1,
                    kernel_w=1,
                    stride=0,
                    groups=1,
                    in_h=1,
                    in_w=1,
                    out_h=1,
                    out_w=1,
                    params=params,
                    macs=params,
                )
            )

    handles = [m.register_forward_hook(record) for m in modules.values()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    seen = {r.name for r in rows}
    if len(seen) != len(rows):
        raise ValueError("a quantizable module runs more than once per forward; not supported")
    return rows
