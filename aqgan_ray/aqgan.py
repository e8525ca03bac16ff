"""AQGAN around the model: training data from the store, the held-out split, fidelity metrics
and a checkpoint that is safe to load (``torch.load(weights_only=True)``: tensors, numbers,
strings, lists and dicts only)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aqgan_ray import gan
from aqgan_ray.config import QuantConfig
from aqgan_ray.errors import UserError

# Never reused: 1 and 3 held the additive predictor, 2 the sensitivity-profile predictor that was
# taken out again, 4 adds the residual GP; a checkpoint of any other format is refused, not misread.
FORMAT_VERSION = 4
# Below this many stored configs there is nothing to learn a condition from.
MIN_STORE = 30
# Targets on which the condition error and diversity are measured (scaled accuracy).
TARGET_GRID = tuple(np.linspace(0.1, 1.0, 7))
# Share of the store's accuracy range, from its bottom, where nobody asks for a target: near
# chance. Fidelity and refinement targets lie above it.
BAND_FLOOR = 0.15


def band_start(lo: float, hi: float) -> float:
    return lo + BAND_FLOOR * (hi - lo)


def fidelity_targets(lo: float, hi: float, n: int) -> np.ndarray:
    """``n`` evenly spaced targets from the band's start to the store's best accuracy."""
    return np.linspace(band_start(lo, hi), hi, n)


@dataclass(frozen=True)
class TrainingData:
    idx: torch.Tensor  # [n, L, 2] choice indices
    acc: torch.Tensor  # [n] validation accuracy
    hashes: tuple[str, ...]


def training_data(
    rows: Sequence[dict], layer_names: Sequence[str], bit_choices: Sequence[int]
) -> TrainingData:
    if len(rows) < MIN_STORE:
        raise UserError(
            f"the evaluation store holds {len(rows)} configs; AQGAN needs at least {MIN_STORE}: "
            f"run `aqgan-ray collect --samples N` with N >= {MIN_STORE} (a few hundred is better)"
        )
    # One order for one content: the store's row order follows evaluation completion times,
    # and the held-out split and minibatches follow the row order.
    rows = sorted(rows, key=lambda r: r["config_hash"])
    return _as_data(rows, layer_names, bit_choices)


def _as_data(
    rows: Sequence[dict], layer_names: Sequence[str], bit_choices: Sequence[int]
) -> TrainingData:
    try:
        idx = torch.from_numpy(indices_of([(r["w_bits"], r["a_bits"]) for r in rows], bit_choices))
    except (KeyError, ValueError):
        idx = None
    if idx is None or idx.shape[1] != len(layer_names):
        raise UserError("the store's configs do not match this model's layer table")
    acc = torch.tensor([r["val_acc"] for r in rows], dtype=torch.float32)
    return TrainingData(idx, acc, tuple(r["config_hash"] for r in rows))


def holdout_split(n: int, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, held-out rows), seeded; at least 5 held out."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = max(5, int(round(n * share)))
    return perm[k:], perm[:k]


def fidelity_metrics(
    model: gan.TrainedGan, data: TrainingData, holdout: torch.Tensor, n_choices: int
) -> dict[str, float]:
    """What Tune optimises, measured on configs the model never saw.

    - ``heldout_mae``: the ranker's error (predictor plus residual GP) on held-out (config,
      accuracy) pairs, in accuracy units.
    - ``cond_err``: over a grid of targets, the gap between each target and the predicted
      accuracy of the 4 best-ranked of 128 proposals (how well the generator reaches targets).
    - ``objective`` = their sum: proposals are ranked by that ranker, so what a user gets is
      off by about the ranker's error plus the generator's miss.
    """
    pred, _ = gan.predict(model, data.idx[holdout], n_choices)
    heldout_mae = float(np.abs(pred - data.acc[holdout].numpy()).mean())
    errors, distinct = [], []
    for i, c in enumerate(TARGET_GRID):
        target = float(model.scaler.unscale(c))
        idx, p, s = gan.sample(model, target, 128, seed=i)
        top = np.argsort(np.abs(p - target) + s)[:4]
        errors.append(float(np.abs(p[top] - target).mean()))
        distinct.append(len({idx[j].tobytes() for j in top}))
    cond_err = float(np.mean(errors))
    return {
        "heldout_mae": heldout_mae,
        "cond_err": cond_err,
        "objective": heldout_mae + cond_err,
        "top4_distinct": float(np.mean(distinct)),
    }


def fit(
    data: TrainingData,
    bit_values: Sequence[int],
    spec: gan.GanSpec,
    on_report: Callable[[int, gan.TrainedGan, dict[str, float]], None] | None = None,
) -> tuple[gan.TrainedGan, dict[str, float], torch.Tensor]:
    """Train on the non-held-out rows; returns (model, final metrics, held-out rows)."""
    train, holdout = holdout_split(len(data.acc), spec.holdout, spec.seed)
    n_choices = len(bit_values)

    def report(step: int, model: gan.TrainedGan) -> None:
        if on_report is not None:
            on_report(step, model, fidelity_metrics(model, data, holdout, n_choices))

    model = gan.train_gan(data.idx[train], data.acc[train], bit_values, spec, on_step=report)
    return model, fidelity_metrics(model, data, holdout, n_choices), holdout


def refit_predictor(
    model: gan.TrainedGan, data: TrainingData, bit_values: Sequence[int], spec: gan.GanSpec
) -> gan.TrainedGan:
    """The deployed ranker: the predictor and its residual GP fitted again on every stored
    config, held-out ones included, once the held-out split has served to measure and select.
    The generator keeps the predictor it was trained against; only the ranking of proposals
    uses the refit ones."""
    c = torch.as_tensor(model.scaler.scale(data.acc), dtype=torch.float32)
    x = gan.one_hot(data.idx, len(bit_values))
    predictor, residual = gan.fit_ranker(x, c, spec, bit_values)
    return replace(model, predictor=predictor, residual=residual)


def model_state(model: gan.TrainedGan, spec: gan.GanSpec) -> dict[str, Any]:
    """The networks and their hyperparameters, as plain tensors and numbers."""
    return {
        "spec": spec.to_dict(),
        "scaler": [model.scaler.lo, model.scaler.hi],
        "generator": model.generator.state_dict(),
        "discriminator": model.discriminator.state_dict(),
        "predictor": model.predictor.state_dict(),
        "residual": model.residual.state_dict(),
    }


def model_from_state(
    state: dict, n_layers: int, bit_values: Sequence[int]
) -> tuple[gan.TrainedGan, gan.GanSpec]:
    known = {f.name for f in fields(gan.GanSpec)}
    spec = gan.GanSpec(**{k: v for k, v in state["spec"].items() if k in known})
    n_choices = len(bit_values)
    members = [
        gan.Predictor(bit_values, n_layers, spec.predictor_hidden)
        for _ in range(spec.predictor_members)
    ]
    model = gan.TrainedGan(
        gan.Generator(n_layers, n_choices, spec.noise_dim, spec.hidden),
        gan.Discriminator(n_layers, n_choices, spec.hidden),
        gan.PredictorEnsemble(members),
        gan.Scaler(*state["scaler"]),
        gan.ResidualGP(*state["residual"]["x"].shape),
        tuple(int(b) for b in bit_values),
    )
    model.generator.load_state_dict(state["generator"])
    model.discriminator.load_state_dict(state["discriminator"])
    model.predictor.load_state_dict(state["predictor"])
    model.residual.load_state_dict(state["residual"])
    for module in (model.generator, model.discriminator, model.predictor, model.residual):
        module.eval()
    return model, spec


def save_checkpoint(
    path: Path,
    model: gan.TrainedGan,
    spec: gan.GanSpec,
    layer_names: Sequence[str],
    bit_choices: Sequence[int],
    eval_key: str,
    metrics: dict[str, Any],
    model_id: str,
) -> Path:
    state = {
        "format": FORMAT_VERSION,
        **model_state(model, spec),
        "model_id": model_id,
        "layers": list(layer_names),
        "bit_choices": [int(b) for b in bit_choices],
        "eval_key": eval_key,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Loaded:
    model: gan.TrainedGan
    spec: gan.GanSpec
    layer_names: tuple[str, ...]
    bit_choices: tuple[int, ...]
    eval_key: str
    metrics: dict[str, Any]


def model_id(exp) -> str:
    """What a checkpoint belongs to: architecture, width and dataset."""
    return f"{exp.model.name} width {exp.model.width:g} on {exp.data.name}"


def load_checkpoint(
    path: Path, layer_names: Sequence[str], bit_choices: Sequence[int], expected_model: str
) -> Loaded:
    """Refuses, with one line, a checkpoint of another model or bit-choice set."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no AQGAN checkpoint at {path}; run `aqgan-ray train` first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        version = state["format"]
    except Exception as exc:  # torch raises many types for a damaged file
        raise UserError(
            f"AQGAN checkpoint {path} is unreadable ({type(exc).__name__}); train again"
        ) from None
    if version != FORMAT_VERSION:
        raise UserError(f"AQGAN checkpoint {path} has format {version}; train again")
    if state.get("model_id") != expected_model or tuple(state["layers"]) != tuple(layer_names):
        raise UserError(
            f"AQGAN checkpoint {path} was trained for {state.get('model_id')}, not "
            f"{expected_model}; train it for this experiment"
        )
    if tuple(state["bit_choices"]) != tuple(int(b) for b in bit_choices):
        raise UserError(
            f"AQGAN checkpoint {path} was trained for bit choices {state['bit_choices']}, "
            f"this experiment uses {list(bit_choices)}; train it for this experiment"
        )
    model, spec = model_from_state(state, len(layer_names), bit_choices)
    return Loaded(
        model,
        spec,
        tuple(layer_names),
        tuple(int(b) for b in bit_choices),
        state["eval_key"],
        dict(state["metrics"]),
    )


