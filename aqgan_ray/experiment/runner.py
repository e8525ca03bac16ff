"""The experiment end to end (``aqgan_ray.run``, ``aqgan-ray run``): prepare, collect, train AQGAN,
every method on every design point and seed, the test split for every chosen config, then the
search-cost tables and the report.

Every stage is idempotent and every search checkpointed, so running it again finishes an
interrupted run without evaluating any stored config again. ``experiment.json`` ties the results
directory to the experiment: a run of another setup there is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from aqgan_ray.atomic import write_json
from aqgan_ray.errors import UserError
from aqgan_ray.experiment import design, ledger, report
from aqgan_ray.session import Session
from aqgan_ray.settings import as_dict
from aqgan_ray.store import read_frame, write_table

if TYPE_CHECKING:
    import pandas as pd

    from aqgan_ray.aqgan.checkpoint import Loaded
    from aqgan_ray.search import SearchResult
    from aqgan_ray.settings import Experiment


@dataclass(frozen=True)
class RunResult:
    """The run's tables as pandas DataFrames, and where they are on disk."""

    run_dir: Path
    search_cost: pd.DataFrame
    traces: pd.DataFrame
    fidelity: pd.DataFrame | None
    report: Path
    one_time: dict[str, Any]
    collect: dict[str, Any]
    trained: bool  # AQGAN was trained by this call (not reused from an earlier one)
    rows: list[dict[str, Any]] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """What ``run --json`` prints."""
        fidelity = self.run_dir / "fidelity.parquet"
        return {
            "experiment": self.run_dir.name,
            "search_cost": str(self.run_dir / "search_cost.parquet"),
            "traces": str(self.run_dir / "traces.parquet"),
            "fidelity": str(fidelity) if self.fidelity is not None else None,
            "report": str(self.report),
            "rows": self.rows,
            "one_time": self.one_time,
            "trained": self.trained,
            "collect": self.collect,
        }


def run(
    experiment: Experiment,
    results: str | Path = "results",
    *,
    resume: bool = False,
    **session: Any,
) -> RunResult:
    """The whole experiment (``aqgan-ray run``). ``resume=True`` insists that there is a run to
    finish; ``session`` takes ``Session``'s options (``pool``, ``address``, ``workers``, ...)."""
    exp = experiment
    run_dir = Path(results) / exp.name
    manifest = run_dir / "experiment.json"
    try:  # as it reads back from experiment.json
        fingerprint = json.loads(
            json.dumps(design.experiment_fingerprint(as_dict(exp)), allow_nan=False)
        )
    except ValueError:
        raise UserError("the experiment's settings hold a non-finite number (nan, inf)") from None
    if manifest.is_file():
        stored = json.loads(manifest.read_text())
        if stored != fingerprint:
            differs = sorted(k for k in fingerprint if stored.get(k) != fingerprint[k]) or ["?"]
            raise UserError(
                f"{run_dir} holds a run of another experiment (its {differs[0]} settings "
                "differ); pass --results DIR for this one, or delete that directory"
            )
    elif resume:
        raise UserError(f"no run to resume in {run_dir}; start one without --resume")
    with Session(exp, results, **session) as s:
        planned = design.design_points(exp, s.layers)  # a bad design fails before anything slow
        s.open()  # the store, Ray and the base model, before anything is written
        write_json(manifest, fingerprint)
        collected = s.collect(exp.collect.samples)
        loaded, trained = _aqgan_stage(s)
        results_by = _search_stage(s, planned, loaded)
        test_acc = _test_accuracies(s, results_by)
        store_rows = s.service.store.rows()
        fp = (s.prepared.fp_val_acc, s.prepared.fp_test_acc)
    return _write_comparison(exp, run_dir, fp, planned, results_by, test_acc, store_rows, loaded,
                             collected, bool(trained))  # fmt: skip


