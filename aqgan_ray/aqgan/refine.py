"""Active refinement: spend a few evaluations where the generator misses, then learn from them.

Beyond the paper (issue 4, item 5), and our design. The store's first configs are drawn to cover
the accuracy range, not to sit where the generator will propose, and in the steep middle of the
range a few layers at 2 or 3 bits move accuracy by tens of points: there a predictor fitted on a
few dozen configs is off by several points, and so are the proposals it ranks. Refinement closes
that loop the way a user would by hand:

1. Targets: ``targets`` cells of equal width over the band users ask for (the store's range
   without its lowest 15%, as for the fidelity grid), one target at the centre of each cell. The
   centres sit between the fidelity grid's points, so fidelity is measured at targets refinement
   did not visit.
2. For each target, the top proposals (``generate.propose``, exactly what ``generate`` returns)
   are evaluated through the same service as everything else (``source="refine"``): they land in
   the store, and every request, cache hits included, is charged to AQGAN's one-time cost.
3. The generator and discriminator continue training from where they are, for a third of the
   initial steps, with a predictor fitted again on the whole grown store (no held-out split: it
   served its purpose, measuring and selecting the first model).

A target whose proposal already landed within ``TOLERANCE`` is not asked again in later rounds:
evaluations go where the misses are. Each round is written to ``refine.parquet`` before the next
starts; a run interrupted mid-way resumes at the first round not written, keeping the
evaluations already in the store (a half-finished round's configs are answered from it). The
model is not saved per round: a resumed run first replays the training of the rounds written.
Every round trains on the store's own configs and those refinement evaluated up to it, never
on configs a later or half-finished round added, so a resumed run ends with the same model as
one never interrupted; the caller trains the initial model without any of refinement's configs.

Continuing training beat retraining from scratch each round (as good in half the time) and
refitting only the predictor; what refinement gains, and how much it varies with the GAN's
seed, is in docs/fidelity-history.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from aqgan_ray.aqgan import model as gan
from aqgan_ray.aqgan.checkpoint import Loaded
from aqgan_ray.aqgan.data import TrainingData, band_start
from aqgan_ray.aqgan.generate import Query, propose
from aqgan_ray.config import QuantConfig

# A proposal this close to its target (accuracy units) needs no more evaluations there.
TOLERANCE = 0.01
# Proposals sampled per target before ranking (as for the fidelity grid).
SAMPLES = 256


def refinement_targets(lo: float, hi: float, n: int) -> np.ndarray:
    """Centres of ``n`` equal cells over the band targets are asked in."""
    start = band_start(lo, hi)
    return start + (np.arange(n) + 0.5) / n * (hi - start)


def continue_training(
    model: gan.TrainedGan, data: TrainingData, bit_values: Sequence[int], spec: gan.GanSpec,
    round_: int,
) -> gan.TrainedGan:  # fmt: skip
    """The generator and discriminator trained further on the whole store, with a predictor
    fitted on all of it; seeded per round."""
    steps = max(1, spec.steps // 3)
    more = replace(spec, steps=steps, seed=spec.seed + 1 + round_)
    return gan.train_gan(data.idx, data.acc, bit_values, more, init=model)


def refined_through(log: Sequence[dict[str, Any]], round_: int) -> set[str]:
    """Hashes of the configs refinement had evaluated by the end of round ``round_``."""
    return {str(row["config_hash"]) for row in log if int(row["round"]) <= round_}


def training_rows(rows: Sequence[dict[str, Any]], kept: set[str]) -> list[dict[str, Any]]:
    """Store rows to train on: what AQGAN paid for. The collected ones, and the configs of the
    refinement rounds in ``kept`` (whoever stored them first: refinement asked and was charged
    for each); never another method's rows otherwise."""
    return [r for r in rows if r.get("source") == "collect" or r["config_hash"] in kept]


def refine(
    loaded: Loaded,
    rounds: int,
    n_targets: int,
    data_of: Callable[[set[str]], TrainingData],
    evaluate: Callable[[list[QuantConfig]], list[tuple[float, bool]]],
    log: list[dict[str, Any]],
    on_round: Callable[[int, list[dict[str, Any]], gan.TrainedGan], None],
) -> gan.TrainedGan:
    """Run rounds ``len(rounds done in log)`` .. ``rounds - 1``; returns the refined model.

    ``loaded`` holds the model as trained before any round. ``data_of(kept)`` is the store's
    training data with, of the configs refinement added, only those in ``kept`` (the collected
    ones always), so each round trains on what the rounds so far evaluated; ``evaluate`` answers
    configs with (validation accuracy, answered from the store); ``log`` holds the
    rows of the rounds already done (from ``refine.parquet``) and grows; ``on_round(round,
    log, model)`` persists after each round.
    """
    model = loaded.model
    done = {int(row["round"]) for row in log}
    start = max(done) + 1 if done else 0
    for r in range(min(start, rounds)):  # resumed: the written rounds' training, replayed
        data = data_of(refined_through(log, r))
        model = continue_training(model, data, loaded.bit_choices, loaded.spec, r)
    for r in range(start, rounds):
        lo, hi = model.scaler.lo, model.scaler.hi
        targets = refinement_targets(lo, hi, n_targets)
        served = _served(log, targets, hi - lo)
        asked, meta = [], []
        current = replace(loaded, model=model)
        for t_i, target in enumerate(targets):
            if t_i in served:
                continue
            seed = 5000 + 100 * r + t_i
            for p in propose(current, (), Query(float(target), n=SAMPLES, top=1, seed=seed)):
                asked.append(p.config)
                meta.append((t_i, float(target), p.predicted_acc, p.predicted_std))
        if not asked:
            break  # every target already within tolerance
        outcomes = evaluate(asked)
        for config, (t_i, target, pred, std), (acc, cached) in zip(
            asked, meta, outcomes, strict=True
        ):
            log.append(
                {
                    "round": r,
                    "target_index": t_i,
                    "target_acc": target,
                    "predicted_acc": pred,
                    "predicted_std": std,
                    "achieved_val_acc": acc,
                    "config_hash": config.hash,
                    "cached": cached,
                }
            )
        data = data_of(refined_through(log, r))
        model = continue_training(model, data, loaded.bit_choices, loaded.spec, r)
        on_round(r, log, model)
    return model


def _served(log: Sequence[dict[str, Any]], targets: np.ndarray, span: float) -> set[int]:
    """Indices of targets a logged proposal already reached within ``TOLERANCE`` (matched by
    value: the store's range, and with it the grid, may have moved since)."""
    hit = [
        row["target_acc"]
        for row in log
        if abs(row["achieved_val_acc"] - row["target_acc"]) <= TOLERANCE
    ]
    close = 0.25 * span / max(len(targets), 1)
    return {i for i, t in enumerate(targets) if any(abs(t - h) <= close for h in hit)}


def summary(log: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per round: evaluations requested, and the mean and max miss of its proposals."""
    out = []
    for r in sorted({int(row["round"]) for row in log}):
        rows = [row for row in log if int(row["round"]) == r]
        miss = [abs(row["achieved_val_acc"] - row["target_acc"]) for row in rows]
        out.append(
            {"round": r, "evaluations": len(rows), "mean_err": float(np.mean(miss)),
             "max_err": float(np.max(miss))}
        )  # fmt: skip
    return out
