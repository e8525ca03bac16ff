from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_data import _fake_imagenet

from aqgan_ray.errors import UserError
from aqgan_ray.models import build_model, pretrained_weights_file
from aqgan_ray.prepare import prepare
from aqgan_ray.settings import load_experiment


@pytest.fixture()
def hub_dir(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def test_imagenet_uses_cached_torchvision_weights(tmp_path, hub_dir):
    root = tmp_path / "imagenet"
    _fake_imagenet(root, ("n01", "n02"), per_class=3)
    exp = load_experiment("smoke", model="squeezenet1_1", dataset="imagenet", data_dir=str(root))
    exp = replace(
        exp, data=replace(exp.data, val_size=2, train_subset=2, test_subset=2, calib_size=2)
    )
    with pytest.raises(UserError, match="no ImageNet weights for squeezenet1_1 at"):
        prepare(exp, tmp_path / "cache", progress=False)
    # The user has the weights file where torchvision caches it (here: a 2-class stand-in
    # matching the 2-class folder, so loading is checked without a download).
    path, _ = pretrained_weights_file("squeezenet1_1")
    assert path.startswith(str(hub_dir))
    weights = build_model("squeezenet1_1", 2, (3, 224, 224)).state_dict()
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(weights, path)
    prepared, splits = prepare(exp, tmp_path / "cache", progress=False)
    assert prepared.checkpoint == path
    assert splits.input_shape == (3, 224, 224) and prepared.layers[0].in_h == 224
    for key, value in weights.items():
        assert torch.equal(prepared.state_dict[key], value)
