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
        ('name = "x"\n[quant]\nbit_choices = [1, 2]\n', "bit_choices item 1 is out of range"),
        ('name = "x"\n[train]\nlr = -1.0\n', r"train.lr = -1.0 is out of range; give a number > 0"),
        ("name = \n", "not valid TOML"),
        ("seed = 1\n", "'name' is missing"),
        # types: bool is not a number, a float is not an integer, lists hold what they should
        ('name = "x"\n[quant]\nbit_choices = ["a"]\n', "bit_choices item 'a' has the wrong type"),
        ('name = "x"\n[quant]\nbit_choices = [2.7, 4, 8]\n', "item 2.7 has the wrong type"),
        ('name = "x"\n[quant]\nbit_choices = 8\n', "must be a list"),
        ('name = "x"\n[train]\nepochs = true\n', "epochs = True has the wrong type"),
        ('name = "x"\n[train]\nepochs = 2.0\n', "expected an integer"),
        ('name = "x"\n[train]\naugment = 1\n', "expected true or false"),
        ('name = "x"\n[design]\nhw = [1]\n', "design.hw item 1 has the wrong type"),
        ('name = "x"\n[design]\nseeds = [true]\n', "design.seeds item True"),
        # finite numbers
        ('name = "x"\n[model]\nwidth = nan\n', "model.width = nan is not a finite number"),
        ('name = "x"\n[train]\nlr = inf\n', "train.lr = inf is not a finite number"),
        ('name = "x"\n[eval]\nfinetune_lr = -inf\n', "is not a finite number"),
        # ranges
        (
            'name = "x"\n[model]\nwidth = 0.0\n',
            r"model.width = 0.0 is out of range; give a number > 0",
        ),
        ('name = "x"\n[train]\nmomentum = 1.5\n', "within 0..1"),
        ('name = "x"\nseed = -1\n', "seed = -1 is out of range"),
        ('name = "x"\nseed = 4294967296\n', "within 0..4294967295"),
        ('name = "x"\n[design]\nseeds = [0, 4294967296]\n', "design.seeds item 4294967296"),
        ('name = "x"\n[aqgan]\nproposals = 10000000\n', "held in memory"),
        ('name = "x"\n[baselines]\nilp_probes = 1\n', "two probes"),
        ('name = "x"\n[data]\nval_size = 0\n', "data.val_size = 0 is out of range"),
        # names that would leave --results
        ('name = ".."\n', "experiment name '..' must be one folder name"),
        ('name = "a/b"\n', "experiment name 'a/b'"),
        ('name = "/abs"\n', "experiment name '/abs'"),
        ('name = ".hidden"\n', "experiment name '.hidden'"),
        ('name = ""\n', "experiment name ''"),
        ("name = 3\n", "experiment name 3"),
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
    # a comparison needs distinct points on different hardware (compare-local: 2 on 2)
    assert len({(p.hw_name, p.budget_text) for p in planned}) >= 2
    assert len({p.hw_name for p in planned}) >= 2


def test_every_numeric_setting_has_a_range():
    """A new numeric field must get its line in ``LIMITS``: that is what checks it."""
    from dataclasses import fields

    from aqgan_ray.settings import _SECTIONS, LIMITS

    numeric = {"seed"}
    for section, cls in _SECTIONS.items():
        for f in fields(cls):
            default = getattr(cls(), f.name)
            value = default[0] if isinstance(default, tuple) and default else default
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                numeric.add(f"{section}.{f.name}")
    assert numeric == set(LIMITS)


def test_good_values_pass_and_convert(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('name = "my-run_2.b"\nseed = 4294967295\n[model]\nwidth = 1\n')
    exp = load_experiment(path=str(path))
    assert exp.name == "my-run_2.b" and exp.seed == 4294967295
    assert exp.model.width == 1.0 and isinstance(exp.model.width, float)


def test_overrides_and_python_values_are_checked_too():
    from dataclasses import replace

    from aqgan_ray.settings import Experiment

    with pytest.raises(UserError, match="seed = -1 is out of range"):
        load_experiment("smoke", seed=-1)
    with pytest.raises(UserError, match="experiment name '..'"):
        Experiment(name="..")
    with pytest.raises(UserError, match="experiment name '../x'"):
        replace(load_experiment("smoke"), name="../x")


def test_a_preset_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "p.toml"
    path.write_bytes(b'name = "x\xff"\n')
    with pytest.raises(UserError, match=r"--config .*p.toml is not UTF-8 text \(byte 0xff"):
        load_experiment(path=str(path))
    with pytest.raises(UserError, match="does not exist"):
        load_experiment(path="x" * 5000)  # too long a name for the file system
