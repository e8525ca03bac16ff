"""Experiment presets: small TOML files shipped in ``aqgan_ray/presets/``, loaded into frozen
dataclasses. A preset may be overridden on the command line (``--model``, ``--dataset``,
``--seed``) or replaced by a file of the same format (``--config PATH``).

Unknown keys are errors rather than silently ignored: a typo in a preset must not quietly run
the default.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from numbers import Integral, Real
from pathlib import Path
from typing import Any

from aqgan_ray.base_model import TrainSpec
from aqgan_ray.config import (
    DEFAULT_BIT_CHOICES,
    MAX_BITS,
    MIN_BITS,
    PINNED_BITS,
    is_existing_file,
    read_utf8,
    validate_choices,
)
from aqgan_ray.data import DataSpec
from aqgan_ray.errors import UserError
from aqgan_ray.models import canonical_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


@dataclass(frozen=True)
class ModelSpec:
    name: str = "mobilenet_v2"
    width: float = 1.0  # width multiplier (MobileNetV2, MnasNet only)
    # A checkpoint file to start from instead of training (state dict of the zoo architecture).
    checkpoint: str | None = None


@dataclass(frozen=True)
class QuantSpec:
    bit_choices: tuple[int, ...] = DEFAULT_BIT_CHOICES
    # HAQ's search space for every method: the first layer's weights at 8 bits with the image
    # input unquantized, the last layer at W8/A8 (``config.pin_first_last``). false: all free.
    keep_first_last: bool = True


@dataclass(frozen=True)
class EvalSpec:
    """How a config's accuracy is measured during search."""

    batch_size: int = 1000
    # Compile the quantized model with TorchInductor in processes that evaluate many configs:
    # about 30 s once, then quantized inference runs at float speed (see `aqgan-ray bench eval`).
    compile: bool = True
    # Post-training quantization by default (finetune_steps = 0). A positive value runs HAQ's
    # protocol in short: that many SGD steps with the config's fake quantization in the loop, on
    # the training split, before scoring on the validation split.
    finetune_steps: int = 0
    finetune_batch_size: int = 128
    finetune_lr: float = 1e-3


@dataclass(frozen=True)
class CollectSpec:
    """The one-time dataset AQGAN learns from (``collect``, and the first stage of ``run``)."""

    samples: int = 200  # distinct configs in the evaluation store
    # Configs drawn per round, each round from the results of earlier ones (``SamplerSpec``):
    # the store is then the same whatever order results arrive in. Raise it above the number
    # of evaluators on a large cluster, or evaluators wait at every round's end.
    round_size: int = 16


@dataclass(frozen=True)
class BaselineSpec:
    """The search methods AQGAN is compared with (``baseline``)."""

    # Evaluations per design point for HAQ, TPE and random search: HAQ's 600 episodes. A preset
    # that lowers it is reported as doing so.
    evaluations: int = 600
    haq_warmup: int = 20  # HAQ's random warm-up episodes (reported when lowered)
    # Sensitivity + ILP (baselines/ilp.py): Hutchinson probes per calibration batch of its
    # Hessian traces, and the integer program's solutions it verifies per design point.
    ilp_probes: int = 8
    ilp_evaluations: int = 1


@dataclass(frozen=True)
class AqganSpec:
    """How ``run`` trains AQGAN and uses it per design point."""

    steps: int = 1500  # generator updates (``train --steps``)
    tune_samples: int = 0  # Ray Tune + Optuna trials over the GAN's hyperparameters (0: none)
    fidelity_targets: int = 5  # targets over the store's range verified after training
    fidelity_top: int = 3  # proposals verified per fidelity target
    verify_top: int = 3  # configs verified per design point at most: AQGAN's marginal search cost
    proposals: int = 1000  # samples per target when selecting or tuning under a budget
    # Active refinement after training (``refine.py``): rounds of one verified proposal per
    # target over this many targets, each followed by more training. 0: none.
    refine_rounds: int = 0
    refine_targets: int = 12


