from __future__ import annotations

import pytest
import torch
from torch import nn

from aqgan_ray.errors import UserError
from aqgan_ray.layers import layer_table
from aqgan_ray.models import MODELS, build_model, check_folding, fold_batchnorm


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics, so folding has something to get wrong."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_zoo_builds_folds_and_tabulates(name, shape):
    model = build_model(name, 10, shape)
    _randomize_bn(model)
    folded = fold_batchnorm(model)
    check_folding(model, folded, shape)  # raises if outputs differ
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) or name == "squeezenet1_1"
    rows = layer_table(folded, shape)
    assert rows[0].in_channels == shape[0] and rows[-1].out_channels == 10
    # Small-input stems keep the feature maps from collapsing before the classifier.
    assert max(r.out_h for r in rows if r.kind != "linear") >= shape[1] // 2
    assert folded(torch.zeros(2, *shape)).shape == (2, 10)


def test_folding_does_not_touch_the_original():
    model = build_model("mobilenet_v2", 10, (1, 28, 28), width=0.35)
    _randomize_bn(model)
    before = model.features[0][0].weight.clone()
    fold_batchnorm(model)
    assert torch.equal(model.features[0][0].weight, before)


def test_model_errors():
    with pytest.raises(UserError, match="unknown model 'vgg16'"):
        build_model("vgg16", 10, (1, 28, 28))
    with pytest.raises(UserError, match="no width multiplier"):
        build_model("resnet18", 10, (1, 28, 28), width=0.5)
    assert build_model("MobileNetV2", 10, (1, 28, 28)) is not None  # aliases
