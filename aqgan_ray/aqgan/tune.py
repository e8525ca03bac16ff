"""AQGAN's hyperparameter search on Ray Tune, with Optuna's TPE sampler (``OptunaSearch``) and
ASHA early stopping. Part of the distribution layer: the model code (``model.py``) knows nothing
of Ray.

- Objective: ``objective`` from ``fit.fidelity_metrics``, measured on held-out configs (the
  predictor's error on them plus the generator's miss over a grid of targets), never a
  training loss. Minimised.
- Resumable: the experiment lives under ``results/<experiment>/tune/``; running ``train
  --tune-samples T`` again restores it (``Tuner.can_restore`` / ``Tuner.restore``): finished
  trials are kept, and unfinished ones restart from their last checkpoint.
- Restored only from a directory this user owns, nobody else can write to, and that carries the
  marker written when the search began (``_check_trusted``): Tune's saved state is pickled, so
  restoring it runs whatever code it holds.
- Each trial reports every few hundred generator steps with a checkpoint, so ASHA can stop a
  poor trial early and the best trial's last checkpoint is what ``train`` keeps.
"""

from __future__ import annotations

import json
import os
import stat
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
from aqgan_ray.errors import UserError

EXPERIMENT = "aqgan-tune"
METRIC, MODE = "objective", "min"
# Written into the experiment directory when a search starts, before Tune saves anything there.
MARKER = "aqgan-ray.json"


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


def _marker_identity() -> dict[str, Any]:
    return {"created_by": "aqgan-ray", "experiment": EXPERIMENT, "uid": os.getuid()}


def _start_fresh(path: Path) -> None:
    """Create the experiment directory (and ``tune/`` above it) readable by this user only, and
    write the marker that later lets ``_check_trusted`` accept it."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        # mkdir's mode is filtered by the umask and leaves existing directories alone: set it.
        for folder in (path.parent, path):
            os.chmod(folder, 0o700)
        marker = path / MARKER
        marker.unlink(missing_ok=True)  # a leftover of a search that never saved its state
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(marker, flags, 0o600), "w") as f:
            json.dump(_marker_identity(), f, allow_nan=False)
    except PermissionError as e:
        raise UserError(
            f"cannot prepare the Tune directory {path} ({e.strerror}): delete it to start the "
            "search over"
        ) from None


def _untrusted_reason(path: Path) -> str | None:
    """Why the Tune state under ``path`` (``<results>/<experiment>/tune/aqgan-tune``) must not be
    unpickled, or None when it may be."""
    uid = os.getuid()
    # The experiment directory, tune/ and the run directory: whoever can write to any of them
    # can swap the state. The results directory above is the user's choice and may be a shared
    # mount point (KubeRay's volume is group-writable through fsGroup), so it is not checked.
    for folder in (path, path.parent, path.parent.parent):
        st = os.lstat(folder)
        if stat.S_ISLNK(st.st_mode):
            return f"{folder} is a symbolic link"
        if st.st_uid != uid:
            return f"{folder} is owned by uid {st.st_uid}, not by you (uid {uid})"
        # Group write is the user's own group's under umask 002 (Debian, Ubuntu) and KubeRay's
        # fsGroup (kubelet adds it on every mount): only another group's is refused.
        shared = st.st_mode & stat.S_IWGRP and st.st_gid != os.getgid()
        if st.st_mode & stat.S_IWOTH or shared:
            return f"{folder} is writable by others (chmod go-w to keep it)"
    marker = path / MARKER
    try:
        st = os.lstat(marker)
        identity = json.loads(marker.read_text()) if stat.S_ISREG(st.st_mode) else None
    except (OSError, ValueError):
        identity = None
    if identity != _marker_identity() or st.st_uid != uid:
        return f"it lacks the {MARKER} that aqgan-ray writes when it starts a search"
    # Every file Tune reads back must be this user's, not one dropped in by someone else.
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            entry = Path(root, name)
            if os.lstat(entry).st_uid != uid:
                return f"{entry} is not owned by you"
    return None


def _check_trusted(path: Path) -> bool:
    """True when ``path`` holds a Tune experiment to restore, False when there is none (a new
    search starts); UserError when there is one that this run must not unpickle."""
    if not tune.Tuner.can_restore(str(path)):
        return False
    reason = _untrusted_reason(path)
    if reason is not None:
        raise UserError(
            f"refusing to restore the Tune search in {path}: {reason}; Tune state is pickled "
            f"code, so only a directory that you own and this run created is trusted. Delete "
            f"{path} to start the search over"
        )
    return True


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
    restored = _check_trusted(path)
    if restored:  # the saved experiment keeps its own number of trials
        tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
    else:
        _start_fresh(path)
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
