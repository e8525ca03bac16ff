from __future__ import annotations

import torch
from torch import nn

from aqgan_ray.layers import layer_table


class TwoBranch(nn.Module):
    """Registration order (fc before conv) differs from execution order on purpose."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4 * 4 * 4, 10)
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)

    def forward(self, x):
        return self.fc(self.dw(self.conv(x)).flatten(1))


def test_layer_table_by_hand():
    rows = layer_table(TwoBranch(), (3, 8, 8))
    assert [r.name for r in rows] == ["conv", "dw", "fc"]  # execution order
    conv, dw, fc = rows
    assert (conv.kind, conv.in_channels, conv.out_channels, conv.kernel, conv.stride) == (
        "conv",
        3,
        4,
        3,
        2,
    )
    assert (conv.in_h, conv.in_w, conv.out_h, conv.out_w) == (8, 8, 4, 4)
    assert conv.params == 4 * 3 * 3 * 3  # 108 weights
    assert conv.macs == 108 * 4 * 4  # every weight used once per output pixel
    assert conv.reduction == 27
    assert (dw.kind, dw.groups, dw.params, dw.macs, dw.reduction) == ("dwconv", 4, 36, 36 * 16, 9)
    assert (fc.kind, fc.kernel, fc.stride, fc.in_channels, fc.out_channels) == (
        "linear",
        1,
        0,
        64,
        10,
    )
    assert fc.params == fc.macs == 640
    assert fc.in_elems == 64 and conv.out_elems == 64


def test_layer_table_leaves_model_untouched():
    model = TwoBranch().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer_table(model, (3, 8, 8))
    assert model.training
    assert not model._forward_hooks and not model.conv._forward_hooks
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
