"""The ``aqgan-ray`` command line (see shared/CONTRACT.md and the README).

Conventions: ``--json`` prints exactly one JSON object on stdout while progress bars and logs go
to stderr; bad input exits 2 with one ``error: ...`` line and no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from aqgan_ray.errors import UserError

if TYPE_CHECKING:  # the heavy modules load only in the commands that use them
    from aqgan_ray.data import Splits
    from aqgan_ray.prepare import Prepared
    from aqgan_ray.service import EvaluationService
    from aqgan_ray.settings import Experiment


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("experiment")
    g.add_argument("--experiment", default=None, help="preset name (default: default)")
    g.add_argument("--config", default=None, metavar="PATH", help="a preset file instead")
    g.add_argument("--model", default=None, help="override the preset's model")
    g.add_argument("--dataset", default=None, help="override the preset's dataset")
    g.add_argument("--data-dir", default=None, help="directory holding the dataset")
    g.add_argument("--seed", type=int, default=None, help="override the preset's seed")
    g.add_argument(
        "--results",
        default="results",
        metavar="DIR",
        help="runs write to DIR/<experiment>/ (default: results)",
    )
    g.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="trained models and calibration (default: $AQGAN_RAY_CACHE or ~/.cache/aqgan-ray)",
    )
    g.add_argument("--json", action="store_true", help="one JSON object on stdout")


def _config_args(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--uniform", type=int, metavar="B", help="every layer at B bits")
    which.add_argument(
        "--bits", metavar="JSON", help='{"w_bits": [...], "a_bits": [...]} or a file holding it'
    )
    p.add_argument(
        "--hw",
        action="append",
        default=[],
        metavar="NAME",
        help="also price on this hardware model (e.g. table:PATH); repeatable",
    )


def _ray_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ray")
    g.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="join a Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: embedded local Ray)",
    )
    g.add_argument(
        "--workers", type=int, default=None, metavar="K", help="evaluator actors (default: fill)"
    )
    g.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aqgan-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("prepare", help="dataset, base model, layer table, calibration")
    _common(p)
    p = sub.add_parser("evaluate", help="accuracy and hardware costs of one config")
    _common(p)
    _config_args(p)
    p = sub.add_parser("cost", help="hardware costs of one config (no evaluation)")
    _common(p)
    _config_args(p)
    p = sub.add_parser("collect", help="grow the evaluation store to N distinct configs, on Ray")
    _common(p)
    _ray_args(p)
    p.add_argument(
        "--samples", type=int, default=None, metavar="N", help="store size (default: preset's)"
    )
    p = sub.add_parser("train", help="train AQGAN on the evaluation store, then verify fidelity")
    _common(p)
    _ray_args(p)
    p.add_argument(
        "--tune-samples",
        type=int,
        default=0,
        metavar="T",
        help="search the GAN's hyperparameters with Ray Tune + Optuna over T trials (resumable)",
    )
    p.add_argument("--steps", type=int, default=None, help="generator updates (default: preset)")
    p.add_argument(
        "--fidelity-targets",
        type=int,
        default=5,
        metavar="M",
        help="targets over the store's range on which proposals are verified (0: skip)",
    )
    p.add_argument("--top", type=int, default=3, metavar="K", help="proposals verified per target")
    p.add_argument(
        "--refine-rounds",
        type=int,
        default=None,
        metavar="R",
        help="rounds of active refinement after training (default: the preset's; 0: none)",
    )
    p.add_argument(
        "--refine-targets",
        type=int,
        default=None,
        metavar="G",
        help="targets per refinement round, one verified proposal each (default: the preset's)",
    )
    p = sub.add_parser("generate", help="configs for a target accuracy and/or a hardware budget")
    _common(p)
    _ray_args(p)
    p.add_argument("--target-acc", type=float, default=None, metavar="X")
    p.add_argument("--hw", default=None, metavar="NAME", help="hardware model to price on")
    p.add_argument("--budget", default=None, metavar="METRIC=V", help="e.g. latency_ms=0.5x")
    p.add_argument("--n", type=int, default=1000, help="proposals sampled per target")
    p.add_argument("--top", type=int, default=5, metavar="K", help="proposals returned")
    p.add_argument("--verify", action="store_true", help="evaluate the top K for real")
    p.add_argument(
        "--verify-rounds",
        type=int,
        default=3,
        metavar="R",
        help="with --verify and a target: while the K verified configs nearest the target are "
        "not all within --tolerance, tell the ranker and verify K more, up to R rounds "
        "(1: verify once, the paper's flow)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        metavar="T",
        help="accuracy distance to the target that ends verification early (default 0.01)",
    )
    p.add_argument(
        "--checkpoint-only",
        action="store_true",
        help="rank with the checkpoint alone, not also with the evaluations stored since it "
        "was trained",
    )
    p = sub.add_parser(
        "baseline",
        help="search one design point with a baseline method, on Ray (resumable); "
        "--seed seeds the search, not the model",
    )
    _common(p)
    _ray_args(p)
    p.add_argument("method", metavar="NAME", help="haq, uniform, tpe or random")
    p.add_argument("--hw", default=None, metavar="H", help="hardware model the budget is priced on")
    p.add_argument("--budget", default=None, metavar="METRIC=V", help="e.g. latency_ms=0.5x")
    p.add_argument(
        "--evaluations",
        type=int,
        default=None,
        metavar="N",
        help="evaluations to spend (default: the preset's baselines.evaluations)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        metavar="K",
        help="configs asked at once, for parallel evaluators (default: haq 1, as HAQ; "
        "others one per evaluator)",
    )
    p = sub.add_parser("run", help="the experiment end to end: every method, every design point")
    _common(p)
    _ray_args(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted run (refused when there is none); stored work is reused",
    )
    p = sub.add_parser("report", help="rebuild report.md and its plots from the run's tables")
    _common(p)
    p = sub.add_parser("compare", help="one table across result directories")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="results/<experiment> directories")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p = sub.add_parser("bench", help="benchmarks that print measured times and ratios")
    _common(p)
    _ray_args(p)
    p.add_argument(
        "name",
        choices=["eval", "scaling", "generate"],
        help="eval: quantized vs FP32 forward; scaling: 1 vs 2 actors, Ray vs in-process; "
        "generate: 1000 proposals vs one evaluation",
    )
    p.add_argument("--repeats", type=int, default=5, help="eval: timed repetitions (median)")
    p.add_argument("--configs", type=int, default=24, help="scaling: configs per measurement")
    p.add_argument(
        "--output", default=None, metavar="PATH", help="also write the figures to this Parquet file"
    )
    return parser


def _experiment(args: argparse.Namespace):
    from aqgan_ray.settings import load_experiment

    if args.experiment is not None and args.config is not None:
        raise UserError("give either --experiment or --config, not both")
    return load_experiment(
        args.experiment,
        args.config,
        model=args.model,
        dataset=args.dataset,
        seed=args.seed,
        data_dir=args.data_dir,
    )


def _run_dir(args: argparse.Namespace, name: str) -> Path:
    """``DIR/<experiment>/``, created; refused with a clear message when it cannot be written."""
    path = Path(args.results) / name
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


def _prepare(args: argparse.Namespace, exp):
    from aqgan_ray.prepare import prepare

    cache = Path(args.cache_dir) if args.cache_dir else None
    return prepare(exp, cache, progress=True)


def _parse_config(args: argparse.Namespace, layer_names: Sequence[str], choices: Sequence[int]):
    from aqgan_ray.config import QuantConfig, parse_bits

    if args.uniform is not None:
        config = QuantConfig.uniform(layer_names, args.uniform)
    else:
        config = parse_bits(args.bits, layer_names)
    return config.validate(choices)


def cmd_prepare(args: argparse.Namespace) -> dict[str, Any]:
    exp = _experiment(args)
    out_dir = _run_dir(args, exp.name)  # fail before minutes of training
    prepared, splits = _prepare(args, exp)
    layers = [layer.to_dict() for layer in prepared.layers]
    (out_dir / "layers.json").write_text(json.dumps(layers, indent=1))
    result = {
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
    if not args.json:
        import pandas as pd

        table = pd.DataFrame(layers)[
            [
                "name",
                "kind",
                "in_channels",
                "out_channels",
                "kernel",
                "stride",
                "groups",
                "in_h",
                "out_h",
                "params",
                "macs",
            ]
        ]
        print(table.to_string(index=False))
        print(
            f"\n{exp.model.name} on {exp.data.name}: {len(layers)} quantizable layers, "
            f"{sum(r['params'] for r in layers):,} weights, {sum(r['macs'] for r in layers):,} MACs"
        )
        print(f"full precision: val {prepared.fp_val_acc:.4f}, test {prepared.fp_test_acc:.4f}")
        print(f"checkpoint: {prepared.checkpoint}")
    return result


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from aqgan_ray.cost import get_hw_model
    from aqgan_ray.evaluate import Evaluator

    # Check the config and hardware models against the architecture's layer table first, so a
    # typo fails at once rather than after minutes of training the base model.
    exp, static_layers = _static_layers(args)
    config = _parse_config(args, [layer.name for layer in static_layers], exp.quant.bit_choices)
    for name in args.hw:
        get_hw_model(name, static_layers, exp.quant.bit_choices)
    prepared, splits = _prepare(args, exp)
    if prepared.layer_names != config.layers:
        raise RuntimeError("the trained model's layer table differs from its architecture's")
    evaluator = Evaluator.from_splits(prepared, splits, compile=False)  # one config: no compile
    result = evaluator.evaluate(config, with_test=True)
    out = {
        "config_hash": config.hash,
        **config.to_dict(),
        "val_acc": result.val_acc,
        "test_acc": result.test_acc,
        "fp_val_acc": prepared.fp_val_acc,
        "fp_test_acc": prepared.fp_test_acc,
        "eval_s": result.eval_s,
        "cost": _costs(args.hw, prepared.layers, config, exp.quant.bit_choices),
    }
    if not args.json:
        print(
            f"config {config.hash}: val_acc {result.val_acc:.4f} "
            f"(float {prepared.fp_val_acc:.4f}), "
            f"test_acc {result.test_acc:.4f} (float {prepared.fp_test_acc:.4f}), "
            f"{result.eval_s:.2f} s"
        )
        print(_cost_text(out["cost"]))
    return out


def _static_layers(args: argparse.Namespace):
    """The layer table from the architecture alone: pricing a config needs no trained model."""
    from aqgan_ray.data import DATASET_SHAPES
    from aqgan_ray.layers import layer_table
    from aqgan_ray.models import build_model

    exp = _experiment(args)
    shape, classes = DATASET_SHAPES[exp.data.name]
    model = build_model(exp.model.name, classes, shape, exp.model.width)
    return exp, layer_table(model, shape)


def cmd_cost(args: argparse.Namespace) -> dict[str, Any]:
    exp, layers = _static_layers(args)
    config = _parse_config(args, [layer.name for layer in layers], exp.quant.bit_choices)
    cost = _costs(args.hw, layers, config, exp.quant.bit_choices)
    if not args.json:
        print(_cost_text(cost))
    return {"config_hash": config.hash, **config.to_dict(), "cost": cost}


def _costs(hw_names: Sequence[str], layers, config, choices) -> dict[str, Any]:
    """The contract's cost object, plus any ``--hw`` model it does not already hold."""
    import numpy as np

    from aqgan_ray.cost import config_costs, get_hw_model

    cost = config_costs(layers, config)
    for name in hw_names:
        model = get_hw_model(name, layers, choices)
        if name in cost:
            continue
        values = model.batch(layers, np.asarray([config.w_bits]), np.asarray([config.a_bits]))
        cost[name] = {metric: float(v[0]) for metric, v in values.items()}
    return cost


