"""``Session``: one experiment's results directory, evaluation store, evaluation service and
evaluator pool, and the operations users run on them (the CLI's commands are thin calls to these).

Resources are opened lazily, in the order that fails fastest, so bad input never waits for the
base model's training: the results directory and the store's schema first, then Ray (for
``pool="ray"``), then the base model, and the evaluators only once a config misses the store.
``pool="local"`` evaluates in this process and never imports ``ray``.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aqgan_ray.config import QuantConfig
from aqgan_ray.cost import Budget, CostModel, config_costs, get_hw_model, parse_budget
from aqgan_ray.errors import UserError
from aqgan_ray.layers import Layer

if TYPE_CHECKING:
    import pandas as pd

    from aqgan_ray.aqgan.generate import Query, Verified
    from aqgan_ray.aqgan.trained import TrainedGenerator
    from aqgan_ray.data import Splits
    from aqgan_ray.prepare import Prepared
    from aqgan_ray.search import SearchResult
    from aqgan_ray.service import EvaluationService
    from aqgan_ray.settings import Experiment
    from baselines.ilp import Sensitivity

POOLS = ("ray", "local")


# A long search writes a store part every few seconds; past this many parts they are merged.
COMPACT_OVER_PARTS = 32


@dataclass(frozen=True)
class Verification:
    """What ``Session.verify`` measured: the ``top`` verified configs nearest the target (or the
    most accurate that fit, for a budget alone), every verification made, in order, and the
    returned configs' test accuracy (hash -> accuracy; scored after they were chosen, never
    used to choose)."""

    returned: list[Verified]
    every: list[Verified]
    test_acc: dict[str, float] = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        return max((v.round for v in self.every), default=0)


@dataclass(frozen=True)
class SearchOutcome:
    """One search at one design point (``Session.search``)."""

    method: str
    hw: str
    budget: Budget
    seed: int
    batch: int
    requested: int  # evaluations asked for
    result: SearchResult
    best: dict[str, Any] | None  # the most accurate config within budget, with its test accuracy
    method_summary: dict[str, Any]
    trace_path: Path
    experiment: Experiment
    fp_val_acc: float
    fp_test_acc: float

    @property
    def trace(self) -> pd.DataFrame:
        """One row per evaluation, in the order the method asked for them."""
        import pandas as pd

        return pd.DataFrame(self.result.trace)

    @property
    def evaluations(self) -> int:
        return len(self.result.trace)

    def to_dict(self) -> dict[str, Any]:
        """What ``baseline --json`` prints."""
        result, budget = self.result, self.budget
        return {
            "method": self.method,
            "experiment": self.experiment.name,
            "hw": self.hw,
            "budget": {"metric": budget.metric, "value": budget.value, "relative": budget.relative},
            "seed": self.seed,
            "evaluations": len(result.trace),
            "evaluations_requested": self.requested,
            "preset_evaluations": self.experiment.baselines.evaluations,
            "resumed_from": result.resumed_from,
            "evaluated_now": result.evaluated_now,
            "cached": sum(row["cached"] for row in result.trace),
            "batch": self.batch,
            "search_s": result.search_s,
            "fp_val_acc": self.fp_val_acc,
            "fp_test_acc": self.fp_test_acc,
            "best": self.best,
            "method_summary": self.method_summary,
            "trace": str(self.trace_path),
        }


class Session:
    """An experiment's results, store and evaluators, as a context manager::

        with aq.Session(aq.load_experiment("smoke"), results="results", pool="local") as s:
            s.collect(samples=40)
            gen = s.train_aqgan()

    ``pool="ray"`` (the default) evaluates on Ray actors: an embedded local Ray, or a cluster
    with ``address`` (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); ``workers`` caps the actors.
    ``pool="local"`` evaluates in this process, without Ray. Everything is written to
    ``results/<experiment name>/``; trained base models are cached in ``cache_dir``.
    """

    def __init__(
        self,
        experiment: Experiment,
        results: str | Path = "results",
        *,
        pool: str = "ray",
        address: str | None = None,
        workers: int | None = None,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float = 0.0,
        cache_dir: str | Path | None = None,
        progress: bool = True,
    ):
        if pool not in POOLS:
            raise UserError(f"unknown pool {pool!r}; choose one of {', '.join(POOLS)}")
        if pool == "local" and address is not None:
            raise UserError("an address joins a Ray cluster: it needs pool='ray'")
        self.experiment = experiment
        self.results = Path(results)
        self.run_dir = self.results / experiment.name
        # The seed of collection, AQGAN's training and its proposals (``for_seed``); the base
        # model, its splits and evaluation stay the experiment's.
        self.seed = experiment.seed
        self._parent: Session | None = None
        self.pool_kind = pool
        self.address = address
        self.workers, self.cpus_per_worker = workers, cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.progress = progress
        self._layers: list[Layer] | None = None
        self._prepared: tuple[Prepared, Splits] | None = None
        self._service: EvaluationService | None = None
        self.cluster: dict[str, Any] = {}
        self.quarantined: list[str] = []
        self.planned_workers = 0  # evaluators the pool will start
        self._started_ray = False

    def for_seed(self, seed: int) -> Session:
        """The experiment repeated with ``seed``: its own store, collection, AQGAN and searches
        in ``seed-<seed>/`` of this results directory (the experiment's own seed: this
        directory itself), on the same base model and the same evaluators."""
        root = self._parent or self
        if seed == self.experiment.seed:
            return root
        if seed == self.seed:
            return self
        child = copy.copy(root)
        child.seed, child._parent = seed, root
        child.run_dir = self.results / self.experiment.name / f"seed-{seed}"
        child._service, child._started_ray = None, False
        return child

    # -- lifetime ---------------------------------------------------------------------------
    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush the store, stop the evaluators this session started, and leave an embedded Ray
        it started."""
        service, self._service = self._service, None
        try:
            if service is not None:
                try:
                    service.store.close()  # buffered rows first: nothing evaluated is lost
                finally:
                    service.close()
        finally:
            if self._started_ray:
                from aqgan_ray.pools.ray_actors import disconnect

                disconnect()
                self._started_ray = False

    # -- the model and its layers -----------------------------------------------------------
    @property
    def layers(self) -> list[Layer]:
        """The quantizable layers, in layer-table order (from the architecture: no training)."""
        if self._layers is None:
            from aqgan_ray.prepare import architecture_layers

            self._layers = architecture_layers(self.experiment)
        return list(self._layers)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    @property
    def prepared(self) -> Prepared:
        return self._prepare()[0]

    @property
    def splits(self) -> Splits:
        return self._prepare()[1]

    def _prepare(self) -> tuple[Prepared, Splits]:
        if self._prepared is None:
            from aqgan_ray.prepare import prepare

            self._prepared = prepare(self.experiment, self.cache_dir, progress=self.progress)
        return self._prepared

    def prepare(self) -> dict[str, Any]:
        """Dataset, base model (trained and cached when no checkpoint exists), layer table and
        calibration; writes ``layers.json``. Returns what ``prepare --json`` prints."""
        from aqgan_ray.atomic import write_json

        exp = self.experiment
        out_dir = self.writable_run_dir()  # fail before minutes of training
        prepared, splits = self._prepare()
        layers = [layer.to_dict() for layer in prepared.layers]
        write_json(out_dir / "layers.json", layers)
        return {
            "model": exp.model.name,
            "dataset": exp.data.name,
            "layers": layers,
            "fp_val_acc": prepared.fp_val_acc,
            "fp_test_acc": prepared.fp_test_acc,
            "checkpoint": prepared.checkpoint,
            "splits": {
                "train": len(splits.train_x),
                "val": len(splits.val_x),
                "test": len(splits.test_x),
                "calib": len(splits.calib_x),
            },
            "bit_choices": list(exp.quant.bit_choices),
        }

    def writable_run_dir(self) -> Path:
        """``results/<experiment>/``, created; refused with one line when it cannot be written."""
        path = self.run_dir
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise UserError(
                f"results directory {path} is not writable ({exc.strerror}); "
                "pass --results DIR to write elsewhere"
            ) from None
        return path

    # -- one config -------------------------------------------------------------------------
    def config(self, w_bits: Sequence[int], a_bits: Sequence[int] | None = None) -> QuantConfig:
        """A config of this model, checked against its layers, bit choices and search space."""
        a_bits = w_bits if a_bits is None else a_bits
        return self._checked(QuantConfig(self.layer_names, tuple(w_bits), tuple(a_bits)))

    def cost(self, config: QuantConfig, hw: Sequence[str] = ()) -> dict[str, Any]:
        """Hardware costs of one config (the contract's cost object, plus any ``hw`` model it
        does not already hold), without evaluating it."""
        config = self._checked(config)  # costs_of refuses an unknown hardware model
        return costs_of(hw, self.layers, config)

    def evaluate(self, config: QuantConfig, hw: Sequence[str] = ()) -> dict[str, Any]:
        """Validation and test accuracy and hardware costs of one config, evaluated in this
        process (not stored: a search's evaluations go through ``search``)."""
        from aqgan_ray.evaluate import Evaluator

        # Checked against the architecture's layer table first, so a typo fails at once rather
        # than after minutes of training the base model.
        config = self._checked(config)
        cost = costs_of(hw, self.layers, config)  # refuses a bad hardware model before training
        prepared, splits = self._prepare()
        if prepared.layer_names != config.layers:
            raise RuntimeError("the trained model's layer table differs from its architecture's")
        evaluator = Evaluator.from_splits(prepared, splits, compile=False)  # one config
        result = evaluator.evaluate(config, with_test=True)
        return {
            "config_hash": config.hash,
            **config.to_dict(),
            "val_acc": result.val_acc,
            "test_acc": result.test_acc,
            "fp_val_acc": prepared.fp_val_acc,
            "fp_test_acc": prepared.fp_test_acc,
            "eval_s": result.eval_s,
            "cost": cost,
        }

    def _checked(self, config: QuantConfig) -> QuantConfig:
        if tuple(config.layers) != self.layer_names:
            config = QuantConfig(self.layer_names, config.w_bits, config.a_bits)
        config.validate(self.experiment.quant.bit_choices)
        return config.check_pinned() if self.experiment.quant.keep_first_last else config

    # -- the evaluation service ---------------------------------------------------------------
    @property
    def service(self) -> EvaluationService:
        """Store first, evaluators second (opened on first use)."""
        if self._service is None:
            self._service = self._open_service()
        return self._service

    def open(self) -> Session:
        """Open the store, Ray (``pool="ray"``) and the base model now rather than on first use:
        whatever is wrong with them fails before anything is written."""
        self.service  # noqa: B018 - the property opens them
        return self

    def _open_service(self) -> EvaluationService:
        from aqgan_ray.evaluate import evaluation_key
        from aqgan_ray.service import EvaluationService
        from aqgan_ray.store import EvaluationStore

        root = self.writable_run_dir() / "evaluations"
        EvaluationStore(root, eval_key=None, warn=False)  # an incompatible store fails now
        parent = self._parent
        if parent is not None:  # a seed's store on the experiment's evaluators (not closed here)
            prepared, splits = self._prepare()
            store = EvaluationStore(root, evaluation_key(prepared, splits.val_x, splits.val_y))
            self.quarantined = [str(p) for p in store.quarantine_unreadable()]
            service = parent.service  # the experiment's Ray and evaluators, opened once
            self.cluster, self.planned_workers = parent.cluster, parent.planned_workers
            return EvaluationService(store, lambda: service.pool, owns_pool=False)
        make_pool = self._connect()
        prepared, splits = self._prepare()
        store = EvaluationStore(root, evaluation_key(prepared, splits.val_x, splits.val_y))
        self.quarantined = [str(p) for p in store.quarantine_unreadable()]
        return EvaluationService(store, make_pool)

    def _connect(self) -> Callable[[], Any]:
        """Join or start Ray (``pool="ray"``) and check the pool fits; returns the function that
        starts the evaluators once a config misses the store."""
        exp = self.experiment
        finetune = exp.eval.finetune_steps > 0
        if self.pool_kind == "local":
            from aqgan_ray.pools.local import LocalPool

            self.cluster = {"address": "in-process", "nodes": 1, "cpus": os.cpu_count() or 1,
                            "gpus": 0}  # fmt: skip
            self.planned_workers = LocalPool.size

            def make_local() -> LocalPool:
                prepared, splits = self._prepare()
                train = (splits.train_x, splits.train_y) if finetune else None
                return LocalPool(prepared, (splits.val_x, splits.val_y), train)

            return make_local
        from aqgan_ray.pools import ray_actors

        spec = ray_actors.PoolSpec(self.workers, self.cpus_per_worker, self.gpus_per_worker)
        connected = ray_actors.is_connected()
        self.cluster = ray_actors.connect(self.address)
        self._started_ray = not connected
        self.planned_workers = ray_actors.plan_workers(spec)

        def make_ray() -> ray_actors.EvaluatorPool:
            prepared, splits = self._prepare()
            val = (splits.val_x, splits.val_y)
            train = (splits.train_x, splits.train_y) if finetune else None
            pool = ray_actors.EvaluatorPool(prepared, val, train, spec)
            pool.worker_pids()  # every actor built and running this aqgan-ray version
            return pool

        return make_ray

    def stored_rows(self) -> list[dict[str, Any]]:
        """The results directory's stored evaluations, read-only; none when there is no store."""
        from aqgan_ray.store import EvaluationStore

        if self._service is not None:
            return self._service.store.rows()
        return EvaluationStore(self.run_dir / "evaluations", None, warn=False).rows()

    # -- collection and AQGAN -----------------------------------------------------------------
    def collect(self, samples: int | None = None) -> dict[str, Any]:
        """Grow the evaluation store to ``samples`` distinct configs (default: the preset's);
        returns what ``collect --json`` prints."""
        from aqgan_ray.collect import collect
        from aqgan_ray.sampling import SamplerSpec

        exp = self.experiment
        samples = exp.collect.samples if samples is None else samples
        if samples < 0:
            raise UserError("--samples must be a non-negative number of configs")
        service = self.service
        stats = collect(
            service,
            self.prepared.layer_names,
            exp.quant.bit_choices,
            samples,
            self.seed,
            progress=self.progress,
            spec=SamplerSpec(round_size=exp.collect.round_size),
            keep_first_last=exp.quant.keep_first_last,
        )
        store = service.store
        return {
            "requested": samples,
            "evaluated_now": stats.evaluated_now,
            "total": stats.total,
            "nodes": len(stats.node_ids),
            "node_ids": list(stats.node_ids),
            "cluster": self.cluster,
            "workers": service.workers,
            "replaced_workers": stats.replaced_workers,
            "wall_s": stats.wall_s,
            "evals_per_s": stats.evals_per_s,
            "eval_cpu_s": stats.eval_cpu_s,
            "store": str(store.root),
            "quarantined_parts": self.quarantined,
            "val_acc_histogram": histogram(
                [row["val_acc"] for row in store.rows() if row["source"] == "collect"],
                self.prepared.fp_val_acc,
            ),
        }

    def train_aqgan(
        self,
        *,
        steps: int | None = None,
        tune_samples: int | None = None,
        fidelity_targets: int | None = None,
        fidelity_top: int | None = None,
        refine_rounds: int | None = None,
        refine_targets: int | None = None,
    ) -> TrainedGenerator:
        """Train AQGAN on the store (each argument defaults to the preset's ``[aqgan]``), save
        ``aqgan.pt``, verify fidelity; the generator's ``training`` holds what ``train --json``
        prints. ``tune_samples > 0`` searches the GAN's hyperparameters with Ray Tune."""
        from aqgan_ray.aqgan.train import train

        spec = self.experiment.aqgan
        given = {
            "steps": steps, "tune_samples": tune_samples, "fidelity_targets": fidelity_targets,
            "fidelity_top": fidelity_top, "refine_rounds": refine_rounds,
            "refine_targets": refine_targets,
        }  # fmt: skip
        spec = replace(spec, **{k: v for k, v in given.items() if v is not None})
        if spec.tune_samples < 0 or spec.fidelity_targets < 0 or spec.fidelity_top < 1:
            raise UserError("--tune-samples and --fidelity-targets must be >= 0, --top >= 1")
        if spec.steps < 1:
            raise UserError("--steps must be at least 1")
        if spec.refine_rounds < 0 or spec.refine_targets < 1:
            raise UserError("--refine-rounds must be >= 0 and --refine-targets >= 1")
        if spec.tune_samples and self.pool_kind == "local":
            raise UserError("the hyperparameter search runs on Ray Tune: use pool='ray'")
        from aqgan_ray.aqgan.trained import TrainedGenerator

        out, loaded = train(self.service, self.prepared.layers, self.experiment, spec,
                            self.run_dir, self.progress, self.seed, self.test_accuracy)  # fmt: skip
        fidelity = tuple((r["target_acc"], r["achieved_val_acc"]) for r in out["fidelity"])
        path = Path(out["checkpoint"])
        stored = self.training_rows(loaded.eval_key, self.service.store.rows())
        return TrainedGenerator(loaded, tuple(self.layers), self.seed, fidelity, path,
                                training=out, stored=stored)  # fmt: skip

    def generator(self, checkpoint_only: bool = False) -> TrainedGenerator:
        """The trained generator of this results directory (``aqgan.pt``). Unless
        ``checkpoint_only``, its ranker is also told AQGAN's own evaluations stored since
        training (``train``'s fidelity checks, earlier verifications; never another method's):
        milliseconds."""
        from aqgan_ray.aqgan.checkpoint import load_checkpoint, model_id
        from aqgan_ray.aqgan.train import CHECKPOINT, verified_fidelity
        from aqgan_ray.aqgan.trained import TrainedGenerator

        exp = self.experiment
        path = self.run_dir / CHECKPOINT
        loaded = load_checkpoint(path, self.layer_names, exp.quant.bit_choices, model_id(exp))
        gen = TrainedGenerator(loaded, tuple(self.layers), self.seed,
                               tuple(verified_fidelity(self.run_dir)), path)  # fmt: skip
        if checkpoint_only:
            return gen
        start = time.perf_counter()
        rows = self.stored_rows()
        gen = gen.with_store_rows(rows)
        stored = self.training_rows(loaded.eval_key, rows)
        return replace(gen, evidence_s=time.perf_counter() - start, stored=stored)

    def training_rows(
        self, eval_key: str, rows: Sequence[dict[str, Any]] | None = None
    ) -> tuple[dict, ...]:
        """What AQGAN paid for and trained on, of the setup ``eval_key``, among ``rows``
        (default: the store's): its collection and refinement, the candidates and floor of its
        hardware tuning."""
        from aqgan_ray.aqgan.refine import training_rows
        from aqgan_ray.aqgan.train import refine_log

        rows = self.stored_rows() if rows is None else rows
        kept = {r["config_hash"] for r in refine_log(self.run_dir, eval_key)}
        return tuple(r for r in training_rows(rows, kept) if r.get("eval_key") == eval_key)

    @property
    def evaluator_threads(self) -> int | None:
        """Torch's threads in one evaluator: a Ray actor's CPUs; None for the local pool, which
        evaluates in this process with torch's default. Work done in the driver on them (the
        ILP's sensitivity pass) costs seconds comparable with an evaluation's."""
        return max(1, int(self.cpus_per_worker)) if self.pool_kind == "ray" else None

    def sensitivity(self) -> Sensitivity:
        """The ILP baseline's layer sensitivity for this seed (``baselines/ilp.py``), measured
        in this process on the calibration images and kept in ``sensitivity.json``; its
        ``seconds`` are those of the pass that measured it (the ILP's one-time cost)."""
        import json

        from aqgan_ray.atomic import write_json
        from baselines.ilp import SENSITIVITY_FORMAT, Sensitivity, measure_sensitivity

        exp = self.experiment
        prepared, splits = self._prepare()
        key = {
            "eval_key": self.service.store.eval_key,  # weights, quantizers, protocol
            "calib_images": len(splits.calib_x),
            "probes": exp.baselines.ilp_probes,
            "seed": self.seed,
            "format": SENSITIVITY_FORMAT,
        }
        path = self.run_dir / "sensitivity.json"
        try:
            saved = json.loads(path.read_text())
            if saved["key"] == key:
                return Sensitivity.from_dict(saved["sensitivity"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # none yet, or another setup's, or damaged: measured again
        if splits.calib_y is None:
            raise UserError("the sensitivity pass needs labelled calibration images")
        sensitivity = measure_sensitivity(
            prepared.folded_model(), prepared.layers, prepared.calibration, splits.calib_x,
            splits.calib_y, prepared.mean, prepared.std, probes=exp.baselines.ilp_probes,
            seed=self.seed, keep_first_last=exp.quant.keep_first_last,
            threads=self.evaluator_threads,
            progress=self.progress,
        )  # fmt: skip
        write_json(path, {"key": key, "sensitivity": sensitivity.to_dict()})
        return sensitivity

    def verify(
        self,
        generator: TrainedGenerator,
        target_acc: float | None = None,
        hw: str | CostModel | None = None,
        budget: str | Budget | None = None,
        n: int = 1000,
        top: int = 5,
        rounds: int = 3,
        tolerance: float = 0.01,
        seed: int | None = None,
        *,
        query: Query | None = None,
    ) -> Verification:
        """Evaluate the generator's proposals for real, charged to AQGAN. For a target: while the
        ``top`` verified configs nearest it are not all within ``tolerance``, tell the ranker and
        verify ``top`` more, up to ``rounds`` rounds (1: the paper's verify-once flow). For a
        budget alone: hardware tuning, ``top`` verifications at most, as AQGAN at a design point
        of ``run`` (a generator without training rows, ``checkpoint_only``: the most accurate
        proposals that fit, verified once). ``query``
        (``generator.query(...)``) replaces the arguments that describe it."""
        from aqgan_ray.aqgan.generate import Verified, best_under_budget, verify_until_close

        if rounds < 1:
            raise UserError("--verify-rounds must be at least 1")
        if not 0.0 <= tolerance <= 1.0:
            raise UserError(f"--tolerance {tolerance} must be an accuracy distance in [0, 1]")
        if query is None:
            query = generator.query(target_acc, hw, budget, n, top, seed)
        service = self.service
        if service.store.eval_key != generator.loaded.eval_key:
            raise UserError(
                "the AQGAN checkpoint was trained on evaluations of another setup (seed, "
                "preset or checkpoint); train it again for this one"
            )

        def evaluate(configs: list[QuantConfig]) -> list[tuple[float, bool]]:
            outcomes = service.evaluate(configs, source="aqgan")
            return [(o.val_acc, o.cached) for o in outcomes]

        if query.target_acc is None and generator.stored:  # hardware tuning, as in `run`
            return self._verify_tuned(generator, query, evaluate)
        if query.target_acc is None:  # the paper's flow: the most accurate that fit, verified
            proposals = best_under_budget(generator.loaded, generator.layers, query)
            measured = evaluate([p.config for p in proposals]) if proposals else []
            pairs = zip(proposals, measured, strict=True)
            checked = [Verified(p, acc, cached, 1) for p, (acc, cached) in pairs]
            return Verification(checked, checked, self._test_of(checked))
        returned, every = verify_until_close(
            generator.loaded, generator.layers, query, evaluate, rounds, tolerance
        )
        return Verification(returned, every, self._test_of(returned))

    def _verify_tuned(self, generator: TrainedGenerator, query: Query, evaluate) -> Verification:
        """Hardware tuning verified one config at a time, ``query.top`` at most (as AQGAN at a
        design point of ``run``); the most accurate returned first."""
        from aqgan_ray.aqgan.generate import Proposal, Verified

        tuner = generator.tuner(query)
        every: list[Verified] = []
        while configs := tuner.ask(1):
            ((acc, cached),) = evaluate(configs)
            tuner.tell(configs, [acc])
            config, origin = tuner.asked[-1]
            proposal = Proposal(config, None, tuner.estimates[-1], 0.0,
                                tuner.point.cost(config), True, origin)  # fmt: skip
            every.append(Verified(proposal, acc, cached, len(every) + 1))
        returned = sorted(every, key=lambda v: -v.val_acc)
        return Verification(returned, every, self._test_of(returned))

    def _test_of(self, verified: Sequence[Verified]) -> dict[str, float]:
        return self.test_accuracy([v.proposal.config for v in verified])

    # -- searches -------------------------------------------------------------------------------
    def search(
        self,
        method: str,
        hw: str,
        budget: str,
        evaluations: int | None = None,
        seed: int | None = None,
        batch: int | None = None,
    ) -> SearchOutcome:
        """One baseline search at one design point, resumable: the same call again continues it
        (a larger ``evaluations`` extends it). ``seed`` other than this session's searches in
        that seed's folder with its store (``for_seed``), where ``run --seeds`` continues it."""
        from tqdm import tqdm

        from aqgan_ray.experiment.design import Planned, method_identity, search_dir
        from aqgan_ray.experiment.design import identity as search_identity
        from aqgan_ray.search import DesignPoint, run_search
        from baselines import SearchSetup, get_method

        exp = self.experiment
        spec = get_method(method, kind="baseline")
        if hw is None or budget is None:
            raise UserError("a baseline searches under a budget: give --hw H --budget METRIC=V")
        seed = self.seed if seed is None else seed
        if seed != self.seed:  # that seed's folder and store, where `run --seeds` continues it
            replicate = self.for_seed(seed)
            try:
                return replicate.search(method, hw, budget, evaluations, seed, batch)
            finally:
                replicate.close()
        evaluations = spec.evaluations(exp) if evaluations is None else evaluations
        if evaluations < 1:
            raise UserError(f"--evaluations must be at least 1, got {evaluations}")
        if batch is not None and batch < 1:
            raise UserError(f"--batch must be at least 1, got {batch}")
        layers, choices = self.layers, exp.quant.bit_choices
        hw_model = get_hw_model(hw, layers, choices)
        pinned = exp.quant.keep_first_last
        parsed = parse_budget(budget, hw_model, layers, min(choices), pinned)
        # The layer table from the architecture is the one `prepare` builds: one design point.
        point = DesignPoint(tuple(layers), tuple(choices), hw_model, parsed, pinned)
        planned = Planned(hw_model.name, budget, point, seed)
        folder = search_dir(self.run_dir, method, planned)
        service = self.service
        batch = batch or spec.batch(exp, self.planned_workers)
        sensitivity = self.sensitivity() if spec.needs_sensitivity else None
        setup = SearchSetup(point, seed, folder, self.prepared.fp_val_acc, batch, exp,
                            sensitivity=sensitivity)  # fmt: skip
        proposer = spec.build(setup)
        extra = method_identity(method, sensitivity)
        ident = search_identity(method, planned, service.store.eval_key, extra)
        with tqdm(total=evaluations, desc=method, unit="eval", file=sys.stderr,
                  disable=not self.progress) as bar:  # fmt: skip

            def on_result(row: dict[str, Any]) -> None:
                bar.update(1)
                bar.set_postfix(best=f"{row['best_so_far_val_acc']:.4f}", refresh=False)

            result = run_search(
                proposer, service, point, evaluations, folder, ident, batch, on_result
            )
        if service.store.part_count() > COMPACT_OVER_PARTS:
            service.store.compact()
        best = result.best
        if best is not None:
            config = point.config(best["w_bits"], best["a_bits"])
            best = {
                "config_hash": best["config_hash"],
                "w_bits": best["w_bits"],
                "a_bits": best["a_bits"],
                "val_acc": best["val_acc"],
                "test_acc": self.test_accuracy([config])[config.hash],
                "cost": costs_of([hw_model.name], layers, config),
                "cost_value": best["cost"],  # the budget metric on `hw`
                "within_budget": best["within_budget"],
                "index": best["index"],
            }
        summary = proposer.summary()
        if sensitivity is not None:  # its one-time pass, in evaluations as the ledger counts it
            from aqgan_ray.experiment.ledger import sensitivity_cost

            once = sensitivity_cost(sensitivity.seconds, service.store.rows())
            summary |= {"sensitivity_evaluations": once.evaluations, "median_eval_s": once.eval_s}
        prepared = self.prepared
        return SearchOutcome(method, hw_model.name, parsed, seed, batch, evaluations, result,
                             best, summary, folder / "trace.parquet", exp,
                             prepared.fp_val_acc, prepared.fp_test_acc)  # fmt: skip

    def test_accuracy(self, configs: Sequence[QuantConfig]) -> dict[str, float]:
        """Held-out test accuracy of each config (final reporting only: searches never see it)."""
        from tqdm import tqdm

        from aqgan_ray.evaluate import Evaluator

        if not configs:
            return {}
        # Compiling pays off over a handful of configs on a large test set (`bench eval`).
        compile_ = self.experiment.eval.compile and len(configs) > 4
        tester = Evaluator.from_splits(self.prepared, self.splits, compile=compile_)
        bar = tqdm(configs, desc="test split", unit="config",
                   disable=not self.progress or len(configs) < 2)  # fmt: skip
        return {config.hash: tester.test_accuracy(config) for config in bar}


def costs_of(
    hw_names: Sequence[str], layers: Sequence[Layer], config: QuantConfig
) -> dict[str, Any]:
    """The contract's cost object, plus any ``hw_names`` model it does not already hold.

    A lookup table needs only the entries this config uses (a table measured at 4/6/8 bits
    prices a 4/6/8-bit config); what it lacks is named."""
    cost = config_costs(layers, config)
    for name in hw_names:
        if name in cost:
            continue
        model = get_hw_model(name)
        values = model.batch(layers, np.asarray([config.w_bits]), np.asarray([config.a_bits]))
        cost[name] = {metric: float(v[0]) for metric, v in values.items()}
    return cost


def histogram(accs: Sequence[float], fp_acc: float, bins: int = 10) -> list[dict[str, Any]]:
    """Counts over [0, float accuracy]: does the store cover the range users will ask for?"""
    top = max([fp_acc, *accs]) if accs else fp_acc
    counts, edges = np.histogram(accs, bins=bins, range=(0.0, top))
    return [
        {"from": round(float(lo), 4), "to": round(float(hi), 4), "configs": int(c)}
        for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)
    ]
