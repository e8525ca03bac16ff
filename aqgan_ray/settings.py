"""Experiment presets: small TOML files shipped in ``aqgan_ray/presets/``, loaded into frozen
dataclasses. A preset may be overridden on the command line (``--model``, ``--dataset``,
``--seed``) or replaced by a file of the same format (``--config PATH``).

Unknown keys are errors rather than silently ignored: a typo in a preset must not quietly run
the default.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from aqgan_ray.base_model import TrainSpec
from aqgan_ray.config import DEFAULT_BIT_CHOICES, PINNED_BITS, validate_choices
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
    distinct non-negative integers."""
    seeds = tuple(seeds)
    if not seeds:
        raise UserError("give at least one seed (--seeds 0,1,2 or [design] seeds)")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise UserError(f"seed {seed!r} is not a non-negative integer")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seeds {list(seeds)} repeat a seed; give each once")
    return seeds


def preset_names() -> list[str]:
    folder = resources.files("aqgan_ray") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _coerce(value: Any, target: Any, where: str) -> Any:
    """Check a TOML value against the dataclass field's default type (TOML has few types)."""
    if isinstance(target, bool):
        ok = isinstance(value, bool)
    elif isinstance(target, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(target, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(target, tuple):
        ok = isinstance(value, list)
        value = tuple(value) if ok else value
    else:  # str or optional str
        ok = value is None or isinstance(value, str)
    if not ok:
        raise UserError(f"{where} = {value!r} has the wrong type; expected {type(target).__name__}")
    return value


def _section(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise UserError(f"[{where}] must be a table")
    defaults = cls()
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise UserError(f"unknown key {where}.{unknown[0]}; valid keys: {', '.join(sorted(known))}")
    values = {k: _coerce(v, getattr(defaults, k), f"{where}.{k}") for k, v in table.items()}
    return replace(defaults, **values)


def parse_experiment(doc: dict[str, Any], source: str) -> Experiment:
    known = {"name", "seed", *_SECTIONS}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise UserError(
            f"{source}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(known))}"
        )
    name = doc.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise UserError(f"{source}: 'name' must be a non-empty string without '/'")
    seed = _coerce(doc.get("seed", 0), 0, "seed")
    try:
        sections = {k: _section(cls, doc.get(k, {}), k) for k, cls in _SECTIONS.items()}
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    exp = Experiment(name=name, seed=seed, **sections)
    return _validated(exp)


def _validated(exp: Experiment) -> Experiment:
    """Normalise names and check values that types alone do not catch."""
    model = replace(exp.model, name=canonical_name(exp.model.name))
    quant = replace(exp.quant, bit_choices=validate_choices(exp.quant.bit_choices))
    if quant.keep_first_last and PINNED_BITS not in quant.bit_choices:
        raise UserError(
            f"quant.keep_first_last keeps the first and last layers at {PINNED_BITS} bits, which "
            f"quant.bit_choices {list(quant.bit_choices)} lacks; add {PINNED_BITS} or set "
            "keep_first_last = false"
        )
    data = replace(exp.data, seed=exp.seed)
    sections = (
        ("train", exp.train),
        ("eval", exp.eval),
        ("collect", exp.collect),
        ("baselines", exp.baselines),
        ("aqgan", exp.aqgan),
    )
    for section, obj in sections:
        for f in fields(obj):
            val = getattr(obj, f.name)
            if isinstance(val, (int, float)) and not isinstance(val, bool) and val < 0:
                raise UserError(f"{section}.{f.name} must not be negative, got {val}")
    if exp.baselines.evaluations < 1:
        raise UserError("baselines.evaluations must be at least 1")
    if exp.baselines.ilp_probes < 2 or exp.baselines.ilp_evaluations < 1:
        raise UserError(
            "baselines.ilp_probes must be at least 2 (the traces' standard error) and "
            "ilp_evaluations at least 1"
        )
    if min(exp.aqgan.steps, exp.aqgan.fidelity_top, exp.aqgan.verify_top, exp.aqgan.proposals) < 1:
        raise UserError("aqgan.steps, fidelity_top, verify_top and proposals must be at least 1")
    if exp.collect.round_size < 1:
        raise UserError("collect.round_size must be at least 1")
    if exp.aqgan.refine_targets < 1:
        raise UserError("aqgan.refine_targets must be at least 1")
    design = exp.design
    for key, values, kind in (
        ("hw", design.hw, str),
        ("budgets", design.budgets, str),
        ("seeds", design.seeds, int),
        ("search_hw", design.search_hw, str),
        ("search_budgets", design.search_budgets, str),
    ):
        if any(not isinstance(v, kind) or isinstance(v, bool) for v in values):
            raise UserError(f"design.{key} must be a list of {kind.__name__}s, got {list(values)}")
    for text in (*design.budgets, *design.search_budgets):
        hw, sep, _ = text.rpartition(":")
        if sep and hw not in design.hw:
            raise UserError(
                f"design budget {text!r} is for hardware {hw!r}, which design.hw does not list "
                f"({', '.join(design.hw)})"
            )
    check_seeds(design.seeds)
    if exp.train.epochs < 1 or exp.train.batch_size < 1 or exp.eval.batch_size < 1:
        raise UserError("train.epochs, train.batch_size and eval.batch_size must be at least 1")
    return replace(exp, model=model, quant=quant, data=data)


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
        if not file.is_file():
            raise UserError(f"preset file {path} does not exist")
        text, source = file.read_text(), path
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