def _cost_text(cost: dict[str, Any]) -> str:
    lines = [f"size {cost['size_bytes'] / 1024:.1f} KiB, {cost['bitops'] / 1e9:.3f} GBitOps"]
    for hw, metrics in cost.items():
        if isinstance(metrics, dict):
            lines.append(f"{hw}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole experiment: prepare, collect, train AQGAN, every method on every design point
    and seed, then the search-cost tables and the report. Every stage is idempotent and every
    search checkpointed, so running it again (``--resume``) finishes an interrupted run without
    evaluating any stored config again."""
    from aqgan_ray import experiment
    from aqgan_ray.settings import as_dict

    exp = _experiment(args)
    run_dir = Path(args.results) / exp.name
    manifest = run_dir / "experiment.json"
    fingerprint = json.loads(json.dumps(experiment.experiment_fingerprint(as_dict(exp))))
    if manifest.is_file():
        stored = json.loads(manifest.read_text())
        if stored != fingerprint:
            differs = sorted(k for k in fingerprint if stored.get(k) != fingerprint[k]) or ["?"]
            raise UserError(
                f"{run_dir} holds a run of another experiment (its {differs[0]} settings "
                "differ); pass --results DIR for this one, or delete that directory"
            )
    elif args.resume:
        raise UserError(f"no run to resume in {run_dir}; start one without --resume")
    _, layers = _static_layers(args)
    planned = experiment.design_points(exp, layers)  # a bad design fails before anything slow
    with _evaluation_stack(args, exp) as stack:
        _write_json(manifest, fingerprint)
        collected = _collect_stage(stack, exp.collect.samples)
        loaded, trained = _aqgan_stage(stack, run_dir)
        results = _search_stage(stack, run_dir, planned, loaded)
        test_acc = _test_accuracies(stack, run_dir, results)
        store_rows = stack.service.store.rows()
    out = _write_comparison(exp, stack, run_dir, planned, results, test_acc, store_rows, loaded)
    out["trained"] = bool(trained)
    out["collect"] = collected
    if not args.json:
        _comparison_text(out)
    return out


def _write_json(path: Path, obj: Any) -> None:
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _aqgan_stage(stack: _Stack, run_dir: Path):
    """The trained AQGAN of this store, training it only if there is none (or it was trained on
    another setup), and verifying its fidelity if that had not finished."""
    from aqgan_ray import aqgan

    exp, store = stack.exp, stack.service.store
    names, choices = stack.prepared.layer_names, exp.quant.bit_choices
    path = run_dir / "aqgan.pt"
    trained: dict[str, Any] = {}
    try:
        loaded = aqgan.load_checkpoint(path, names, choices, aqgan.model_id(exp))
        current = (
            loaded.eval_key == store.eval_key
            and "train_s" in loaded.metrics
            and loaded.metrics.get("refine_rounds", 0) >= exp.aqgan.refine_rounds
        )
    except UserError:
        current = False
    if not current:
        trained = _train_stage(stack, exp.aqgan, run_dir)
        loaded = aqgan.load_checkpoint(path, names, choices, aqgan.model_id(exp))
    elif exp.aqgan.fidelity_targets and not (run_dir / "fidelity.parquet").is_file():
        from aqgan_ray.store import write_table

        rows = _fidelity(stack, loaded, exp.aqgan.fidelity_targets, exp.aqgan.fidelity_top)
        write_table(rows, run_dir / "fidelity.parquet")
    return loaded, trained


def _search_stage(stack: _Stack, run_dir: Path, planned, loaded) -> dict:
    """Every method on every design point it runs on; each search resumes from its checkpoint."""
    from tqdm import tqdm

    from aqgan_ray import experiment
    from aqgan_ray.search import run_search
    from aqgan_ray.select import AqganSearch
    from baselines import make

    exp, store = stack.exp, stack.service.store
    digest = experiment.file_digest(run_dir / "aqgan.pt")
    jobs = [
        (method, p)
        for method in experiment.METHODS
        for p in planned
        if experiment.runs_on(method, p, exp)
    ]
    results = {}
    for method, p in tqdm(jobs, desc="searches", unit="search"):
        folder = experiment.search_dir(run_dir, method, p)
        if method == "aqgan":
            ident = experiment.identity(method, p, store.eval_key, {"checkpoint": digest})
            experiment.discard_stale(folder, ident)
            proposer = AqganSearch(
                loaded, p.point, p.seed, exp.aqgan.proposals, exp.aqgan.verify_top
            )
            budget, batch = exp.aqgan.verify_top, exp.aqgan.verify_top
        else:
            ident = experiment.identity(method, p, store.eval_key)
            batch = 1 if method == "haq" else stack.workers
            proposer = make(
                method,
                p.point,
                p.seed,
                folder,
                stack.prepared.fp_val_acc,
                batch,
                exp.baselines.haq_warmup,
            )
            budget = exp.baselines.evaluations
            if method == "uniform":
                budget = len(exp.quant.bit_choices)
        results[(method, p)] = run_search(
            proposer, stack.service, p.point, budget, folder, ident, batch
        )
    return results


def _test_accuracies(stack: _Stack, run_dir: Path, results: dict) -> dict[str, float]:
    """Held-out test accuracy of every chosen config, measured once and kept in
    ``test_accuracy.parquet`` (searches never see it)."""
    from tqdm import tqdm

    from aqgan_ray.config import QuantConfig
    from aqgan_ray.evaluate import Evaluator
    from aqgan_ray.store import read_frame, write_table

    path = run_dir / "test_accuracy.parquet"
    known: dict[str, float] = {}
    if path.is_file():
        frame = read_frame(path)
        known = dict(zip(frame["config_hash"], frame["test_acc"], strict=True))
    chosen = {r.best["config_hash"]: r.best for r in results.values() if r.best is not None}
    missing = [best for key, best in chosen.items() if key not in known]
    if missing:
        # Compiling pays off over a handful of configs on a large test set (`bench eval`).
        compile_ = stack.exp.eval.compile and len(missing) > 4
        tester = Evaluator.from_splits(stack.prepared, stack.splits, compile=compile_)
        names = stack.prepared.layer_names
        for best in tqdm(missing, desc="test split", unit="config"):
            config = QuantConfig(names, tuple(best["w_bits"]), tuple(best["a_bits"]))
            known[config.hash] = tester.test_accuracy(config)
        write_table([{"config_hash": k, "test_acc": v} for k, v in sorted(known.items())], path)
    return known


def _write_comparison(exp, stack, run_dir, planned, results, test_acc, store_rows, loaded):
    """search_cost.parquet, traces.parquet, run.json and the report."""
    from aqgan_ray import experiment, report
    from aqgan_ray.store import read_frame, write_table

    fidelity_path = run_dir / "fidelity.parquet"
    fidelity = read_frame(fidelity_path).to_dict("records") if fidelity_path.is_file() else []
    refine_rows = _refine_log(run_dir, loaded.eval_key)
    one = experiment.one_time_cost(store_rows, fidelity, loaded.metrics["train_s"], refine_rows)
    rows = experiment.cost_rows(exp, results, test_acc, one)
    cost_path = write_table(rows, run_dir / "search_cost.parquet")
    traces_path = write_table(experiment.trace_rows(results), run_dir / "traces.parquet")
    served = sum(1 for method, _ in results if method == "aqgan")
    notes = []
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
    summary = {
        "experiment": exp.name,
        "model": exp.model.name,
        "dataset": exp.data.name,
        "fp_val_acc": stack.prepared.fp_val_acc,
        "fp_test_acc": stack.prepared.fp_test_acc,
        "design_points": len(planned),
        "one_time": {
            "collect_evaluations": one.collect_evaluations,
            "refine_evaluations": one.refine_evaluations,
            "fidelity_evaluations": one.fidelity_evaluations,
            "evaluations": one.evaluations,
            "eval_cpu_s": one.eval_cpu_s,
            "train_s": one.train_s,
            "design_points": served,
        },
        "notes": notes,
    }
    _write_json(run_dir / "run.json", summary)
    report_path = report.build(run_dir)
    return {
        "experiment": exp.name,
        "search_cost": str(cost_path),
        "traces": str(traces_path),
        "fidelity": str(fidelity_path) if fidelity else None,
        "report": str(report_path),
        "rows": rows,
        "one_time": summary["one_time"],
    }


def _comparison_text(out: dict[str, Any]) -> None:
    import pandas as pd

    from aqgan_ray.report import summary_table

    table = summary_table(pd.DataFrame(out["rows"]))
    print()
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    print(f"\nsearch cost: {out['search_cost']}\nreport: {out['report']}")


def cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    from aqgan_ray import report

    exp = _experiment(args)
    path = report.build(Path(args.results) / exp.name)
    if not args.json:
        print(f"report: {path}")
    return {"report": str(path)}


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    """One table across result directories (``results/<experiment>`` folders)."""
    import pandas as pd

    from aqgan_ray.report import summary_table
    from aqgan_ray.store import read_frame

    frames = []
    for folder in args.dirs:
        path = Path(folder) / "search_cost.parquet"
        if not path.is_file():
            raise UserError(
                f"{folder} holds no search_cost.parquet; give results/<experiment> directories "
                "of finished runs"
            )
        table = summary_table(read_frame(path)).reset_index()
        frames.append(table.assign(run=str(folder)))
    rows = pd.concat(frames, ignore_index=True)
    rows = rows[["run", *[c for c in rows.columns if c != "run"]]]
    if not args.json:
        print(rows.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return {"rows": json.loads(rows.to_json(orient="records"))}


def _open_store(args: argparse.Namespace, exp):
    """The run directory's evaluation store, read-only: refuses an incompatible schema before
    anything slow happens. Reopen it with the evaluation key once the model is prepared."""
    from aqgan_ray.store import EvaluationStore

    root = _run_dir(args, exp.name) / "evaluations"
    EvaluationStore(root, eval_key=None, warn=False)
    return root


@dataclass
class _Stack:
    """What every command that evaluates on Ray works with."""

    exp: Experiment
    prepared: Prepared
    splits: Splits
    service: EvaluationService
    cluster: dict[str, Any]
    quarantined: list[str]
    workers: int  # evaluators the pool will start


@contextlib.contextmanager
def _evaluation_stack(args: argparse.Namespace, exp) -> Iterator[_Stack]:
    """Store, Ray, base model, evaluators: checked in the order that fails fastest, so bad input
    never waits for training, and the actors start only if a config misses the store."""
    from aqgan_ray.evaluate import evaluation_key
    from aqgan_ray.pool import EvaluatorPool, PoolSpec, connect, plan_workers
    from aqgan_ray.service import EvaluationService
    from aqgan_ray.store import EvaluationStore

    root = _open_store(args, exp)
    spec = PoolSpec(args.workers, args.cpus_per_worker, args.gpus_per_worker)
    cluster = connect(args.address)
    workers = plan_workers(spec)
    prepared, splits = _prepare(args, exp)
    store = EvaluationStore(root, evaluation_key(prepared, splits.val_x, splits.val_y))
    quarantined = [str(p) for p in store.quarantine_unreadable()]
    train = (splits.train_x, splits.train_y) if exp.eval.finetune_steps else None

    def make_pool() -> EvaluatorPool:
        pool = EvaluatorPool(prepared, (splits.val_x, splits.val_y), train, spec)
        pool.worker_pids()  # every actor built and running this aqgan-ray version
        return pool

    service = EvaluationService(store, make_pool)
    try:
        with store:
            yield _Stack(exp, prepared, splits, service, cluster, quarantined, workers)
    finally:
        service.close()


def _collect_stage(stack: _Stack, samples: int, progress: bool = True) -> dict[str, Any]:
    from aqgan_ray.collect import collect
    from aqgan_ray.sampling import SamplerSpec

    exp, store = stack.exp, stack.service.store
    stats = collect(
        stack.service,
        stack.prepared.layer_names,
        exp.quant.bit_choices,
        samples,
        exp.seed,
        progress=progress,
        spec=SamplerSpec(round_size=exp.collect.round_size),
    )
    return {
        "requested": samples,
        "evaluated_now": stats.evaluated_now,
        "total": stats.total,
        "nodes": len(stats.node_ids),
        "node_ids": list(stats.node_ids),
        "cluster": stack.cluster,
        "workers": stack.service.workers,
        "replaced_workers": stats.replaced_workers,
        "wall_s": stats.wall_s,
        "evals_per_s": stats.evals_per_s,
        "eval_cpu_s": stats.eval_cpu_s,
        "store": str(store.root),
        "quarantined_parts": stack.quarantined,
        "val_acc_histogram": _histogram(
            [row["val_acc"] for row in store.rows()], stack.prepared.fp_val_acc
        ),
    }


def _collect_text(out: dict[str, Any]) -> None:
    print(
        f"store {out['store']}: {out['total']} distinct configs ({out['evaluated_now']} "
        f"evaluated now on {out['nodes']} node(s), {out['workers']} evaluator(s), "
        f"{out['evals_per_s']:.2f} evals/s)"
    )
    print("validation accuracy of the stored configs:")
    for row in out["val_acc_histogram"]:
        bar = "#" * min(60, row["configs"])
        print(f"  {row['from']:.2f}-{row['to']:.2f}  {row['configs']:5d}  {bar}")


def cmd_collect(args: argparse.Namespace) -> dict[str, Any]:
    exp = _experiment(args)
    samples = exp.collect.samples if args.samples is None else args.samples
    if samples < 0:
        raise UserError("--samples must be a non-negative number of configs")
    with _evaluation_stack(args, exp) as stack:
        out = _collect_stage(stack, samples)
    if not args.json:
        _collect_text(out)
    return out


def _checkpoint_path(args: argparse.Namespace, exp) -> Path:
    return Path(args.results) / exp.name / "aqgan.pt"


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import replace

    exp = _experiment(args)
    if args.tune_samples < 0 or args.fidelity_targets < 0 or args.top < 1:
        raise UserError("--tune-samples and --fidelity-targets must be >= 0, --top >= 1")
    if args.steps is not None and args.steps < 1:
        raise UserError("--steps must be at least 1")
    targets = args.refine_targets
    if (args.refine_rounds or 0) < 0 or (targets is not None and targets < 1):
        raise UserError("--refine-rounds must be >= 0 and --refine-targets >= 1")
    aqgan_spec = replace(
        exp.aqgan,
        tune_samples=args.tune_samples,
        fidelity_targets=args.fidelity_targets,
        fidelity_top=args.top,
        steps=exp.aqgan.steps if args.steps is None else args.steps,
        refine_rounds=exp.aqgan.refine_rounds if args.refine_rounds is None else args.refine_rounds,
        refine_targets=(
            exp.aqgan.refine_targets if args.refine_targets is None else args.refine_targets
        ),
    )
    with _evaluation_stack(args, exp) as stack:
        out = _train_stage(stack, aqgan_spec, Path(args.results) / exp.name)
    if not args.json:
        _train_text(out)
    return out


def _train_stage(stack: _Stack, spec_in, run_dir: Path) -> dict[str, Any]:
    """Train AQGAN on the store (optionally tuned), refine it actively (optionally), save the
    checkpoint, verify fidelity."""
    import time
    from dataclasses import replace

    from aqgan_ray import aqgan, gan

    exp = stack.exp
    spec = replace(gan.GanSpec(seed=exp.seed), steps=spec_in.steps)
    store = stack.service.store
    choices = exp.quant.bit_choices
    names = stack.prepared.layer_names
    # Refinement's configs enter training only through the rounds that evaluated them
    # (refine.py), so a train resumed mid-refinement, or run again, ends with the same model.
    from aqgan_ray.refine import training_rows

    data = aqgan.training_data(training_rows(store.rows(), set()), names, choices)
    start = time.perf_counter()
    tuned: dict[str, Any] = {}
    if spec_in.tune_samples:
        from aqgan_ray import tune

        tuned, metrics, state = tune.search(
            data, list(choices), spec, spec_in.tune_samples, run_dir / "tune", exp.seed
        )
        model, spec = aqgan.model_from_state(state, data.idx.shape[1], choices)
    else:
        from tqdm import tqdm

        with tqdm(total=spec.steps, desc="train AQGAN", unit="step") as bar:

            def progress(step: int, _model, metrics: dict[str, float]) -> None:
                bar.update(step - bar.n)
                bar.set_postfix(objective=f"{metrics['objective']:.4f}")

            model, metrics, _ = aqgan.fit(data, choices, spec, on_report=progress)
    model = aqgan.refit_predictor(model, data, choices, spec)
    waited = 0.0
    refine_log: list[dict[str, Any]] = []
    if spec_in.refine_rounds:
        current = aqgan.Loaded(model, spec, tuple(names), tuple(choices), store.eval_key, {})
        model, refine_log, waited = _refine_stage(stack, current, spec_in, run_dir)
    train_s = time.perf_counter() - start - waited  # evaluations are counted on their own
    # The configs its ranker was fitted on: the store can hold refinement configs of rounds
    # not asked for now, which training leaves out.
    trained_on = len(model.residual.x)
    # The old checkpoint's fidelity must not outlive it: `run` would take it as this one's.
    (run_dir / "fidelity.parquet").unlink(missing_ok=True)
    path = aqgan.save_checkpoint(
        run_dir / "aqgan.pt",
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
        },
        aqgan.model_id(exp),
    )
    loaded = aqgan.load_checkpoint(path, names, choices, aqgan.model_id(exp))
    fidelity = (
        _fidelity(stack, loaded, spec_in.fidelity_targets, spec_in.fidelity_top)
        if spec_in.fidelity_targets
        else []
    )
    errors = [abs(r["achieved_val_acc"] - r["target_acc"]) for r in fidelity]
    from aqgan_ray.refine import summary

    out = {
        "checkpoint": str(path),
        "store_configs": trained_on,
        "train_s": train_s,
        "tune": tuned,
        **{k: metrics[k] for k in ("heldout_mae", "cond_err", "objective")},
        "refine": summary(refine_log),
        "refine_evaluations": len(refine_log),
        "fidelity_mae": float(sum(errors) / len(errors)) if errors else None,
        "fidelity_max_err": max(errors) if errors else None,
        "fidelity_within_2pts": (sum(e <= 0.02 for e in errors) / len(errors) if errors else None),
        "fidelity_evaluations": len(fidelity),
        "fidelity": fidelity,
    }
    fidelity_path = path.with_name("fidelity.parquet")
    if fidelity:
        from aqgan_ray.store import write_table

        out["fidelity_table"] = str(write_table(fidelity, fidelity_path))
    else:
        fidelity_path.unlink(missing_ok=True)  # a table of another checkpoint would mislead
    return out


def _refine_log(run_dir: Path, eval_key: str) -> list[dict[str, Any]]:
    """Rounds of refinement already done on this store (``refine.parquet``)."""
    from aqgan_ray.store import read_frame

    path = run_dir / "refine.parquet"
    if not path.is_file():
        return []
    rows = read_frame(path).to_dict("records")
    return [row for row in rows if row.get("eval_key") == eval_key]


def _refine_stage(stack: _Stack, loaded, spec_in, run_dir: Path):
    """Active refinement through the evaluation service, one ``refine.parquet`` write per
    round; returns (model, log, seconds spent waiting on evaluations)."""
    import time

    from tqdm import tqdm

    from aqgan_ray import aqgan
    from aqgan_ray.refine import refine, summary, training_rows
    from aqgan_ray.store import write_table

    store = stack.service.store
    log = _refine_log(run_dir, store.eval_key)
    replayed = min(len({row["round"] for row in log}), spec_in.refine_rounds)
    bar = tqdm(total=spec_in.refine_rounds, initial=replayed,
               desc="refine AQGAN", unit="round")  # fmt: skip
    waited = 0.0

    def evaluate(configs):
        nonlocal waited
        start = time.perf_counter()
        outcomes = stack.service.evaluate(configs, source="refine")
        waited += time.perf_counter() - start
        return [(o.val_acc, o.cached) for o in outcomes]

    def on_round(r: int, rows, model) -> None:
        write_table([{**row, "eval_key": store.eval_key} for row in rows],
                    run_dir / "refine.parquet")  # fmt: skip
        bar.update(1)
        bar.set_postfix(mean_miss=f"{summary(rows)[-1]['mean_err']:.4f}", store=len(store))

    def data_of(kept: set[str]):
        rows = training_rows(store.rows(), kept)
        return aqgan.training_data(rows, loaded.layer_names, loaded.bit_choices)

    with bar:
        if replayed:  # refine() first replays their training (no evaluations)
            bar.set_postfix_str(f"replaying the training of {replayed} written round(s)")
        model = refine(
            loaded, spec_in.refine_rounds, spec_in.refine_targets, data_of, evaluate, log, on_round
        )
    # The rounds asked for: a longer earlier run's log stays on disk for a later `train`.
    return model, [row for row in log if int(row["round"]) < spec_in.refine_rounds], waited


def _train_text(out: dict[str, Any]) -> None:
    print(
        f"AQGAN trained on {out['store_configs']} configs in {out['train_s']:.1f} s -> "
        f"{out['checkpoint']}\nheld-out predictor error {out['heldout_mae']:.4f}, "
        f"generator miss {out['cond_err']:.4f}"
    )
    for r in out["fidelity"]:
        print(
            f"  target {r['target_acc']:.4f}  predicted {r['predicted_acc']:.4f}  "
            f"achieved {r['achieved_val_acc']:.4f}"
        )
    if out["fidelity"]:
        print(
            f"fidelity: mean |achieved - target| {out['fidelity_mae']:.4f}, "
            f"max {out['fidelity_max_err']:.4f}"
        )


def _fidelity(stack: _Stack, loaded, n_targets: int, top: int) -> list[dict[str, Any]]:
    """Verify the top proposals over a grid of targets spanning the store's accuracy range
    (its lowest 15% left out: targets near chance are not what anyone asks for)."""
    from tqdm import tqdm

    from aqgan_ray import aqgan
    from aqgan_ray.select import propose

    targets = aqgan.fidelity_targets(loaded.model.scaler.lo, loaded.model.scaler.hi, n_targets)
    rows = []
    for t_i, target in enumerate(tqdm(targets, desc="verify fidelity", unit="target")):
        proposals = propose(loaded, stack.prepared.layers, float(target), 256, top, seed=1000 + t_i)
        outcomes = stack.service.evaluate([p.config for p in proposals], source="aqgan")
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
    return rows


def cmd_generate(args: argparse.Namespace) -> dict[str, Any]:
    import time

    from aqgan_ray import aqgan
    from aqgan_ray.cost import get_hw_model, parse_budget
    from aqgan_ray.select import (
        Verified,
        best_under_budget,
        expected_miss,
        propose,
        verify_until_close,
    )

    if args.target_acc is not None and not 0.0 <= args.target_acc <= 1.0:
        raise UserError(f"--target-acc {args.target_acc} must be an accuracy in [0, 1]")
    if args.budget is not None and args.hw is None:
        raise UserError("--budget needs --hw NAME: the hardware model the budget is priced on")
    if args.target_acc is None and args.budget is None:
        raise UserError("give --target-acc X, or --hw H --budget METRIC=V, or both")
    if args.n < 1 or args.top < 1:
        raise UserError("--n and --top must be at least 1")
    if args.verify_rounds < 1:
        raise UserError("--verify-rounds must be at least 1")
    if not 0.0 <= args.tolerance <= 1.0:
        raise UserError(f"--tolerance {args.tolerance} must be an accuracy distance in [0, 1]")
    exp, layers = _static_layers(args)
    choices = exp.quant.bit_choices
    names = [layer.name for layer in layers]
    loaded = aqgan.load_checkpoint(_checkpoint_path(args, exp), names, choices, aqgan.model_id(exp))
    evidence, start = 0, time.perf_counter()
    if not args.checkpoint_only:
        loaded, evidence = aqgan.with_evidence(loaded, _stored_rows(args, exp))
    evidence_s = time.perf_counter() - start
    hw = get_hw_model(args.hw, layers, choices) if args.hw else None
    budget = parse_budget(args.budget, hw, layers, min(choices)) if args.budget else None
    start = time.perf_counter()
    if args.target_acc is None:
        proposals = best_under_budget(loaded, layers, args.n, args.top, exp.seed, hw, budget)
    else:
        proposals = propose(loaded, layers, args.target_acc, args.n, args.top, exp.seed, hw, budget)
    generate_s = time.perf_counter() - start
    checked: list[Verified] = []  # the returned proposals, verified
    every: list[Verified] = []  # every verification this call made, in order
    if args.verify and proposals:
        with _evaluation_stack(args, exp) as stack:
            if stack.service.store.eval_key != loaded.eval_key:
                raise UserError(
                    "the AQGAN checkpoint was trained on evaluations of another setup (seed, "
                    "preset or checkpoint); train it again for this one"
                )

            def evaluate(configs: list) -> list[tuple[float, bool]]:
                outcomes = stack.service.evaluate(configs, source="aqgan")
                return [(o.val_acc, o.cached) for o in outcomes]

            if args.target_acc is None:  # the most accurate that fit: verified once
                measured = evaluate([p.config for p in proposals])
                pairs = zip(proposals, measured, strict=True)
                checked = [Verified(p, acc, cached, 1) for p, (acc, cached) in pairs]
                every = checked
            else:
                checked, every = verify_until_close(
                    loaded, layers, args.target_acc, args.n, args.top, exp.seed, evaluate,
                    args.verify_rounds, args.tolerance, hw, budget,
                )  # fmt: skip
        proposals = [v.proposal for v in checked]
    fidelity = _verified_fidelity(_checkpoint_path(args, exp).with_name("fidelity.parquet"))
    out_props = []
    for i, p in enumerate(proposals):
        row = {
            "config_hash": p.config.hash,
            **p.config.to_dict(),
            "target_acc": p.target_acc,
            "predicted_acc": p.predicted_acc,
            "predicted_std": p.predicted_std,
            "expected_miss": expected_miss(fidelity, p.predicted_acc),
            "cost": _costs([args.hw] if args.hw else [], layers, p.config, choices),
            "within_budget": p.within_budget,
        }
        if checked:
            v = checked[i]
            row |= {"val_acc": v.val_acc, "cached": v.cached, "round": v.round}
        out_props.append(row)
    out: dict[str, Any] = {
        "proposals": out_props,
        "generate_s": generate_s,
        "sampled": args.n,
        "budget": None if budget is None else {"metric": budget.metric, "value": budget.value},
        "fidelity_verified": len(fidelity),  # what expected_miss is measured on
        "store_evidence": evidence,  # evaluations since training that the ranking also uses
        "store_evidence_s": evidence_s,  # reading the store and telling the ranker
    }
    if every:
        out["verify_evaluations"] = len(every)
        out["verify_rounds"] = max(v.round for v in every)
        out["verified"] = [
            {
                "config_hash": v.proposal.config.hash,
                "round": v.round,
                "predicted_acc": v.proposal.predicted_acc,
                "val_acc": v.val_acc,
                "cached": v.cached,
            }
            for v in every
        ]
    if not proposals:
        print("no proposal fits; raise the budget or lower the target", file=sys.stderr)
    if not args.json:
        for row in out_props:
            achieved = f"  achieved {row['val_acc']:.4f}" if "val_acc" in row else ""
            miss = row["expected_miss"]
            near = "" if miss is None else f" (misses near it: {miss:.3f})"
            print(
                f"{row['config_hash']}  predicted {row['predicted_acc']:.4f}{near}{achieved}  "
                f"w {row['w_bits']}  a {row['a_bits']}"
            )
        told = f", ranked with {evidence} evaluations stored since training" if evidence else ""
        print(
            f"{len(out_props)} proposals from {args.n} samples in {generate_s * 1000:.1f} ms{told}"
        )
        if every:
            rounds = out["verify_rounds"]
            print(f"verified {len(every)} configs in {rounds} round(s); the nearest shown")
    return out


def _stored_rows(args: argparse.Namespace, exp) -> list[dict[str, Any]]:
    """The run directory's stored evaluations, read-only; none when there is no store."""
    from aqgan_ray.store import EvaluationStore

    return EvaluationStore(_run_dir(args, exp.name) / "evaluations", None, warn=False).rows()


def _verified_fidelity(path: Path) -> list[tuple[float, float]]:
    """(target, achieved) of the checkpoint's verified fidelity proposals; none without the
    table (it is deleted whenever a new checkpoint is saved, and written once verified)."""
    if not path.is_file():
        return []
    from aqgan_ray.store import read_frame

    try:
        frame = read_frame(path)
    except UserError:  # damaged: proposals are still served, without this estimate
        return []
    return list(zip(frame["target_acc"].tolist(), frame["achieved_val_acc"].tolist(), strict=True))


def cmd_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """One baseline on one design point, resumable: run the same command again to continue."""
    from tqdm import tqdm

    from aqgan_ray.cost import get_hw_model, parse_budget
    from aqgan_ray.evaluate import Evaluator
    from aqgan_ray.experiment import Planned, search_dir
    from aqgan_ray.experiment import identity as search_identity
    from aqgan_ray.search import DesignPoint, run_search
    from baselines import BASELINES, make

    if args.method not in BASELINES:
        raise UserError(f"unknown baseline {args.method!r}; choose one of {', '.join(BASELINES)}")
    if args.hw is None or args.budget is None:
        raise UserError("a baseline searches under a budget: give --hw H --budget METRIC=V")
    # --seed seeds the search here; the model, splits and store stay the preset's, so searches
    # with several seeds share one evaluation store.
    search_seed, args = args.seed, argparse.Namespace(**{**vars(args), "seed": None})
    exp, layers = _static_layers(args)
    seed = exp.seed if search_seed is None else search_seed
    evaluations = exp.baselines.evaluations if args.evaluations is None else args.evaluations
    if evaluations < 1:
        raise UserError(f"--evaluations must be at least 1, got {evaluations}")
    if args.batch is not None and args.batch < 1:
        raise UserError(f"--batch must be at least 1, got {args.batch}")
    choices = exp.quant.bit_choices
    hw = get_hw_model(args.hw, layers, choices)
    budget = parse_budget(args.budget, hw, layers, min(choices))
    # The layer table from the architecture is the one `prepare` builds: one design point serves.
    point = DesignPoint(tuple(layers), tuple(choices), hw, budget)
    planned = Planned(hw.name, args.budget, point, seed)
    run_dir = search_dir(Path(args.results) / exp.name, args.method, planned)
    with _evaluation_stack(args, exp) as stack:
        prepared = stack.prepared
        batch = args.batch or (1 if args.method == "haq" else stack.workers)
        proposer = make(
            args.method,
            point,
            seed,
            run_dir,
            prepared.fp_val_acc,
            batch,
            exp.baselines.haq_warmup,
        )
        identity = search_identity(args.method, planned, stack.service.store.eval_key)
        with tqdm(total=evaluations, desc=args.method, unit="eval", file=sys.stderr) as bar:

            def on_result(row: dict[str, Any]) -> None:
                bar.update(1)
                bar.set_postfix(best=f"{row['best_so_far_val_acc']:.4f}", refresh=False)

            result = run_search(
                proposer, stack.service, point, evaluations, run_dir, identity, batch, on_result
            )
        store = stack.service.store
        if store.part_count() > 32:
            store.compact()
    best = result.best
    test_acc, cost = None, None
    if best is not None:
        config = point.config(best["w_bits"], best["a_bits"])
        tester = Evaluator.from_splits(prepared, stack.splits, compile=False)
        test_acc = tester.test_accuracy(config)
        cost = _costs([hw.name], layers, config, choices)
    trace = result.trace
    out: dict[str, Any] = {
        "method": args.method,
        "experiment": exp.name,
        "hw": hw.name,
        "budget": {"metric": budget.metric, "value": budget.value, "relative": budget.relative},
        "seed": seed,
        "evaluations": len(trace),
        "evaluations_requested": evaluations,
        "preset_evaluations": exp.baselines.evaluations,
        "resumed_from": result.resumed_from,
        "evaluated_now": result.evaluated_now,
        "cached": sum(row["cached"] for row in trace),
        "batch": batch,
        "search_s": result.search_s,
        "fp_val_acc": prepared.fp_val_acc,
        "fp_test_acc": prepared.fp_test_acc,
        "best": None
        if best is None
        else {
            "config_hash": best["config_hash"],
            "w_bits": best["w_bits"],
            "a_bits": best["a_bits"],
            "val_acc": best["val_acc"],
            "test_acc": test_acc,
            "cost": cost,
            "cost_value": best["cost"],  # the budget metric on --hw
            "within_budget": best["within_budget"],
            "index": best["index"],
        },
        "method_summary": proposer.summary(),
        "trace": str(run_dir / "trace.parquet"),
    }
    if not args.json:
        print(
            f"{args.method} on {hw.name}, {budget.metric} <= {budget.value:.6g}: "
            f"{len(trace)} evaluations ({result.evaluated_now} run now, "
            f"{out['cached']} from the store), {result.search_s:.1f} s"
        )
        if best is not None:
            print(
                f"best {best['config_hash']}: val {best['val_acc']:.4f}, test {test_acc:.4f}, "
                f"{budget.metric} {best['cost']:.6g}\n  w {best['w_bits']}\n  a {best['a_bits']}"
            )
        print(f"trace: {out['trace']}")
    return out


def _histogram(accs: Sequence[float], fp_acc: float, bins: int = 10) -> list[dict[str, Any]]:
    """Counts over [0, float accuracy]: does the store cover the range users will ask for?"""
    import numpy as np

    top = max([fp_acc, *accs]) if accs else fp_acc
    counts, edges = np.histogram(accs, bins=bins, range=(0.0, top))
    return [
        {"from": round(float(lo), 4), "to": round(float(hi), 4), "configs": int(c)}
        for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)
    ]


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    from aqgan_ray.bench import bench_eval, bench_scaling

    if args.repeats < 1:
        raise UserError("--repeats must be at least 1")
    if args.configs < 2:
        raise UserError("--configs must be at least 2")
    exp = _experiment(args)
    if args.name == "scaling":
        from aqgan_ray.pool import connect

        connect(args.address)
    prepared, splits = _prepare(args, exp)
    if args.name == "generate":
        from aqgan_ray import aqgan
        from aqgan_ray.bench import bench_generate

        loaded = aqgan.load_checkpoint(
            _checkpoint_path(args, exp),
            prepared.layer_names,
            exp.quant.bit_choices,
            aqgan.model_id(exp),
        )
        figures = bench_generate(loaded, prepared, splits, repeats=args.repeats)
    elif args.name == "scaling":
        figures = bench_scaling(prepared, splits, args.configs, args.address, args.cpus_per_worker)
    else:
        figures = bench_eval(prepared, splits, repeats=args.repeats)
    if args.output:
        from aqgan_ray.store import write_table

        write_table([figures], Path(args.output))
    if not args.json:
        for key, value in figures.items():
            print(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")
    return figures


COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "prepare": cmd_prepare,
    "evaluate": cmd_evaluate,
    "cost": cmd_cost,
    "collect": cmd_collect,
    "train": cmd_train,
    "generate": cmd_generate,
    "baseline": cmd_baseline,
    "run": cmd_run,
    "report": cmd_report,
    "compare": cmd_compare,
    "bench": cmd_bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stdout = sys.stdout
    # With --json, stdout carries the one JSON object only: anything a library prints there
    # (Ray forwards worker and raylet messages to the driver's stdout) goes to stderr instead.
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    ray = sys.modules.get("ray")
    caller_connected = ray is not None and ray.is_initialized()  # main() called from Python
    try:
        with quiet:
            try:
                result = COMMANDS[args.command](args)
            finally:
                if not caller_connected:
                    _release_ray()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; what was written so far is kept", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result), file=stdout)
    return 0


def _release_ray() -> None:
    """Leave Ray (stopping an embedded instance) while its log messages still go to stderr."""
    pool = sys.modules.get("aqgan_ray.pool")
    if pool is not None:
        pool.disconnect()


if __name__ == "__main__":
    sys.exit(main())
