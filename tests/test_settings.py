from __future__ import annotations

import pytest

from aqgan_ray.errors import UserError
from aqgan_ray.settings import load_experiment, preset_names


def test_shipped_presets_load():
    assert {"default", "smoke"} <= set(preset_names())
    for name in preset_names():
        exp = load_experiment(name)
        assert exp.name == name and exp.data.seed == exp.seed
    default = load_experiment("default")
    assert (default.model.name, default.data.name) == ("mobilenet_v2", "fashion-mnist")


def test_overrides():
    exp = load_experiment("smoke", model="resnet-18", dataset="cifar10", seed=3, data_dir="/x")
    assert exp.model.name == "resnet18" and exp.data.name == "cifar10"
    assert exp.seed == 3 and exp.data.seed == 3 and exp.data.data_dir == "/x"
    assert exp.model.width == 1.0  # smoke's thin width belongs to its MobileNetV2
    assert load_experiment("smoke", model="mobilenet_v2").model.width == 0.35


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "x"\n[train]\nepochz = 3\n', "unknown key train.epochz"),
        ('name = "x"\n[train]\nepochs = "3"\n', "wrong type"),
        ('name = "x"\nflavour = 1\n', "unknown key 'flavour'"),
        ('name = "x"\n[model]\nname = "vgg"\n', "unknown model"),
        ('name = "x"\n[data]\nname = "mnist"\n', "unknown dataset"),
        ('name = "x"\n[quant]\nbit_choices = [1, 2]\n', "bit choices"),
        ('name = "x"\n[train]\nlr = -1.0\n', "must not be negative"),
        ("name = \n", "not valid TOML"),
        ("seed = 1\n", "'name' must be"),
    ],
)
def test_bad_preset_files(tmp_path, text, message):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_experiment(path=str(path))


def test_unknown_preset_and_missing_file():
    with pytest.raises(UserError, match="unknown experiment 'nope'; presets: "):
        load_experiment("nope")
    with pytest.raises(UserError, match="does not exist"):
        load_experiment(path="/no/such.toml")
    with pytest.raises(UserError, match="unknown model"):
        load_experiment("smoke", model="alexnet")


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_loads_and_its_design_points_are_feasible(name):
    """No data needed: the layer table comes from the architecture, and every budget must be
    above the cheapest config on every hardware model of the preset."""
    from aqgan_ray.data import DATASET_SHAPES
    from aqgan_ray.experiment.design import design_points
    from aqgan_ray.layers import layer_table
    from aqgan_ray.models import build_model

    exp = load_experiment(name)
    shape, classes = DATASET_SHAPES[exp.data.name]
    layers = layer_table(build_model(exp.model.name, classes, shape, exp.model.width), shape)
    planned = design_points(exp, layers)
    assert len(planned) >= 6 and len({p.hw_name for p in planned}) >= 3
