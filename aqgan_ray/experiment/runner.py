"""The experiment end to end (``aqgan_ray.run``, ``aqgan-ray run``): prepare, then per seed
collect, train AQGAN, every method on every design point, the test split for every chosen
config; then the search-cost tables of every seed and the report.

A seed repeats everything random about the comparison (collection, AQGAN's training and
proposals, every search) in its own folder: the experiment's own seed in ``results/<name>/``,
any other in ``results/<name>/seed-<S>/``; the base model and its evaluation are shared.

Every stage is idempotent and every search checkpointed, so running it again finishes an
interrupted run without evaluating any stored config again. ``experiment.json`` ties the results
directory to the experiment: a run of another setup there is refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from tqdm import tqdm

from aqgan_ray.atomic import read_json, write_json
from aqgan_ray.errors import UserError
from aqgan_ray.experiment import design, ledger, report
from aqgan_ray.session import COMPACT_OVER_PARTS, Session
from aqgan_ray.settings import as_dict, check_seeds
from aqgan_ray.store import read_frame, write_table

# The version of AQGAN's per-point selection (``aqgan.hw_tune``): a search checkpointed by
# another is run again, not continued.
TUNING = 2

if TYPE_CHECKING:
    from aqgan_ray.aqgan.checkpoint import Loaded
    from aqgan_ray.search import SearchResult
    from aqgan_ray.settings import Experiment


@dataclass(frozen=True)
class Replicate:
    """One seed's run: its own collection, AQGAN and searches (``Session.for_seed``)."""

    seed: int
    run_dir: Path
    results: dict[tuple[str, design.Planned], SearchResult]
    test_acc: dict[str, float]
    one_time: ledger.OneTime
    sensitivity: dict[str, Any] | None  # the ILP's one-time pass, where it ran
    rows_by_source: dict[str, int]  # the rows AQGAN trained on, per source
    collect: dict[str, Any]
    trained: bool
    fidelity: list[dict[str, Any]]


@dataclass(frozen=True)
class RunResult:
    """The run's tables as pandas DataFrames, and where they are on disk."""

    run_dir: Path
    search_cost: pd.DataFrame
    traces: pd.DataFrame
    fidelity: pd.DataFrame | None  # every seed's verified fidelity proposals (a seed column)
    report: Path
    one_time: dict[str, Any]  # the first seed's; ``replicates`` holds every seed's
    collect: dict[str, Any]
    trained: bool  # AQGAN was trained by this call (not reused from an earlier one)
    rows: list[dict[str, Any]] = field(repr=False, default_factory=list)
    replicates: list[dict[str, Any]] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """What ``run --json`` prints."""
        return {
            "experiment": self.run_dir.name,
            "search_cost": str(self.run_dir / "search_cost.parquet"),
            "traces": str(self.run_dir / "traces.parquet"),
            "fidelity": [r["fidelity"] for r in self.replicates if r["fidelity"]],
            "report": str(self.report),
            "rows": self.rows,
            "one_time": self.one_time,
            "rows_by_source": self.one_time["rows_by_source"],
            "trained": self.trained,
            "collect": self.collect,
            "replicates": self.replicates,
        }