@dataclass(frozen=True)
class DesignSpec:
    """The design points ``run`` compares methods on: every hardware model with its budgets
    (``METRIC=VALUE``, ``VALUE`` absolute or ``0.5x`` the all-8-bit cost), for every seed: a
    seed repeats collection, AQGAN's training and every search, in its own folder.
    ``HW:METRIC=VALUE`` is a budget for that model only; a model with such budgets gets only
    those, the others get the unprefixed ones."""

    hw: tuple[str, ...] = ("bismo-edge", "bismo-cloud", "bitfusion")
    budgets: tuple[str, ...] = ("energy_mj=0.3x", "energy_mj=0.4x", "energy_mj=0.5x")
    seeds: tuple[int, ...] = (0,)
    # HAQ, Optuna and random search spend `baselines.evaluations` per point; where time is short
    # they run only on these hardware models and budgets (empty: all). AQGAN, store-best and
    # uniform: all.
    search_hw: tuple[str, ...] = ()
    search_budgets: tuple[str, ...] = ()
    # The methods `run` compares (``baselines.METHODS``; empty: all of them). AQGAN is always
    # among them: every other method's cost to match is measured against its choice.
    methods: tuple[str, ...] = ()


@dataclass(frozen=True)
class Experiment:
    name: str
    seed: int = 0
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    quant: QuantSpec = field(default_factory=QuantSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    collect: CollectSpec = field(default_factory=CollectSpec)
    baselines: BaselineSpec = field(default_factory=BaselineSpec)
    aqgan: AqganSpec = field(default_factory=AqganSpec)
    design: DesignSpec = field(default_factory=DesignSpec)

    def __post_init__(self) -> None:
        check_name(self.name)  # every results path is ``results / name``: checked where it is set


# A name is one folder under --results: no '/', no '..', no absolute path, no hidden folder.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# numpy's legacy seeding (``RandomState``, which Ray Tune and Optuna use) takes 0..2**32-1.
MAX_SEED = 2**32 - 1
# Smallest share of a CPU and of a GPU an evaluator may ask for (``--cpus-per-worker``,
# ``--gpus-per-worker``): an evaluator loads a whole model, so at most 10 per CPU; Ray splits a
# GPU at most 100 ways. The CLI and the pool refuse the same values.
MIN_CPUS_PER_WORKER = 0.1
MIN_GPUS_PER_WORKER = 0.01


def check_name(name: Any) -> str:
    """An experiment name that keeps ``results/<name>/`` inside ``results/``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UserError(
            f"experiment name {name!r} must be one folder name: letters, digits, '.', '_' and "
            "'-', starting with a letter or digit (it becomes results/<name>/); rename it"
        )
    return name


@dataclass(frozen=True)
class Limit:
    """The numbers a setting accepts: ``low`` (excluded when ``above``) up to ``high``; None
    leaves that side open. ``why`` tells the user the reason when it is not obvious."""

    low: float | None = None
    high: float | None = None
    above: bool = False
    why: str = ""

    def admits(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return False
        return self.high is None or value <= self.high

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.above else '>='} {self.low}"
        if self.low is None:
            return f"<= {self.high}"
        if self.above:
            return f"> {self.low} and <= {self.high}"
        return f"within {self.low}..{self.high}"


# Every numeric setting's range, in one table: a value outside it fails before any work starts.
# A list setting with a limit holds integers (each within it); one without holds strings.
# tests/test_settings.py checks that every numeric field of every section is listed here.
LIMITS: dict[str, Limit] = {
    "seed": Limit(0, MAX_SEED),
    "data.val_size": Limit(1, why="every search scores configs on the validation split"),
    "data.train_subset": Limit(0, why="0 keeps the whole training split"),
    "data.test_subset": Limit(0, why="0 keeps the whole test split"),
    "data.calib_size": Limit(1, why="the quantizers calibrate on these images"),
    "data.seed": Limit(0, MAX_SEED),
    "model.width": Limit(0, 4, above=True, why="a width multiplier; 1.0 is the paper's model"),
    "train.epochs": Limit(1),
    "train.batch_size": Limit(1),
    "train.lr": Limit(0, above=True),
    "train.momentum": Limit(0, 1),
    "train.weight_decay": Limit(0),
    "train.label_smoothing": Limit(0, 1),
    "train.shift": Limit(0, 64, why="pixels of random shift"),
    "quant.bit_choices": Limit(MIN_BITS, MAX_BITS, why="bits per weight or activation"),
    "eval.batch_size": Limit(1),
    "eval.finetune_steps": Limit(0, why="0: post-training quantization"),
    "eval.finetune_batch_size": Limit(1),
    "eval.finetune_lr": Limit(0, above=True),
    "collect.samples": Limit(0),
    "collect.round_size": Limit(1),
    "baselines.evaluations": Limit(1),
    "baselines.haq_warmup": Limit(0),
    "baselines.ilp_probes": Limit(2, why="the traces' standard error needs two probes"),
    "baselines.ilp_evaluations": Limit(1),
    "aqgan.steps": Limit(1),
    "aqgan.tune_samples": Limit(0, why="0: no tuning"),
    "aqgan.fidelity_targets": Limit(0, why="0: no fidelity check"),
    "aqgan.fidelity_top": Limit(1),
    "aqgan.verify_top": Limit(1),
    "aqgan.proposals": Limit(1, 1_000_000, why="proposals are held in memory at once"),
    "aqgan.refine_rounds": Limit(0, why="0: no refinement"),
    "aqgan.refine_targets": Limit(1),
    "design.seeds": Limit(0, MAX_SEED),
}


_SECTIONS = {
    "data": DataSpec,
    "model": ModelSpec,
    "train": TrainSpec,
    "quant": QuantSpec,
    "eval": EvalSpec,
    "collect": CollectSpec,
    "baselines": BaselineSpec,
    "aqgan": AqganSpec,
    "design": DesignSpec,
}


def check_seeds(seeds) -> tuple[int, ...]:
    """The run's seeds (``[design] seeds`` or ``run --seeds``), refused with one line unless
    distinct integers within 0..MAX_SEED."""
    seeds = tuple(seeds)
    if not seeds:
        raise UserError("give at least one seed (--seeds 0,1,2 or [design] seeds)")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise UserError(
                f"seed {seed!r} is not a non-negative integer up to {MAX_SEED} (numpy's limit)"
            )
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seeds {list(seeds)} repeat a seed; give each once")
    return seeds


def preset_names() -> list[str]:
    folder = resources.files("aqgan_ray") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _checked(value: Any, default: Any, where: str) -> Any:
    """``value`` checked against the field's default type (TOML has few types; bool is not a
    number here), numbers finite and within ``LIMITS[where]``; a TOML int becomes a float where
    the field is one, a list a tuple. The one place a setting's type and range are decided."""
    limit = LIMITS.get(where)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} = {value!r} must be a list; write it as [...]")
        return tuple(_checked_item(v, limit, where) for v in value)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        return _checked_number(value, type(default), limit, f"{where} = {value!r}")
    else:  # str or optional str
        ok = value is None or isinstance(value, str)
    if not ok:
        expected = "true or false" if isinstance(default, bool) else "a string"
        raise UserError(f"{where} = {value!r} has the wrong type; expected {expected}")
    return value


