"""Training AQGAN end to end on an evaluation store: fit (optionally tuned with Ray Tune), refine
actively, save the checkpoint, verify fidelity. Evaluations go through the evaluation service
the caller owns (charged, stored), so the same code runs on Ray actors or in-process.

Files in the run directory: ``aqgan.pt`` (the checkpoint), ``refine.parquet`` (one write per
refinement round), ``fidelity.parquet`` (the verified fidelity proposals of this checkpoint;
deleted whenever a new checkpoint is saved, so it never describes another one) and ``tune/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from aqgan_ray.aqgan import model as gan
from aqgan_ray.aqgan.checkpoint import (
    Loaded,
    load_checkpoint,
    model_from_state,
    model_id,
    save_checkpoint,
)
from aqgan_ray.aqgan.data import (
    TRAINING_SOURCES,
    collected_digest,
    fidelity_targets,
    rows_by_source,
    training_data,
)
from aqgan_ray.aqgan.fit import fit, refit_predictor
from aqgan_ray.aqgan.generate import Query, propose
from aqgan_ray.aqgan.refine import refine, summary, training_rows
from aqgan_ray.config import QuantConfig
from aqgan_ray.errors import UserError
from aqgan_ray.layers import Layer
from aqgan_ray.store import read_frame, write_table

if TYPE_CHECKING:
    from aqgan_ray.service import EvaluationService
    from aqgan_ray.settings import AqganSpec, Experiment

# Held-out accuracy of configs (hash -> test accuracy), for reporting only (Session.test_accuracy).
TestAccuracy = Callable[[list[QuantConfig]], dict[str, float]]

CHECKPOINT = "aqgan.pt"
FIDELITY = "fidelity.parquet"
REFINE_LOG = "refine.parquet"


def train(
    service: EvaluationService,
    layers: Sequence[Layer],
    exp: Experiment,
    spec_in: AqganSpec,
    run_dir: Path,
    progress: bool = True,
    seed: int | None = None,
    test_accuracy: TestAccuracy | None = None,
) -> tuple[dict[str, Any], Loaded]:
    """Train AQGAN on the store (optionally tuned), refine it actively (optionally), save the
    checkpoint, verify fidelity; returns (what ``train --json`` prints, the saved checkpoint
    as loaded). ``seed`` (default: the experiment's) seeds the GAN; ``test_accuracy`` scores
    the fidelity proposals on the test split too, once, after they were chosen."""
    seed = exp.seed if seed is None else seed
    spec = replace(gan.GanSpec(seed=seed), steps=spec_in.steps)
    store = service.store
    choices = exp.quant.bit_choices
    names = tuple(layer.name for layer in layers)
    # Refinement's configs enter training only through the rounds that evaluated them
    # (refine.py), so a train resumed mid-refinement, or run again, ends with the same model.
    data = training_data(training_rows(store.rows(), set()), names, choices)
    start = time.perf_counter()
    tuned: dict[str, Any] = {}
    if spec_in.tune_samples:
        from aqgan_ray.aqgan import tune  # Ray Tune: only when asked for

        # Tune's trials need the CPUs the evaluators hold (their placement group reserves every
        # one by default): the pool stops here and starts again when refinement evaluates.
        service.close()
        tuned, metrics, state = tune.search(
            data, list(choices), spec, spec_in.tune_samples, run_dir / "tune", seed
        )
        model, spec = model_from_state(state, data.idx.shape[1], choices)
    else:
        with tqdm(total=spec.steps, desc="train AQGAN", unit="step", disable=not progress) as bar:

            def on_report(step: int, _model, metrics: dict[str, float]) -> None:
                bar.update(step - bar.n)
                bar.set_postfix(objective=f"{metrics['objective']:.4f}")

            model, metrics, _ = fit(data, choices, spec, on_report=on_report)
    model = refit_predictor(model, data, choices, spec)
    waited = 0.0
    refine_log: list[dict[str, Any]] = []
    if spec_in.refine_rounds:
        current = Loaded(model, spec, names, tuple(choices), store.eval_key, {},
                         keep_first_last=exp.quant.keep_first_last)  # fmt: skip
        model, refine_log, waited = _refine(service, current, spec_in, run_dir, progress)
    train_s = time.perf_counter() - start - waited  # evaluations are counted on their own
    # The configs its ranker was fitted on: the store can hold refinement configs of rounds
    # not asked for now, which training leaves out, and other methods' rows, never used.
    trained_on = len(model.residual.x)
    kept = {r["config_hash"] for r in refine_log}
    rows = training_rows(store.rows(), kept)
    counts = rows_by_source(rows)
    used = {source: counts.get(source, 0) for source in TRAINING_SOURCES}
    # The old checkpoint's fidelity must not outlive it: `run` would take it as this one's.
    (run_dir / FIDELITY).unlink(missing_ok=True)
    path = save_checkpoint(
        run_dir / CHECKPOINT,
        model,
        spec,
        names,
        choices,
        store.eval_key,
        {
            **metrics,
            "train_s": train_s,
            "refine_rounds": spec_in.refine_rounds,
            "refine_targets": spec_in.refine_targets,
            "refine_evaluations": len(refine_log),
            **{f"rows_{source}": count for source, count in used.items()},
            "collected_digest": collected_digest(rows),
        },
        model_id(exp),
        layers,
        exp.quant.keep_first_last,
    )
    loaded = load_checkpoint(path, names, choices, model_id(exp))
    fidelity = (
        verify_fidelity(service, loaded, layers, spec_in.fidelity_targets, spec_in.fidelity_top,
                        progress, test_accuracy)
        if spec_in.fidelity_targets
        else []
    )  # fmt: skip
    errors = [abs(r["achieved_val_acc"] - r["target_acc"]) for r in fidelity]
    out = {
        "checkpoint": str(path),
        "store_configs": trained_on,
        "rows_by_source": used,
        "train_s": train_s,
        "tune": tuned,
        **{k: metrics[k] for k in ("heldout_mae", "cond_err", "objective")},
        "refine": summary(refine_log),
        "refine_evaluations": len(refine_log),
        "fidelity_mae": float(sum(errors) / len(errors)) if errors else None,
        "fidelity_max_err": max(errors) if errors else None,
        "fidelity_within_2pts": (sum(e <= 0.02 for e in errors) / len(errors) if errors else None),
        "fidelity_evaluations": len(fidelity),
        "fidelity_test_mae": _test_mae(fidelity),
        "fidelity": fidelity,
    }
    if fidelity:
        out["fidelity_table"] = str(write_table(fidelity, run_dir / FIDELITY))
    return out, loaded


def _test_mae(rows: Sequence[dict[str, Any]]) -> float | None:
    errors = [
        abs(r["achieved_test_acc"] - r["target_acc"]) for r in rows if "achieved_test_acc" in r
    ]
    return float(sum(errors) / len(errors)) if errors else None


def refine_log(run_dir: Path, eval_key: str) -> list[dict[str, Any]]:
    """Rounds of refinement already done on this store (``refine.parquet``)."""
    path = run_dir / REFINE_LOG
    if not path.is_file():
        return []
    rows = read_frame(path).to_dict("records")
    return [row for row in rows if row.get("eval_key") == eval_key]


def _refine(service: EvaluationService, loaded: Loaded, spec_in: AqganSpec, run_dir: Path,
            progress: bool):  # fmt: skip
    """Active refinement through the evaluation service, one ``refine.parquet`` write per
    round; returns (model, log, seconds spent waiting on evaluations)."""
    store = service.store
    log = refine_log(run_dir, store.eval_key)
    replayed = min(len({row["round"] for row in log}), spec_in.refine_rounds)
    bar = tqdm(total=spec_in.refine_rounds, initial=replayed, desc="refine AQGAN", unit="round",
               disable=not progress)  # fmt: skip
    waited = 0.0

    def evaluate(configs):
        nonlocal waited
        start = time.perf_counter()
        outcomes = service.evaluate(configs, source="refine")
        waited += time.perf_counter() - start
        return [(o.val_acc, o.cached) for o in outcomes]

    def on_round(r: int, rows, model) -> None:
        # The round's rows reach the store's disk before the log that replays them: a kill
        # between the two must not leave a replay training on fewer rows than the round had.
        store.flush()
        write_table([{**row, "eval_key": store.eval_key} for row in rows], run_dir / REFINE_LOG)
        bar.update(1)
        bar.set_postfix(mean_miss=f"{summary(rows)[-1]['mean_err']:.4f}", store=len(store))

    def data_of(kept: set[str]):
        rows = training_rows(store.rows(), kept)
        return training_data(rows, loaded.layer_names, loaded.bit_choices)

    with bar:
        if replayed:  # refine() first replays their training (no evaluations)
            bar.set_postfix_str(f"replaying the training of {replayed} written round(s)")
        model = refine(
            loaded, spec_in.refine_rounds, spec_in.refine_targets, data_of, evaluate, log, on_round
        )
    # The rounds asked for: a longer earlier run's log stays on disk for a later `train`.
    return model, [row for row in log if int(row["round"]) < spec_in.refine_rounds], waited


def verify_fidelity(
    service: EvaluationService,
    loaded: Loaded,
    layers: Sequence[Layer],
    n_targets: int,
    top: int,
    progress: bool = True,
    test_accuracy: TestAccuracy | None = None,
) -> list[dict[str, Any]]:
    """Verify the top proposals over a grid of targets spanning the store's accuracy range
    (its lowest 15% left out: targets near chance are not what anyone asks for). The paper's
    flow: the checkpoint alone proposes, each proposal is verified once. ``test_accuracy``
    adds ``achieved_test_acc``: the held-out figure, measured after the choice."""
    targets = fidelity_targets(loaded.model.scaler.lo, loaded.model.scaler.hi, n_targets)
    rows = []
    configs = []
    for t_i, target in enumerate(
        tqdm(targets, desc="verify fidelity", unit="target", disable=not progress)
    ):
        query = Query(float(target), n=256, top=top, seed=1000 + t_i)
        proposals = propose(loaded, layers, query)
        outcomes = service.evaluate([p.config for p in proposals], source="aqgan")
        configs += [p.config for p in proposals]
        for rank, (p, o) in enumerate(zip(proposals, outcomes, strict=True)):
            rows.append(
                {
                    "target_acc": float(target),
                    "rank": rank,
                    "predicted_acc": p.predicted_acc,
                    "predicted_std": p.predicted_std,
                    "achieved_val_acc": o.val_acc,
                    "config_hash": p.config.hash,
                    "cached": o.cached,
                    "distinct_in_top": len({q.config.hash for q in proposals}),
                }
            )
    if test_accuracy is not None and rows:
        test = test_accuracy(configs)
        rows = [{**row, "achieved_test_acc": test[row["config_hash"]]} for row in rows]
    return rows


def verified_fidelity(run_dir: Path) -> list[tuple[float, float]]:
    """(target, achieved) of the checkpoint's verified fidelity proposals; none without the
    table (it is deleted whenever a new checkpoint is saved, and written once verified)."""
    path = run_dir / FIDELITY
    if not path.is_file():
        return []
    try:
        frame = read_frame(path)
    except UserError:  # damaged: proposals are still served, without this estimate
        return []
    return list(zip(frame["target_acc"].tolist(), frame["achieved_val_acc"].tolist(), strict=True))
