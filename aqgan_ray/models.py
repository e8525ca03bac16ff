"""The model zoo: five efficient torchvision architectures, adapted to small inputs.

The paper evaluated "five widely used efficient models" (MobileNetV2 and ResNet50 named). We ship
MobileNetV2, ResNet-18, ShuffleNetV2 x1.0, SqueezeNet 1.1 and MnasNet 1.0, as the issue asks.
For small inputs (Fashion-MNIST 28x28, CIFAR-10 32x32) each stem is changed the usual way so that
the feature maps do not collapse to 1x1 before the classifier; at ImageNet size (224) the
torchvision architecture is used unchanged so its pretrained weights load.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.fx
import torchvision
from torch import nn

from aqgan_ray.errors import UserError

# torchvision weight enums per model, used only at ImageNet size when the user has the file cached.
_PRETRAINED = {
    "mobilenet_v2": "MobileNet_V2_Weights",
    "resnet18": "ResNet18_Weights",
    "shufflenet_v2": "ShuffleNet_V2_X1_0_Weights",
    "squeezenet1_1": "SqueezeNet1_1_Weights",
    "mnasnet": "MNASNet1_0_Weights",
}
MODELS = tuple(_PRETRAINED)
SMALL_INPUT = 64  # inputs up to this side length get the small-input stems


def _stem_conv(conv: nn.Conv2d, in_channels: int, stride: int) -> nn.Conv2d:
    """A copy of a stem convolution with a new input-channel count and stride."""
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )


def _mobilenet_v2(num_classes: int, in_ch: int, small: bool, width: float) -> nn.Module:
    # Small inputs: the stem keeps stride 1 and the rest of the network its standard strides, so a
    # 28x28 image ends at 2x2 (total stride 16 instead of 32): what a 5-minute training budget on
    # 2 cores allows; the CIFAR-style variant that also keeps the 24-channel stage at stride 1 is
    # 4x slower (docs/measurements.md).
    model = torchvision.models.mobilenet_v2(num_classes=num_classes, width_mult=width)
    stem = model.features[0][0]
    model.features[0][0] = _stem_conv(stem, in_ch, 1 if small else 2)
    return model


def _resnet18(num_classes: int, in_ch: int, small: bool, width: float) -> nn.Module:
    model = torchvision.models.resnet18(num_classes=num_classes)
    if small:  # CIFAR-style stem: 3x3 stride 1, no max-pool
        model.conv1 = nn.Conv2d(in_ch, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = _stem_conv(model.conv1, in_ch, 2)
    return model


def _shufflenet_v2(num_classes: int, in_ch: int, small: bool, width: float) -> nn.Module:
    model = torchvision.models.shufflenet_v2_x1_0(num_classes=num_classes)
    model.conv1[0] = _stem_conv(model.conv1[0], in_ch, 1 if small else 2)
    if small:
        model.maxpool = nn.Identity()
    return model


def _squeezenet1_1(num_classes: int, in_ch: int, small: bool, width: float) -> nn.Module:
    model = torchvision.models.squeezenet1_1(num_classes=num_classes)
    stem = model.features[0]
    model.features[0] = (
        nn.Conv2d(in_ch, stem.out_channels, 3, stride=1, padding=1)
        if small
        else _stem_conv(stem, in_ch, 2)
    )
    return model


def _mnasnet(num_classes: int, in_ch: int, small: bool, width: float) -> nn.Module:
    model = torchvision.models.MNASNet(alpha=width, num_classes=num_classes)
    model.layers[0] = _stem_conv(model.layers[0], in_ch, 1 if small else 2)
    return model


_BUILDERS: dict[str, Callable[[int, int, bool, float], nn.Module]] = {
    "mobilenet_v2": _mobilenet_v2,
    "resnet18": _resnet18,
    "shufflenet_v2": _shufflenet_v2,
    "squeezenet1_1": _squeezenet1_1,
    "mnasnet": _mnasnet,
}
_WIDTH_MODELS = {"mobilenet_v2", "mnasnet"}


def canonical_name(name: str) -> str:
    key = name.lower().replace("-", "_")
    aliases = {
        "mobilenetv2": "mobilenet_v2",
        "shufflenetv2": "shufflenet_v2",
        "squeezenet": "squeezenet1_1",
        "mnasnet1_0": "mnasnet",
        "resnet_18": "resnet18",
    }
    key = aliases.get(key, key)
    if key not in _BUILDERS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return key


def build_model(
    name: str, num_classes: int, input_shape: tuple[int, int, int], width: float = 1.0
) -> nn.Module:
    """A freshly initialised model of the zoo for ``input_shape`` (C, H, W)."""
    key = canonical_name(name)
    if width != 1.0 and key not in _WIDTH_MODELS:
        raise UserError(f"model {key} has no width multiplier; set width = 1.0 in the preset")
    if width <= 0:
        raise UserError(f"width multiplier must be positive, got {width}")
    in_ch, height, _ = input_shape
    model = _BUILDERS[key](num_classes, in_ch, height <= SMALL_INPUT, width)
    for m in model.modules():
        # torchvision's MnasNet uses BN momentum 3e-4 (from TF); trained from scratch for a few
        # epochs its running statistics would barely move, so every model uses PyTorch's 0.1.
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return model


def pretrained_weights_file(name: str) -> tuple[str, torchvision.models.WeightsEnum]:
    """Where torchvision caches this model's ImageNet weights, and the weights enum."""
    enum = getattr(torchvision.models, _PRETRAINED[canonical_name(name)]).IMAGENET1K_V1
    filename = enum.url.rsplit("/", 1)[-1]
    return f"{torch.hub.get_dir()}/checkpoints/{filename}", enum


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution into that convolution.

    An integer accelerator runs BN-folded weights, so those are the weights we quantize. The
    result is a new module (the input is left as it was) whose BN layers are gone; the numerical
    equivalence is checked on a random batch so a pattern we mis-fold fails loudly.
    """
    model = copy.deepcopy(model).eval()
    graph_module = torch.fx.symbolic_trace(model)
    modules = dict(graph_module.named_modules())
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        prev = node.args[0]
        if not (
            isinstance(prev, torch.fx.Node)
            and prev.op == "call_module"
            and isinstance(modules[prev.target], nn.Conv2d)
            and len(prev.users) == 1
        ):
            continue
        conv, bn = modules[prev.target], modules[node.target]
        _fold_into(conv, bn)
        node.replace_all_uses_with(prev)
        graph_module.graph.erase_node(node)
    graph_module.graph.lint()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(inv_std)
    beta = bn.bias if bn.affine else torch.zeros_like(inv_std)
    scale = gamma * inv_std
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter(beta + (bias - bn.running_mean) * scale)


def check_folding(
    original: nn.Module, folded: nn.Module, input_shape: tuple[int, int, int]
) -> None:
    """Raise if folding changed what the network computes (beyond float rounding)."""
    x = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out = original.eval()(x), folded.eval()(x)
    if not torch.allclose(ref, out, rtol=1e-3, atol=1e-3 * ref.abs().max().item()):
        raise RuntimeError("batch-norm folding changed the model's outputs; this is a bug")