def run(
    experiment: Experiment,
    results: str | Path = "results",
    *,
    resume: bool = False,
    seeds: Sequence[int] | None = None,
    **session: Any,
) -> RunResult:
    """The whole experiment (``aqgan-ray run``), once per seed (default: ``[design] seeds``):
    each seed collects, trains AQGAN and runs every search on its own, in its own folder
    (``Session.for_seed``). ``resume=True`` insists that there is a run to finish; ``session``
    takes ``Session``'s options (``pool``, ``address``, ``workers``, ...)."""
    exp = experiment
    seeds = check_seeds(exp.design.seeds if seeds is None else seeds)
    run_dir = Path(results) / exp.name
    manifest = run_dir / "experiment.json"
    try:  # as it reads back from experiment.json
        fingerprint = json.loads(
            json.dumps(design.experiment_fingerprint(as_dict(exp)), allow_nan=False)
        )
    except ValueError:
        raise UserError("the experiment's settings hold a non-finite number (nan, inf)") from None
    if manifest.is_file():
        stored = read_json(manifest)
        if stored != fingerprint:
            differs = sorted(k for k in fingerprint if stored.get(k) != fingerprint[k]) or ["?"]
            raise UserError(
                f"{run_dir} holds a run of another experiment (its {differs[0]} settings "
                "differ); pass --results DIR for this one, or delete that directory"
            )
    elif resume:
        raise UserError(f"no run to resume in {run_dir}; start one without --resume")
    with Session(exp, results, **session) as s:
        # a bad design fails before anything slow
        planned = design.design_points(exp, s.layers, seeds)
        s.open()  # the store, Ray and the base model, before anything is written
        write_json(manifest, fingerprint)
        replicates = []
        for seed in seeds:
            r = s.for_seed(seed)
            try:
                replicates.append(_replicate(r, [p for p in planned if p.seed == seed]))
            finally:
                if r is not s:
                    r.close()
        info = {
            "fp_val_acc": s.prepared.fp_val_acc,
            "fp_test_acc": s.prepared.fp_test_acc,
            "chance_acc": 1.0 / s.splits.num_classes,
        }
    return _write_comparison(exp, run_dir, info, planned, replicates)


def _replicate(r: Session, planned: list[design.Planned]) -> Replicate:
    """One seed: collect, train AQGAN, every search, the test split of every chosen config."""
    from aqgan_ray.aqgan.data import TRAINING_SOURCES
    from aqgan_ray.aqgan.train import FIDELITY, refine_log
    from baselines import METHODS

    r.open()
    collected = r.collect(r.experiment.collect.samples)
    loaded, trained = _aqgan_stage(r)
    results_by = _search_stage(r, planned, loaded)
    test_acc = _test_accuracies(r, results_by)
    fidelity_path = r.run_dir / FIDELITY
    fidelity = read_frame(fidelity_path).to_dict("records") if fidelity_path.is_file() else []
    store_rows = r.service.store.rows()
    refine_rows = refine_log(r.run_dir, loaded.eval_key)
    one = ledger.one_time_cost(store_rows, fidelity, loaded.metrics["train_s"], refine_rows)
    by_source = {
        source: int(loaded.metrics.get(f"rows_{source}", 0)) for source in TRAINING_SOURCES
    }
    sensitivity = None
    if any(METHODS[method].needs_sensitivity for method, _ in results_by):
        sens = r.sensitivity()  # measured by the search stage; read back
        cost = ledger.sensitivity_cost(sens.seconds, store_rows)
        served = sum(1 for method, _ in results_by if METHODS[method].needs_sensitivity)
        sensitivity = {"seconds": cost.seconds, "eval_s": cost.eval_s,
                       "evaluations": cost.evaluations, "images": sens.images,
                       "probes": sens.probes, "threads": sens.threads,
                       "design_points": served}  # fmt: skip
    return Replicate(r.seed, r.run_dir, results_by, test_acc, one, sensitivity, by_source,
                     collected, bool(trained), fidelity)  # fmt: skip


def _aqgan_stage(s: Session) -> tuple[Loaded, dict[str, Any]]:
    """The trained AQGAN of this store, training it only if there is none (or it was trained on
    another setup), and verifying its fidelity if that had not finished."""
    from aqgan_ray.aqgan.checkpoint import load_checkpoint, model_id
    from aqgan_ray.aqgan.data import collected_digest
    from aqgan_ray.aqgan.train import CHECKPOINT, FIDELITY, verify_fidelity

    exp, store = s.experiment, s.service.store
    names, choices = s.prepared.layer_names, exp.quant.bit_choices
    path = s.run_dir / CHECKPOINT
    trained: dict[str, Any] = {}
    try:
        loaded = load_checkpoint(path, names, choices, model_id(exp))
        current = (
            loaded.eval_key == store.eval_key
            and "train_s" in loaded.metrics
            and loaded.metrics.get("refine_rounds", 0) >= exp.aqgan.refine_rounds
            # trained on this collection, not a smaller or re-collected one
            and loaded.metrics.get("collected_digest") == collected_digest(store.rows())
        )
    except UserError:
        current = False
    if not current:
        gen = s.train_aqgan()
        trained, loaded = gen.training, gen.loaded
    elif exp.aqgan.fidelity_targets and not (s.run_dir / FIDELITY).is_file():
        rows = verify_fidelity(s.service, loaded, s.prepared.layers, exp.aqgan.fidelity_targets,
                               exp.aqgan.fidelity_top, s.progress, s.test_accuracy)  # fmt: skip
        write_table(rows, s.run_dir / FIDELITY)
    return loaded, trained


