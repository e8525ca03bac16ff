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
    p = sub.add_parser("generate", help="configs for a target accuracy and/or a hardware budget")
    _common(p)
    _ray_args(p)
    p.add_argument("--target-acc", type=float, default=None, metavar="X")
    p.add_argument("--hw", default=None, metavar="NAME", help="hardware model to price on")
    p.add_argument("--budget", default=None, metavar="METRIC=V", help="e.g. latency_ms=0.5x")
    p.add_argument("--n", type=int, default=1000, help="proposals sampled per target")
    p.add_argument("--top", type=int, default=5, metavar="K", help="proposals returned")
    p.add_argument("--verify", action="store_true", help="evaluate the top K for real")
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
    p = sub.add_parser("run", help="the experiment end to end")
    _common(p)
    _ray_args(p)
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
    """What the pipeline runs today: prepare, collect the evaluation store on Ray, then every
    uniform bitwidth through the same evaluators and store, priced and scored on the test split.

    AQGAN, the baselines and the comparison join this command as they land (issues 4-6).
    """
    import pandas as pd
    from tqdm import tqdm

    from aqgan_ray.config import QuantConfig
    from aqgan_ray.cost import config_costs
    from aqgan_ray.evaluate import Evaluator

    exp = _experiment(args)
    with _evaluation_stack(args, exp) as stack:
        collected = _collect_stage(stack, exp.collect.samples)
        prepared, splits = stack.prepared, stack.splits
        configs = [
            QuantConfig.uniform(prepared.layer_names, bits)
            for bits in sorted(exp.quant.bit_choices, reverse=True)
        ]
        searched = stack.service.evaluate(configs, source="uniform")
    # Final test accuracy of the uniform configs, in this process: searches never see it.
    tester = Evaluator.from_splits(prepared, splits, compile=False)
    rows = []
    for config, outcome in zip(
        tqdm(configs, desc="test split", unit="config"), searched, strict=True
    ):
        cost = config_costs(prepared.layers, config)
        rows.append(
            {
                "bits": config.w_bits[0],
                "val_acc": outcome.val_acc,
                "test_acc": tester.test_accuracy(config),
                "size_kib": cost["size_bytes"] / 1024,
                "gbitops": cost["bitops"] / 1e9,
                **{
                    f"{hw}_latency_ms": cost[hw]["latency_ms"]
                    for hw in ("bitfusion", "bismo-edge", "bismo-cloud")
                },
                "bitfusion_energy_mj": cost["bitfusion"]["energy_mj"],
            }
        )
    out_dir = Path(args.results) / exp.name
    table = pd.DataFrame(rows)
    (out_dir / "uniform.json").write_text(table.to_json(orient="records", indent=1))
    if not args.json:
        _collect_text(collected)
        print(
            f"\n{exp.model.name} on {exp.data.name}, float: val {prepared.fp_val_acc:.4f}, "
            f"test {prepared.fp_test_acc:.4f}"
        )
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print(f"\nwritten: {out_dir / 'uniform.json'}, {collected['store']}")
    return {
        "experiment": exp.name,
        "fp_val_acc": prepared.fp_val_acc,
        "fp_test_acc": prepared.fp_test_acc,
        "collect": collected,
        "uniform": rows,
        "report": {"uniform": str(out_dir / "uniform.json"), "evaluations": collected["store"]},
    }


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

    exp, store = stack.exp, stack.service.store
    stats = collect(
        stack.service,
        stack.prepared.layer_names,
        exp.quant.bit_choices,
        samples,
        exp.seed,
        progress=progress,
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
    import time
    from dataclasses import replace

    from aqgan_ray import aqgan, gan

    exp = _experiment(args)
    if args.tune_samples < 0 or args.fidelity_targets < 0 or args.top < 1:
        raise UserError("--tune-samples and --fidelity-targets must be >= 0, --top >= 1")
    if args.steps is not None and args.steps < 1:
        raise UserError("--steps must be at least 1")
    spec = gan.GanSpec(seed=exp.seed)
    if args.steps is not None:
        spec = replace(spec, steps=args.steps)
    with _evaluation_stack(args, exp) as stack:
        store = stack.service.store
        choices = exp.quant.bit_choices
        data = aqgan.training_data(store.rows(), stack.prepared.layer_names, choices)
        start = time.perf_counter()
        tuned: dict[str, Any] = {}
        if args.tune_samples:
            from aqgan_ray import tune

            storage = Path(args.results) / exp.name / "tune"
            tuned, metrics, state = tune.search(
                data, list(choices), spec, args.tune_samples, storage, exp.seed
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
        train_s = time.perf_counter() - start
        key = store.eval_key
        path = aqgan.save_checkpoint(
            _checkpoint_path(args, exp),
            model,
            spec,
            stack.prepared.layer_names,
            choices,
            key,
            metrics,
            aqgan.model_id(exp),
        )
        loaded = aqgan.load_checkpoint(
            path, stack.prepared.layer_names, choices, aqgan.model_id(exp)
        )
        fidelity = _fidelity(args, stack, loaded) if args.fidelity_targets else []
    errors = [abs(r["achieved_val_acc"] - r["target_acc"]) for r in fidelity]
    out = {
        "checkpoint": str(path),
        "store_configs": len(data.acc),
        "train_s": train_s,
        "tune": tuned,
        **{k: metrics[k] for k in ("heldout_mae", "cond_err", "objective")},
        "fidelity_mae": float(sum(errors) / len(errors)) if errors else None,
        "fidelity_max_err": max(errors) if errors else None,
        "fidelity_evaluations": len(fidelity),
        "fidelity": fidelity,
    }
    if fidelity:
        from aqgan_ray.store import write_table

        out["fidelity_table"] = str(write_table(fidelity, path.with_name("fidelity.parquet")))
    if not args.json:
        print(
            f"AQGAN trained on {len(data.acc)} configs in {train_s:.1f} s -> {path}\n"
            f"held-out predictor error {metrics['heldout_mae']:.4f}, "
            f"generator miss {metrics['cond_err']:.4f}"
        )
        for r in fidelity:
            print(
                f"  target {r['target_acc']:.4f}  predicted {r['predicted_acc']:.4f}  "
                f"achieved {r['achieved_val_acc']:.4f}"
            )
        if errors:
            mae = out["fidelity_mae"]
            print(f"fidelity: mean |achieved - target| {mae:.4f}, max {max(errors):.4f}")
    return out


def _fidelity(args: argparse.Namespace, stack: _Stack, loaded) -> list[dict[str, Any]]:
    """Verify the top proposals over a grid of targets spanning the store's accuracy range
    (its lowest 15% left out: targets near chance are not what anyone asks for)."""
    import numpy as np
    from tqdm import tqdm

    from aqgan_ray.select import propose

    lo, hi = loaded.model.scaler.lo, loaded.model.scaler.hi
    targets = np.linspace(lo + 0.15 * (hi - lo), hi, args.fidelity_targets)
    rows = []
    for t_i, target in enumerate(tqdm(targets, desc="verify fidelity", unit="target")):
        proposals = propose(
            loaded, stack.prepared.layers, float(target), 256, args.top, seed=1000 + t_i
        )
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
    from aqgan_ray.select import best_under_budget, propose

    if args.target_acc is not None and not 0.0 <= args.target_acc <= 1.0:
        raise UserError(f"--target-acc {args.target_acc} must be an accuracy in [0, 1]")
    if args.budget is not None and args.hw is None:
        raise UserError("--budget needs --hw NAME: the hardware model the budget is priced on")
    if args.target_acc is None and args.budget is None:
        raise UserError("give --target-acc X, or --hw H --budget METRIC=V, or both")
    if args.n < 1 or args.top < 1:
        raise UserError("--n and --top must be at least 1")
    exp, layers = _static_layers(args)
    choices = exp.quant.bit_choices
    names = [layer.name for layer in layers]
    loaded = aqgan.load_checkpoint(_checkpoint_path(args, exp), names, choices, aqgan.model_id(exp))
    hw = get_hw_model(args.hw, layers, choices) if args.hw else None
    budget = parse_budget(args.budget, hw, layers, min(choices)) if args.budget else None
    start = time.perf_counter()
    if args.target_acc is None:
        proposals = best_under_budget(loaded, layers, args.n, args.top, exp.seed, hw, budget)
    else:
        proposals = propose(loaded, layers, args.target_acc, args.n, args.top, exp.seed, hw, budget)
    generate_s = time.perf_counter() - start
    out_props = []
    for p in proposals:
        out_props.append(
            {
                "config_hash": p.config.hash,
                **p.config.to_dict(),
                "target_acc": p.target_acc,
                "predicted_acc": p.predicted_acc,
                "predicted_std": p.predicted_std,
                "cost": _costs([args.hw] if args.hw else [], layers, p.config, choices),
                "within_budget": p.within_budget,
            }
        )
    out: dict[str, Any] = {
        "proposals": out_props,
        "generate_s": generate_s,
        "sampled": args.n,
        "budget": None if budget is None else {"metric": budget.metric, "value": budget.value},
    }
    if args.verify and proposals:
        with _evaluation_stack(args, exp) as stack:
            if stack.service.store.eval_key != loaded.eval_key:
                raise UserError(
                    "the AQGAN checkpoint was trained on evaluations of another setup (seed, "
                    "preset or checkpoint); train it again for this one"
                )
            outcomes = stack.service.evaluate([p.config for p in proposals], source="aqgan")
        for row, o in zip(out_props, outcomes, strict=True):
            row["val_acc"], row["cached"] = o.val_acc, o.cached
        out["verify_evaluations"] = len(outcomes)
    if not proposals:
        print("no proposal fits; raise the budget or lower the target", file=sys.stderr)
    if not args.json:
        for row in out_props:
            achieved = f"  achieved {row['val_acc']:.4f}" if "val_acc" in row else ""
            print(
                f"{row['config_hash']}  predicted {row['predicted_acc']:.4f}{achieved}  "
                f"w {row['w_bits']}  a {row['a_bits']}"
            )
        print(f"{len(out_props)} proposals from {args.n} samples in {generate_s * 1000:.1f} ms")
    return out


def cmd_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """One baseline on one design point, resumable: run the same command again to continue."""
    import re

    from tqdm import tqdm

    from aqgan_ray.cost import get_hw_model, parse_budget
    from aqgan_ray.evaluate import Evaluator
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
    slug = re.sub(r"[^A-Za-z0-9.=_-]+", "_", f"{hw.name}-{budget.metric}={budget.value:.6g}")
    run_dir = Path(args.results) / exp.name / "searches" / args.method / f"{slug}-seed{seed}"
    with _evaluation_stack(args, exp) as stack:
        prepared = stack.prepared
        point = DesignPoint(tuple(prepared.layers), tuple(choices), hw, budget)
        batch = args.batch or (1 if args.method == "haq" else stack.workers)
        proposer = make(args.method, point, seed, run_dir, prepared.fp_val_acc, batch)
        identity = {
            "method": args.method,
            "hw": hw.name,
            "metric": budget.metric,
            "budget": budget.value,
            "seed": seed,
            "eval_key": stack.service.store.eval_key,
            "layers": list(prepared.layer_names),
            "bit_choices": list(choices),
        }
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
