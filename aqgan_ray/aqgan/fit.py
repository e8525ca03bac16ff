"""Fitting AQGAN on the training data: the held-out split, the fidelity metrics Tune optimises,
and the deployed ranker refitted on everything once the held-out split has served."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from aqgan_ray.aqgan import model as gan
from aqgan_ray.aqgan.data import TrainingData

# Targets on which the condition error and diversity are measured (scaled accuracy).
TARGET_GRID = tuple(np.linspace(0.1, 1.0, 7))


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
