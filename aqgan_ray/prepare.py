"""``prepare``: dataset splits, the base model (trained and cached when no checkpoint exists),
BN folding, the layer table and calibration, bundled as ``Prepared``.

Two cache files live under ``<cache>/models/`` (default ``~/.cache/aqgan-ray``): the trained
checkpoint, keyed by everything that determines the weights (model, dataset, which images are
training images, training recipe, seed), and the calibration with the full-precision accuracies,
keyed by the checkpoint and the quantization settings. A second ``prepare`` reads both and is
instant. Files are written to a temporary name and renamed, so an interrupted run never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aqgan_ray.atomic import write_atomic
from aqgan_ray.base_model import accuracy, train_model
from aqgan_ray.data import DATASET_SHAPES, Splits, load_splits
from aqgan_ray.errors import UserError
from aqgan_ray.layers import Layer, layer_table
from aqgan_ray.models import build_model, check_folding, fold_batchnorm, pretrained_weights_file
from aqgan_ray.quant import Calibration, calibrate
from aqgan_ray.settings import Experiment

FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("AQGAN_RAY_CACHE", Path.home() / ".cache" / "aqgan-ray"))


@dataclass(frozen=True)
class Prepared:
    """Everything an evaluator needs besides the images; small enough to ship to Ray actors."""

    experiment: Experiment
    state_dict: dict[str, Tensor] = field(repr=False)
    layers: tuple[Layer, ...]
    calibration: Calibration = field(repr=False)
    fp_val_acc: float
    fp_test_acc: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_shape: tuple[int, int, int]
    num_classes: int
    checkpoint: str

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def float_model(self) -> nn.Module:
        model = build_model(
            self.experiment.model.name,
            self.num_classes,
            self.input_shape,
            self.experiment.model.width,
        )
        model.load_state_dict(self.state_dict)
        return model.eval()

    def folded_model(self) -> nn.Module:
        return fold_batchnorm(self.float_model())


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _save(obj: dict, path: Path) -> None:
    write_atomic(path, lambda fh: torch.save(obj, fh))


def _load(path: Path, what: str) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise UserError(
            f"{what} {path} is corrupt or unreadable ({type(exc).__name__}); delete it and run "
            "prepare again to rebuild it"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(
            f"{what} {path} does not hold a state dict; delete it and run prepare again"
        )
    return obj


def _load_state_dict(model: nn.Module, state: dict, path: Path) -> None:
    state = state.get("state_dict", state)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(
            f"checkpoint {path} does not fit this model/dataset ({first}); "
            "point model.checkpoint at a checkpoint of the same architecture"
        ) from None


def _base_model(
    exp: Experiment, splits: Splits, cache: Path, progress: bool
) -> tuple[nn.Module, Path]:
    """The trained float model: a user checkpoint, cached ImageNet weights, or train and cache."""
    spec = exp.model
    model = build_model(spec.name, splits.num_classes, splits.input_shape, spec.width)
    if spec.checkpoint is not None:
        path = Path(spec.checkpoint).expanduser()
        if not path.is_file():
            raise UserError(f"model.checkpoint {path} does not exist")
        _load_state_dict(model, _load(path, "checkpoint"), path)
        return model.eval(), path
    if exp.data.name == "imagenet":
        path_str, _ = pretrained_weights_file(spec.name)
        path = Path(path_str)
        if not path.is_file():
            raise UserError(
                f"no ImageNet weights for {spec.name} at {path}: fetch them once on a machine with "
                "internet (torchvision weights=IMAGENET1K_V1) and copy the file there, or set "
                "model.checkpoint; training on ImageNet is not supported here"
            )
        _load_state_dict(model, _load(path, "checkpoint"), path)
        return model.eval(), path
    key = {
        "format": FORMAT_VERSION,
        "model": asdict(spec),
        "dataset": exp.data.name,
        "val_size": exp.data.val_size,
        "train_subset": exp.data.train_subset,
        "seed": exp.seed,
        "train": asdict(exp.train),
    }
    path = cache / "models" / f"{spec.name}-{exp.data.name}-{_key(key)}.pt"
    if path.is_file():
        _load_state_dict(model, _load(path, "checkpoint"), path)
        return model.eval(), path
    print(
        f"training {spec.name} on {exp.data.name} ({len(splits.train_x)} images, "
        f"{exp.train.epochs} epochs); cached at {path}",
        file=sys.stderr,
    )
    train_model(
        model,
        splits.train_x,
        splits.train_y,
        splits.mean,
        splits.std,
        exp.train,
        seed=exp.seed,
        progress=progress,
    )
    _save({"state_dict": model.state_dict(), "key": key}, path)
    return model, path


def prepare(
    exp: Experiment, cache_dir: Path | None = None, progress: bool = True
) -> tuple[Prepared, Splits]:
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    splits = load_splits(exp.data, cache / "data")
    model, ckpt = _base_model(exp, splits, cache, progress)
    folded = fold_batchnorm(model)
    check_folding(model, folded, splits.input_shape)
    layers = tuple(layer_table(folded, splits.input_shape))
    stat = ckpt.stat()
    calib_key = {
        "format": FORMAT_VERSION,
        "checkpoint": [str(ckpt.resolve()), stat.st_size, stat.st_mtime_ns],
        "data": asdict(exp.data),
        "bits": list(exp.quant.bit_choices),
    }
    calib_path = cache / "calibration" / f"{ckpt.stem}-{_key(calib_key)}.pt"
    if calib_path.is_file():
        state = _load(calib_path, "calibration cache")
        calibration = Calibration.from_state(state["calibration"])
        fp_val, fp_test = state["fp_val_acc"], state["fp_test_acc"]
    else:
        calibration = calibrate(
            folded,
            layers,
            splits.calib_x,
            splits.mean,
            splits.std,
            exp.quant.bit_choices,
            seed=exp.seed,
        )
        fp_val = accuracy(folded, splits.val_x, splits.val_y, splits.mean, splits.std)
        fp_test = accuracy(folded, splits.test_x, splits.test_y, splits.mean, splits.std)
        _save(
            {"calibration": calibration.to_state(), "fp_val_acc": fp_val, "fp_test_acc": fp_test},
            calib_path,
        )
    prepared = Prepared(
        experiment=exp,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        layers=layers,
        calibration=calibration,
        fp_val_acc=float(fp_val),
        fp_test_acc=float(fp_test),
        mean=tuple(splits.mean),
        std=tuple(splits.std),
        input_shape=tuple(splits.input_shape),
        num_classes=splits.num_classes,
        checkpoint=str(ckpt),
    )
    return prepared, splits


def architecture_layers(exp: Experiment) -> list[Layer]:
    """The layer table from the architecture alone: pricing a config, or checking one, needs no
    trained model (the trained model's table is the same; ``prepare`` checks it)."""
    shape, classes = DATASET_SHAPES[exp.data.name]  # DataSpec checked the name
    return layer_table(build_model(exp.model.name, classes, shape, exp.model.width), shape)
