"""AQGAN's hyperparameter search on Ray Tune, with Optuna's TPE sampler (``OptunaSearch``) and
ASHA early stopping. Part of the distribution layer: the model code (``model.py``) knows nothing
of Ray.

- Objective: ``objective`` from ``fit.fidelity_metrics``, measured on held-out configs (the
  predictor's error on them plus the generator's miss over a grid of targets), never a
  training loss. Minimised.
- Resumable: the experiment lives under ``results/<experiment>/tune/``; running ``train
  --tune-samples T`` again restores it (``Tuner.can_restore`` / ``Tuner.restore``): finished
  trials are kept, and unfinished ones restart from their last checkpoint.
- Each trial reports every few hundred generator steps with a checkpoint, so ASHA can stop a
  poor trial early and the best trial's last checkpoint is what ``train`` keeps.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from aqgan_ray.aqgan import model as gan
from aqgan_ray.aqgan.checkpoint import model_state
from aqgan_ray.aqgan.data import TrainingData
from aqgan_ray.aqgan.fit import fit

EXPERIMENT = "aqgan-tune"
METRIC, MODE = "objective", "min"


def search_space() -> dict[str, Any]:
    """Ranges around the defaults in ``gan.GanSpec``; log scales for rates and weights."""
    return {
        "lr_g": tune.loguniform(2e-4, 3e-3),
        "lr_d": tune.loguniform(2e-4, 3e-3),
        "cond_weight": tune.loguniform(1.0, 50.0),
        "diversity_weight": tune.uniform(0.0, 0.5),
        "gumbel_tau": tune.uniform(0.3, 1.2),
        "hidden": tune.choice([128, 256, 512]),
        "noise_dim": tune.choice([16, 32, 64]),
        "predictor_hidden": tune.choice([16, 32, 64]),
        "predictor_weight_decay": tune.loguniform(1e-4, 1e-1),
    }


def _trainable(config: dict[str, Any], data: TrainingData, bit_values: list, base: dict):
    torch.set_num_threads(1)
    spec = replace(gan.GanSpec(**base), **config)

    def on_report(step: int, model: gan.TrainedGan, metrics: dict[str, float]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "aqgan.pt"
            torch.save(model_state(model, spec), path)
            tune.report({**metrics, "step": step}, checkpoint=tune.Checkpoint.from_directory(tmp))

    fit(data, bit_values, spec, on_report=on_report)


def search(
    data: TrainingData,
    bit_values: list[int],
    base: gan.GanSpec,
    samples: int,
    storage: Path,
    seed: int,
) -> tuple[dict[str, Any], dict[str, float], dict]:
    """Run (or resume) the search; returns (best hyperparameters, its metrics, its weights)."""
    storage = Path(storage).resolve()
    path = storage / EXPERIMENT
    trainable = tune.with_resources(
        tune.with_parameters(
            _trainable, data=data, bit_values=list(bit_values), base=base.to_dict()
        ),
        {"cpu": 1},
    )
    restored = tune.Tuner.can_restore(str(path))
    if restored:  # the saved experiment keeps its own number of trials
        tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
    else:
        searcher = OptunaSearch(metric=METRIC, mode=MODE, seed=seed)
        reports = max(1, base.steps // 250)  # fit() reports every 250 generator steps
        scheduler = ASHAScheduler(
            time_attr="training_iteration", max_t=reports, grace_period=min(2, reports)
        )
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(),
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode=MODE,
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=samples,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=str(storage),
                verbose=0,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    results = tuner.fit()
    expected = len(results) if restored else max(samples, len(results))
    if results.num_terminated + results.num_errors < expected:
        # Tune catches Ctrl-C itself, saves the experiment and returns: stop here as well,
        # so that `train` exits as interrupted instead of keeping a partial search.
        raise KeyboardInterrupt
    best = results.get_best_result(metric=METRIC, mode=MODE, scope="last")
    if best.checkpoint is None:
        raise RuntimeError(f"no Tune trial finished a report: {results.errors}")
    with best.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / "aqgan.pt", map_location="cpu", weights_only=True)
    params = {k: best.config[k] for k in search_space()}
    metrics = {k: float(best.metrics[k]) for k in ("heldout_mae", "cond_err", "objective")}
    return params, metrics, state