def _checked_item(value: Any, limit: Limit | None, where: str) -> Any:
    if limit is not None:
        return _checked_number(value, int, limit, f"{where} item {value!r}")
    if not isinstance(value, str):
        raise UserError(f"{where} item {value!r} has the wrong type; expected a string")
    return value


def _checked_number(value: Any, kind: type, limit: Limit | None, label: str) -> Any:
    """``label`` names the value in the message: ``train.lr = nan``."""
    numbers = Integral if kind is int else Real  # numpy's scalars too, for Python callers
    expected = "an integer" if kind is int else "a number"
    if isinstance(value, bool) or not isinstance(value, numbers):
        raise UserError(f"{label} has the wrong type; expected {expected}")
    bounds = f" {limit}" if limit is not None else ""
    if not math.isfinite(value):
        raise UserError(f"{label} is not a finite number; give {expected}{bounds}")
    if limit is not None and not limit.admits(value):
        why = f" ({limit.why})" if limit.why else ""
        raise UserError(f"{label} is out of range; give {expected}{bounds}{why}")
    return kind(value)


def _section(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise UserError(f"[{where}] must be a table")
    defaults = cls()
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise UserError(f"unknown key {where}.{unknown[0]}; valid keys: {', '.join(sorted(known))}")
    values = {k: _checked(v, getattr(defaults, k), f"{where}.{k}") for k, v in table.items()}
    return replace(defaults, **values)


def parse_experiment(doc: dict[str, Any], source: str) -> Experiment:
    known = {"name", "seed", *_SECTIONS}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise UserError(
            f"{source}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(known))}"
        )
    if "name" not in doc:
        raise UserError(f"{source}: 'name' is missing; add name = \"my-experiment\"")
    try:
        name = check_name(doc["name"])
        seed = _checked(doc.get("seed", 0), 0, "seed")
        sections = {k: _section(cls, doc.get(k, {}), k) for k, cls in _SECTIONS.items()}
        return _validated(Experiment(name=name, seed=seed, **sections))
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None


def _validated(exp: Experiment) -> Experiment:
    """Check every value's type and range, normalise names, then check what single values
    do not show (settings that contradict each other)."""
    _check_values(exp)
    model = replace(exp.model, name=canonical_name(exp.model.name))
    quant = replace(exp.quant, bit_choices=validate_choices(exp.quant.bit_choices))
    if quant.keep_first_last and PINNED_BITS not in quant.bit_choices:
        raise UserError(
            f"quant.keep_first_last keeps the first and last layers at {PINNED_BITS} bits, which "
            f"quant.bit_choices {list(quant.bit_choices)} lacks; add {PINNED_BITS} or set "
            "keep_first_last = false"
        )
    data = replace(exp.data, seed=exp.seed)
    design = exp.design
    for text in (*design.budgets, *design.search_budgets):
        hw, sep, _ = text.rpartition(":")
        if sep and hw not in design.hw:
            raise UserError(
                f"design budget {text!r} is for hardware {hw!r}, which design.hw does not list "
                f"({', '.join(design.hw)})"
            )
    check_seeds(design.seeds)
    _check_methods(design.methods)
    return replace(exp, model=model, quant=quant, data=data)


def _check_methods(methods: tuple[str, ...]) -> None:
    from baselines import METHODS

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(
            f"design.methods names unknown method {unknown[0]!r}; choose from "
            f"{', '.join(METHODS)} (or leave it empty for all)"
        )
    if methods and "aqgan" not in methods:
        raise UserError("design.methods must include 'aqgan': the others are measured against it")


def _check_values(exp: Experiment) -> None:
    """Every field of every section through ``_checked``: the preset's values and anything
    overridden since (``--seed``, ``replace`` in Python) alike, before any work starts."""
    _checked(exp.seed, 0, "seed")
    for section in _SECTIONS:
        obj = getattr(exp, section)
        defaults = type(obj)()
        for f in fields(obj):
            _checked(getattr(obj, f.name), getattr(defaults, f.name), f"{section}.{f.name}")


def load_experiment(
    name: str | None = None,
    path: str | None = None,
    *,
    model: str | None = None,
    dataset: str | None = None,
    seed: int | None = None,
    data_dir: str | None = None,
) -> Experiment:
    """A preset by name (``load_experiment("smoke")``), or a preset file
    (``load_experiment(path="my.toml")``), with overrides applied."""
    if name is not None and path is not None:
        raise UserError("give a preset name (--experiment) or a preset file (--config), not both")
    if path is not None:
        file = Path(path)
        if not is_existing_file(file):
            raise UserError(f"preset file {path} does not exist; give the path of a TOML file")
        text, source = read_utf8(file, "--config"), path
    else:
        name = name or "default"
        available = preset_names()
        if name not in available:
            raise UserError(f"unknown experiment {name!r}; presets: {', '.join(available)}")
        text = (resources.files("aqgan_ray") / "presets" / f"{name}.toml").read_text()
        source = f"preset {name}"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{source} is not valid TOML: {exc}") from None
    exp = parse_experiment(doc, source)
    if model is not None and canonical_name(model) != exp.model.name:
        # The preset's width and checkpoint belong to the preset's architecture, not this one.
        exp = replace(exp, model=ModelSpec(name=model))
    if dataset is not None:
        exp = replace(exp, data=replace(exp.data, name=dataset))
    if data_dir is not None:
        exp = replace(exp, data=replace(exp.data, data_dir=data_dir))
    if seed is not None:
        exp = replace(exp, seed=seed)
    return _validated(exp)


def as_dict(exp: Experiment) -> dict[str, Any]:
    return dataclasses.asdict(exp)