def _search_stage(
    s: Session, planned: list[design.Planned], loaded: Loaded
) -> dict[tuple[str, design.Planned], SearchResult]:
    """Every method on every design point it runs on; each search resumes from its checkpoint."""
    from aqgan_ray.aqgan.train import CHECKPOINT
    from aqgan_ray.search import run_search
    from baselines import METHODS, SearchSetup

    exp, service = s.experiment, s.service
    digest = design.file_digest(s.run_dir / CHECKPOINT)
    # what AQGAN paid for: its candidates and floor (hw_tune), and store-best's whole choice
    stored = s.training_rows(loaded.eval_key, service.store.rows())
    jobs = [
        (method, p)
        for method in METHODS.values()
        for p in planned
        if design.runs_on(method.name, p, exp)
    ]
    sensitivity = s.sensitivity() if any(m.needs_sensitivity for m, _ in jobs) else None
    results = {}
    for method, p in tqdm(jobs, desc="searches", unit="search", disable=not s.progress):
        folder = design.search_dir(s.run_dir, method.name, p)
        if method.one_time:  # built from this checkpoint's training rows: redone with them
            extra = {"checkpoint": digest, "tuning": TUNING}
        else:
            extra = design.method_identity(method.name, sensitivity)
        ident = design.identity(method.name, p, service.store.eval_key, extra)
        if extra is not None:  # derived from this run's own stages: redone when they change
            design.discard_stale(folder, ident)
        batch = method.batch(exp, s.planned_workers)
        setup = SearchSetup(p.point, p.seed, folder, s.prepared.fp_val_acc, batch, exp, loaded,
                            stored, sensitivity if method.needs_sensitivity else None)  # fmt: skip
        results[(method.name, p)] = run_search(
            method.build(setup), service, p.point, method.evaluations(exp), folder, ident, batch
        )
        if service.store.part_count() > COMPACT_OVER_PARTS:  # searches flush once per batch
            service.store.compact()
    return results


def _test_accuracies(s: Session, results: dict) -> dict[str, float]:
    """Held-out test accuracy of every chosen config, measured once and kept in
    ``test_accuracy.parquet`` (searches never see it)."""
    from aqgan_ray.config import QuantConfig

    path = s.run_dir / "test_accuracy.parquet"
    known: dict[str, float] = {}
    if path.is_file():
        frame = read_frame(path)
        known = dict(zip(frame["config_hash"], frame["test_acc"], strict=True))
    chosen = {r.best["config_hash"]: r.best for r in results.values() if r.best is not None}
    names = s.prepared.layer_names
    missing = [
        QuantConfig(names, tuple(best["w_bits"]), tuple(best["a_bits"]))
        for key, best in chosen.items()
        if key not in known
    ]
    if missing:
        known |= s.test_accuracy(missing)
        write_table([{"config_hash": k, "test_acc": v} for k, v in sorted(known.items())], path)
    return known