def _aqgan_stage(s: Session) -> tuple[Loaded, dict[str, Any]]:
    """The trained AQGAN of this store, training it only if there is none (or it was trained on
    another setup), and verifying its fidelity if that had not finished."""
    from aqgan_ray.aqgan.checkpoint import load_checkpoint, model_id
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
        )
    except UserError:
        current = False
    if not current:
        gen = s.train_aqgan()
        trained, loaded = gen.training, gen.loaded
    elif exp.aqgan.fidelity_targets and not (s.run_dir / FIDELITY).is_file():
        rows = verify_fidelity(s.service, loaded, s.prepared.layers, exp.aqgan.fidelity_targets,
                               exp.aqgan.fidelity_top, s.progress)  # fmt: skip
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
    jobs = [
        (method, p)
        for method in METHODS.values()
        for p in planned
        if design.runs_on(method.name, p, exp)
    ]
    results = {}
    for method, p in tqdm(jobs, desc="searches", unit="search", disable=not s.progress):
        folder = design.search_dir(s.run_dir, method.name, p)
        if method.name == "aqgan":
            ident = design.identity(method.name, p, service.store.eval_key,
                                    {"checkpoint": digest})  # fmt: skip
            design.discard_stale(folder, ident)
        else:
            ident = design.identity(method.name, p, service.store.eval_key)
        batch = method.batch(exp, s.planned_workers)
        setup = SearchSetup(p.point, p.seed, folder, s.prepared.fp_val_acc, batch, exp, loaded)
        results[(method.name, p)] = run_search(
            method.build(setup), service, p.point, method.evaluations(exp), folder, ident, batch
        )
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


def _write_comparison(exp, run_dir, fp, planned, results, test_acc, store_rows, loaded,
                      collected, trained) -> RunResult:  # fmt: skip
    """search_cost.parquet, traces.parquet, run.json and the report."""
    from aqgan_ray.aqgan.train import FIDELITY, refine_log

    fidelity_path = run_dir / FIDELITY
    fidelity = read_frame(fidelity_path) if fidelity_path.is_file() else None
    fidelity_rows = fidelity.to_dict("records") if fidelity is not None else []
    refine_rows = refine_log(run_dir, loaded.eval_key)
    one = ledger.one_time_cost(store_rows, fidelity_rows, loaded.metrics["train_s"], refine_rows)
    rows = ledger.cost_rows(exp, results, test_acc, one)
    write_table(rows, run_dir / "search_cost.parquet")
    write_table(ledger.trace_rows(results), run_dir / "traces.parquet")
    served = sum(1 for method, _ in results if method == "aqgan")
    one_time = {
        "collect_evaluations": one.collect_evaluations,
        "refine_evaluations": one.refine_evaluations,
        "fidelity_evaluations": one.fidelity_evaluations,
        "evaluations": one.evaluations,
        "eval_cpu_s": one.eval_cpu_s,
        "train_s": one.train_s,
        "design_points": served,
    }
    summary = {
        "experiment": exp.name,
        "model": exp.model.name,
        "dataset": exp.data.name,
        "fp_val_acc": fp[0],
        "fp_test_acc": fp[1],
        "design_points": len(planned),
        "one_time": one_time,
        "notes": _notes(exp, planned),
    }
    write_json(run_dir / "run.json", summary)
    report_path = report.build(run_dir)
    return RunResult(
        run_dir=run_dir,
        search_cost=read_frame(run_dir / "search_cost.parquet"),
        traces=read_frame(run_dir / "traces.parquet"),
        fidelity=fidelity if fidelity_rows else None,
        report=report_path,
        one_time=one_time,
        collect=collected,
        trained=trained,
        rows=rows,
    )


def _notes(exp: Experiment, planned: list[design.Planned]) -> list[str]:
    """Where this run departs from the papers' protocol or its own design, for the report."""
    notes = [
        f"Design point(s) {', '.join(p.merged)} price every config as {p.label} does (same "
        f"ranking and budget): merged into it, so they count once."
        for p in planned
        if p.merged and p.seed == exp.design.seeds[0]
    ]
    if exp.baselines.evaluations < 600:
        notes.append(
            f"HAQ, Optuna and random search spent {exp.baselines.evaluations} evaluations per "
            "design point; HAQ's paper runs 600 episodes."
        )
    if exp.baselines.haq_warmup != 20:
        notes.append(f"HAQ's warm-up was {exp.baselines.haq_warmup} episodes (the paper: 20).")
    if exp.design.search_hw or exp.design.search_budgets:
        notes.append(
            "HAQ, Optuna and random search ran on a subset of the design points (hardware "
            f"{list(exp.design.search_hw) or 'all'}, budgets "
            f"{list(exp.design.search_budgets) or 'all'}); AQGAN and uniform on all of them."
        )
    return notes