def with_evidence(loaded: Loaded, rows: Sequence[dict]) -> tuple[Loaded, int]:
    """The checkpoint's ranker told every stored evaluation of its setup that it has not seen
    (``TrainedGan.with_evidence``), and how many that was.

    The checkpoint's residual GP holds the configs it was trained and refined on; evaluations
    made since (``train``'s fidelity verification, ``generate --verify``, baselines) stay in the
    store. Adding them to the GP's posterior costs milliseconds and corrects the ranking where
    it was checked, so a target asked twice is not missed twice the same way. Rows of another
    setup (``eval_key``) are ignored.
    """
    mine = sorted(
        (r for r in rows if r.get("eval_key") == loaded.eval_key), key=lambda r: r["config_hash"]
    )
    if not mine:
        return loaded, 0
    data = _as_data(mine, loaded.layer_names, loaded.bit_choices)
    model = loaded.model
    x = gan.one_hot(data.idx, len(loaded.bit_choices))
    before = len(model.residual.x)
    model = model.with_evidence(x, data.acc)
    return replace(loaded, model=model), len(model.residual.x) - before


def indices_of(
    bits: Sequence[tuple[Sequence[int], Sequence[int]]], bit_choices: Sequence[int]
) -> np.ndarray:
    """(weight bits, activation bits) per config -> choice indices [n, L, 2], the inverse of
    ``configs_of``. Raises KeyError for a bitwidth not in ``bit_choices`` and ValueError for
    configs of different lengths."""
    lut = {int(b): i for i, b in enumerate(bit_choices)}
    out = [[[lut[w], lut[a]] for w, a in zip(wb, ab, strict=True)] for wb, ab in bits]
    return (
        np.array(out, dtype=np.int64).reshape(len(out), -1, 2)
        if out
        else np.empty((0, 0, 2), np.int64)
    )


def configs_of(idx: np.ndarray, layer_names: Sequence[str], bit_choices: Sequence[int]):
    """Choice indices [n, L, 2] -> QuantConfigs."""
    choices = np.asarray(bit_choices)
    bits = choices[idx]
    return [
        QuantConfig(
            tuple(layer_names), tuple(int(b) for b in row[:, 0]), tuple(int(b) for b in row[:, 1])
        )
        for row in bits
    ]