def _write_comparison(
    exp: Experiment,
    run_dir: Path,
    info: dict[str, float],
    planned: list[design.Planned],
    replicates: list[Replicate],
) -> RunResult:
    """search_cost.parquet and traces.parquet (every seed), run.json and the report."""
    from aqgan_ray.aqgan.train import FIDELITY

    rows, traces, fidelity, summaries = [], [], [], []
    for rep in replicates:
        once: dict[str, Any] = {"aqgan": rep.one_time}
        if rep.sensitivity is not None:
            once["ilp"] = ledger.SensitivityCost(rep.sensitivity["seconds"],
                                                 rep.sensitivity["eval_s"])  # fmt: skip
        rows += ledger.cost_rows(exp, rep.results, rep.test_acc, once)
        traces += ledger.trace_rows(rep.results)
        fidelity += [{**row, "seed": rep.seed} for row in rep.fidelity]
        served = sum(1 for method, _ in rep.results if method == "aqgan")
        one = rep.one_time
        one_time = {
            "collect_evaluations": one.collect_evaluations,
            "refine_evaluations": one.refine_evaluations,
            "fidelity_evaluations": one.fidelity_evaluations,
            "evaluations": one.evaluations,
            "eval_cpu_s": one.eval_cpu_s,
            "train_s": one.train_s,
            "design_points": served,
            "rows_by_source": rep.rows_by_source,  # what AQGAN trained on: never another method's
        }
        fidelity_file = rep.run_dir / FIDELITY
        summaries.append(
            {
                "seed": rep.seed,
                "run_dir": str(rep.run_dir.relative_to(run_dir)),
                "one_time": one_time,
                "sensitivity": rep.sensitivity,
                "fidelity": str(fidelity_file) if rep.fidelity else None,
                "fidelity_evaluations": len(rep.fidelity),
                "collect": rep.collect,
                "trained": rep.trained,
            }
        )
    rows.sort(key=ledger.row_order)
    write_table(rows, run_dir / "search_cost.parquet")
    write_table(traces, run_dir / "traces.parquet")
    summary = {
        "experiment": exp.name,
        "model": exp.model.name,
        "dataset": exp.data.name,
        **info,
        "keep_first_last": exp.quant.keep_first_last,
        "seeds": [rep.seed for rep in replicates],
        "design_points": len({(p.hw_name, p.budget_text) for p in planned}),
        "one_time": summaries[0]["one_time"],
        "replicates": [{k: v for k, v in r.items() if k != "collect"} for r in summaries],
        "notes": _notes(exp, planned),
    }
    write_json(run_dir / "run.json", summary)
    report_path = report.build(run_dir)
    return RunResult(
        run_dir=run_dir,
        search_cost=read_frame(run_dir / "search_cost.parquet"),
        traces=read_frame(run_dir / "traces.parquet"),
        fidelity=pd.DataFrame(fidelity) if fidelity else None,
        report=report_path,
        one_time=summaries[0]["one_time"],
        collect=summaries[0]["collect"],
        trained=any(rep.trained for rep in replicates),
        rows=rows,
        replicates=summaries,
    )


def _notes(exp: Experiment, planned: list[design.Planned]) -> list[str]:
    """Where this run departs from the papers' protocol or its own design, for the report."""
    from baselines import METHODS

    notes = [
        f"Design point(s) {', '.join(p.merged)} price every config as {p.label} does (same "
        f"ranking and budget): merged into it, so they count once."
        for p in planned
        if p.merged and p.seed == planned[0].seed
    ]
    if exp.baselines.evaluations < 600:
        notes.append(
            f"HAQ, Optuna and random search spent {exp.baselines.evaluations} evaluations per "
            "design point; HAQ's paper runs 600 episodes."
        )
    if exp.baselines.haq_warmup != 20:
        warmup = exp.baselines.haq_warmup
        notes.append(
            f"HAQ's warm-up was {warmup} ({warmup + 1} random episodes, as HAQ's code counts "
            "them); the paper's is 20."
        )
    if exp.design.search_hw or exp.design.search_budgets:
        chosen = exp.design.methods or tuple(METHODS)
        everywhere = [m.name for m in METHODS.values() if not m.searching and m.name in chosen]
        notes.append(
            "HAQ, Optuna and random search ran on a subset of the design points (hardware "
            f"{list(exp.design.search_hw) or 'all'}, budgets "
            f"{list(exp.design.search_budgets) or 'all'}); {', '.join(everywhere)} on all of "
            "them."
        )
    return notes
