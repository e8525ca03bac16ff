"""The ``aqgan-ray`` command line (see shared/CONTRACT.md and docs/cli.md): it parses arguments,
calls the Python API (``aqgan_ray.Session``, ``aqgan_ray.run``) and prints what it returns.

Conventions: ``--json`` prints exactly one JSON object on stdout while progress bars and logs go
to stderr; bad input exits 2 with one ``error: ...`` line and no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from aqgan_ray.errors import PoolFailure, UserError

if TYPE_CHECKING:  # the heavy modules load only in the commands that use them
    from aqgan_ray.session import Session
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
    which.add_argument(
        "--uniform", type=int, metavar="B", help="every layer at B bits (but pinned ones: 8)"
    )
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
        help="join a Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: $RAY_ADDRESS if "
        "set, else an embedded local Ray)",
    )
    g.add_argument(
        "--workers", type=int, default=None, metavar="K", help="evaluator actors (default: fill)"
    )
    g.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, as Ctrl-C raises KeyboardInterrupt: the stack
    unwinds through every ``finally`` (buffered store rows, checkpoints) before the exit. A
    KeyboardInterrupt because Ray's waits turn one raised inside them into a plain
    KeyboardInterrupt (anything else into a SystemError): ``_sigterm`` says which it was."""


_sigterm = threading.Event()


def _terminate(signum: int, frame: object) -> NoReturn:
    # A second SIGTERM must not cut short the unwinding (a store flushing its rows) it started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _sigterm.set()
    raise Terminated


@contextlib.contextmanager
def _sigterm_unwinds():
    """SIGTERM raises ``Terminated`` for the command's duration; the previous handler is put
    back after. Signal handlers can only be set in the main thread: elsewhere, nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _sigterm.clear()
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:  # None: a handler set outside Python, which cannot be put back; the default then
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


# Every numeric option's accepted values, checked before a command starts: nan, --workers 0 or
# --cpus-per-worker 1e-9 fail with one line instead of deep inside Ray. dest -> (low, high,
# zero also allowed, why); None leaves a side open. --target-acc and --tolerance have their own
# checks in cmd_generate, --seed its own in _check_options.
_OPTION_LIMITS: dict[str, tuple[float, int | None, bool, str]] = {
    "workers": (1, None, False, ""),
    # settings.MIN_CPUS/GPUS_PER_WORKER, as the pool checks them (a test keeps them equal; the
    # CLI imports no settings, hence torch, before a command runs).
    "cpus_per_worker": (0.1, None, False, "at most 10 evaluators per CPU"),
    "gpus_per_worker": (0.01, None, True, "0: CPU only; at most 100 per GPU"),
    "samples": (0, None, False, ""),
    "tune_samples": (0, None, False, ""),
    "steps": (1, None, False, ""),
    "fidelity_targets": (0, None, False, ""),
    "top": (1, None, False, ""),
    "refine_rounds": (0, None, False, ""),
    "refine_targets": (1, None, False, ""),
    "n": (1, 1_000_000, False, "proposals are held in memory at once"),
    "verify_rounds": (1, None, False, ""),
    "evaluations": (1, None, False, ""),
    "batch": (1, None, False, ""),
    "repeats": (1, None, False, ""),
    "configs": (2, None, False, ""),
}


def _check_options(args: argparse.Namespace) -> None:
    """Refuse an option value outside ``_OPTION_LIMITS`` (or a seed numpy cannot take)."""
    for dest, (low, high, zero_ok, why) in _OPTION_LIMITS.items():
        value = getattr(args, dest, None)
        if value is None or (zero_ok and value == 0):
            continue
        if math.isfinite(value) and value >= low and (high is None or value <= high):
            continue
        bounds = f"at least {low:g}" if high is None else f"within {low:g}..{high:d}"
        bounds += " (non-negative)" if low == 0 and high is None else ""
        bounds = f"0 or {bounds}" if zero_ok else bounds
        finite = "" if math.isfinite(value) else "a finite number "
        reason = f" ({why})" if why else ""
        option = "--" + dest.replace("_", "-")
        raise UserError(f"{option} must be {finite}{bounds}, not {value:g}{reason}")
    if getattr(args, "seed", None) is not None:
        from aqgan_ray.settings import MAX_SEED

        if not 0 <= args.seed <= MAX_SEED:
            raise UserError(f"--seed must be an integer within 0..{MAX_SEED}, not {args.seed}")


def build_parser() -> argparse.ArgumentParser:
    from baselines import BASELINES  # the registry of methods: cheap, it imports none of them

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
        "--seed S seeds the search in S's folder and store (as run --seeds), not the model",
    )
    _common(p)
    _ray_args(p)
    p.add_argument("method", metavar="NAME", help=", ".join(BASELINES))
    p.add_argument("--hw", default=None, metavar="H", help="hardware model the budget is priced on")
    p.add_argument("--budget", default=None, metavar="METRIC=V", help="e.g. latency_ms=0.5x")
    p.add_argument(
        "--evaluations",
        type=int,
        default=None,
        metavar="N",
        help="evaluations to spend (default: the preset's baselines.evaluations; uniform: at "
        "most one per bit choice, it stops when done; ilp: baselines.ilp_evaluations, the N "
        "best solutions verified)",
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
    p.add_argument(
        "--seeds",
        metavar="S,S,...",
        help="repeat collection, AQGAN and every search per seed, each in its own folder "
        "(default: the preset's [design] seeds)",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="check the design and print the evaluations each method may spend, then stop "
        "(no data, no training, no Ray)",
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
        choices=["eval", "scaling", "generate", "costs", "tuning", "sensitivity"],
        help="eval: quantized vs FP32 forward; scaling: 1 vs 2 actors, Ray vs in-process; "
        "generate: 1000 proposals vs one evaluation; costs: a cost model against a simulator's "
        "table keyed by layer shape; tuning: AQGAN's hardware tuning against its variants, the "
        "paper's flow, store-best and uniform at every design point of a trained run; "
        "sensitivity: the ILP's choice at every design point for each Hutchinson probe count "
        "and seed, unresolved traces at their standard error or at zero",
    )
    p.add_argument(
        "--table",
        default=None,
        metavar="PATH",
        help="costs: the table (default: APQ's Bit Fusion simulator table, shipped)",
    )
    p.add_argument("--hw", default="bitfusion", metavar="H", help="costs: the model to compare")
    p.add_argument(
        "--refit", action="store_true", help="costs: fit Bit Fusion's constants to this table first"
    )
    p.add_argument(
        "--hold-out",
        default=None,
        metavar="COLUMN=V",
        help="costs: hold out a family of shapes (e.g. input_size=28) instead of a random quarter",
    )
    p.add_argument("--repeats", type=int, default=5, help="eval: timed repetitions (median)")
    p.add_argument("--configs", type=int, default=24, help="scaling: configs per measurement")
    p.add_argument(
        "--output", default=None, metavar="PATH", help="also write the figures to this Parquet file"
    )
    return parser


def _experiment(args: argparse.Namespace, seed: bool = True) -> Experiment:
    from aqgan_ray.settings import load_experiment

    return load_experiment(
        args.experiment,
        args.config,
        model=args.model,
        dataset=args.dataset,
        seed=args.seed if seed else None,
        data_dir=args.data_dir,
    )


def _session(args: argparse.Namespace, exp: Experiment) -> Session:
    from aqgan_ray.session import Session

    ray = {}
    if hasattr(args, "address"):
        ray = {
            "address": args.address,
            "workers": args.workers,
            "cpus_per_worker": args.cpus_per_worker,
            "gpus_per_worker": args.gpus_per_worker,
        }
    return Session(exp, args.results, cache_dir=args.cache_dir, **ray)


def _config(args: argparse.Namespace, s: Session):
    from aqgan_ray.config import QuantConfig, parse_bits

    if args.uniform is not None:  # "4-bit" in HAQ's space: the first and last layers at 8
        config = QuantConfig.uniform(s.layer_names, args.uniform)
        return config.pinned() if s.experiment.quant.keep_first_last else config
    return parse_bits(args.bits, s.layer_names)


def cmd_prepare(args: argparse.Namespace) -> dict[str, Any]:
    exp = _experiment(args)
    with _session(args, exp) as s:
        out = s.prepare()
    if not args.json:
        import pandas as pd

        columns = ["name", "kind", "in_channels", "out_channels", "kernel", "stride", "groups",
                   "in_h", "out_h", "params", "macs"]  # fmt: skip
        layers = out["layers"]
        print(pd.DataFrame(layers)[columns].to_string(index=False))
        print(
            f"\n{out['model']} on {out['dataset']}: {len(layers)} quantizable layers, "
            f"{sum(r['params'] for r in layers):,} weights, {sum(r['macs'] for r in layers):,} MACs"
        )
        print(f"full precision: val {out['fp_val_acc']:.4f}, test {out['fp_test_acc']:.4f}")
        print(f"checkpoint: {out['checkpoint']}")
    return out


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    exp = _experiment(args)
    with _session(args, exp) as s:
        out = s.evaluate(_config(args, s), hw=args.hw)
    if not args.json:
        print(
            f"config {out['config_hash']}: val_acc {out['val_acc']:.4f} "
            f"(float {out['fp_val_acc']:.4f}), "
            f"test_acc {out['test_acc']:.4f} (float {out['fp_test_acc']:.4f}), "
            f"{out['eval_s']:.2f} s"
        )
        print(_cost_text(out["cost"]))
    return out


def cmd_cost(args: argparse.Namespace) -> dict[str, Any]:
    exp = _experiment(args)
    with _session(args, exp) as s:
        config = _config(args, s)
        cost = s.cost(config, hw=args.hw)
    if not args.json:
        print(_cost_text(cost))
    return {"config_hash": config.hash, **config.to_dict(), "cost": cost}


def _cost_text(cost: dict[str, Any]) -> str:
    lines = [f"size {cost['size_bytes'] / 1024:.1f} KiB, {cost['bitops'] / 1e9:.3f} GBitOps"]
    for hw, metrics in cost.items():
        if isinstance(metrics, dict):
            lines.append(f"{hw}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return "\n".join(lines)


def cmd_collect(args: argparse.Namespace) -> dict[str, Any]:
    exp = _experiment(args)
    with _session(args, exp) as s:
        out = s.collect(args.samples)
    if not args.json:
        print(
            f"store {out['store']}: {out['total']} distinct configs ({out['evaluated_now']} "
            f"evaluated now on {out['nodes']} node(s), {out['workers']} evaluator(s), "
            f"{out['evals_per_s']:.2f} evals/s)"
        )
        print("validation accuracy of the stored configs:")
        for row in out["val_acc_histogram"]:
            bar = "#" * min(60, row["configs"])
            print(f"  {row['from']:.2f}-{row['to']:.2f}  {row['configs']:5d}  {bar}")
    return out


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    exp = _experiment(args)
    with _session(args, exp) as s:
        out = s.train_aqgan(
            steps=args.steps,
            tune_samples=args.tune_samples,
            fidelity_targets=args.fidelity_targets,
            fidelity_top=args.top,
            refine_rounds=args.refine_rounds,
            refine_targets=args.refine_targets,
        ).training
    if not args.json:
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
    return out


def cmd_generate(args: argparse.Namespace) -> dict[str, Any]:
    if args.target_acc is not None and not 0.0 <= args.target_acc <= 1.0:
        raise UserError(f"--target-acc {args.target_acc} must be an accuracy in [0, 1]")
    if args.budget is not None and args.hw is None:
        raise UserError("--budget needs --hw NAME: the hardware model the budget is priced on")
    if args.target_acc is None and args.budget is None:
        raise UserError("give --target-acc X, or --hw H --budget METRIC=V, or both")
    if not 0.0 <= args.tolerance <= 1.0:
        raise UserError(f"--tolerance {args.tolerance} must be an accuracy distance in [0, 1]")
    exp = _experiment(args)
    ask = {"target_acc": args.target_acc, "hw": args.hw, "budget": args.budget, "n": args.n,
           "top": args.top}  # fmt: skip
    with _session(args, exp) as s:
        gen = s.generator(checkpoint_only=args.checkpoint_only)
        query = gen.query(**ask)
        start = time.perf_counter()
        proposals = gen.ask(query)
        generate_s = time.perf_counter() - start
        checked, every = [], []  # the returned proposals verified; every verification made
        test: dict[str, float] = {}  # their held-out accuracy, measured after the choice
        if args.verify and proposals:
            verified = s.verify(gen, query=query, rounds=args.verify_rounds,
                                tolerance=args.tolerance)  # fmt: skip
            checked, every, test = verified.returned, verified.every, verified.test_acc
            proposals = [v.proposal for v in checked]
        out_props = [
            {
                **p.to_dict(),
                "expected_miss": gen.expected_miss(p.predicted_acc),
                "cost": s.cost(p.config, hw=[args.hw] if args.hw else []),
                **(checked[i].to_dict() if checked else {}),
                **({"test_acc": test[p.config.hash]} if p.config.hash in test else {}),
            }
            for i, p in enumerate(proposals)
        ]
    budget = query.budget
    out: dict[str, Any] = {
        "proposals": out_props,
        "generate_s": generate_s,
        "sampled": args.n,
        "budget": None if budget is None else {"metric": budget.metric, "value": budget.value},
        "fidelity_verified": len(gen.fidelity),  # what expected_miss is measured on
        "store_evidence": gen.evidence,  # evaluations since training that the ranking also uses
        "store_evidence_s": gen.evidence_s,  # reading the store and telling the ranker
    }
    if every:
        out["verify_evaluations"] = len(every)
        out["verify_rounds"] = max(v.round for v in every)
        out["verified"] = [
            {"config_hash": v.proposal.config.hash, "predicted_acc": v.proposal.predicted_acc,
             **v.to_dict()}
            for v in every
        ]  # fmt: skip
    if not proposals:
        print("no proposal fits; raise the budget or lower the target", file=sys.stderr)
    if not args.json:
        for row in out_props:
            achieved = (
                f"  achieved val {row['val_acc']:.4f} test {row['test_acc']:.4f}"
                if "val_acc" in row
                else ""
            )
            miss = row["expected_miss"]
            near = "" if miss is None else f" (misses near it: {miss:.3f})"
            tuned = "" if row["target_acc"] is not None else f"  [{row['origin']}]"
            print(
                f"{row['config_hash']}  predicted {row['predicted_acc']:.4f}{near}{achieved}"
                f"{tuned}  w {row['w_bits']}  a {row['a_bits']}"
            )
        told = f", ranked with {gen.evidence} evaluations stored since training"
        print(
            f"{len(out_props)} proposals from {args.n} samples in {generate_s * 1000:.1f} ms"
            + (told if gen.evidence else "")
        )
        if every:
            rounds = out["verify_rounds"]
            print(f"verified {len(every)} configs in {rounds} round(s); the nearest shown")
    return out


def cmd_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """One baseline on one design point, resumable: run the same command again to continue."""
    # --seed seeds the search here (in that seed's folder and store, as `run --seeds`); the
    # model and its splits stay the preset's.
    exp = _experiment(args, seed=False)
    with _session(args, exp) as s:
        found = s.search(args.method, args.hw, args.budget, args.evaluations, args.seed,
                         args.batch)  # fmt: skip
    out, best, budget = found.to_dict(), found.best, found.budget
    if not args.json:
        print(
            f"{found.method} on {found.hw}, {budget.metric} <= {budget.value:.6g}: "
            f"{out['evaluations']} evaluations ({out['evaluated_now']} run now, "
            f"{out['cached']} from the store), {out['search_s']:.1f} s"
        )
        if best is not None:
            print(
                f"best {best['config_hash']}: val {best['val_acc']:.4f}, "
                f"test {best['test_acc']:.4f}, {budget.metric} {best['cost_value']:.6g}\n"
                f"  w {best['w_bits']}\n  a {best['a_bits']}"
            )
        summary = out["method_summary"]
        if "sensitivity_s" in summary:
            print(
                f"sensitivity pass {summary['sensitivity_s']:.1f} s, as "
                f"{summary['sensitivity_evaluations']:.1f} evaluations (once per seed, kept in "
                f"sensitivity.json); integer program {summary['solve_s']:.2f} s"
            )
        print(f"trace: {out['trace']}")
    return out


def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole experiment (``aqgan_ray.run``); ``--resume`` finishes an interrupted one."""
    from aqgan_ray.experiment.runner import run

    exp = _experiment(args)
    seeds = None
    if args.seeds is not None:
        try:
            seeds = [int(part) for part in args.seeds.split(",")]
        except ValueError:
            msg = f"--seeds {args.seeds!r} is not a comma-separated list of integers"
            raise UserError(msg) from None
    if args.plan:
        return _print_plan(exp, args, seeds)
    result = run(
        exp,
        args.results,
        resume=args.resume,
        seeds=seeds,
        address=args.address,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        cache_dir=args.cache_dir,
    )
    out = result.to_dict()
    if not args.json:
        from aqgan_ray.atomic import read_json
        from aqgan_ray.experiment.report import readable_summary, summary_table

        chance = read_json(result.run_dir / "run.json").get("chance_acc")
        table = readable_summary(summary_table(result.search_cost, chance))
        print("\nOn the design points every method ran on (report.md has the rest):")
        print(table.to_string(float_format=lambda v: f"{v:.4g}"))
        print(f"\nsearch cost: {out['search_cost']}\nreport: {out['report']}")
    return out


def _print_plan(exp, args: argparse.Namespace, seeds) -> dict[str, Any]:
    from aqgan_ray.experiment.plan import plan

    found = plan(exp, args.results, seeds)
    out = found.to_dict()
    if not args.json:
        print(f"{exp.name}: {len(found.points)} design point(s) x {len(found.seeds)} seed(s)")
        for point in found.points:
            merged = f" (with {', '.join(point['merged'])})" if point["merged"] else ""
            print(f"  {point['hw']} {point['budget']}{merged}: {', '.join(point['methods'])}")
        print(f"at most {found.one_time} one-time evaluations per seed (AQGAN's store, "
              "refinement, fidelity), then per method, every point and seed:")  # fmt: skip
        for method, n in found.evaluations.items():
            print(f"  {method:<15} {n:>8}")
        print(f"total: at most {found.total} evaluations")
        if found.eval_s is None:
            print("no store of this experiment in --results yet: no time estimate "
                  "(`collect` measures one)")  # fmt: skip
        else:
            print(f"at {found.eval_s:.3g} s per evaluation (this experiment's store): "
                  f"{found.cpu_hours:.3g} evaluator-hours, of which {found.sequential_hours:.3g} "
                  "h run one at a time (HAQ), whatever the cluster")  # fmt: skip
    return out


def cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    from aqgan_ray.experiment import report

    exp = _experiment(args)
    path = report.build(Path(args.results) / exp.name)
    if not args.json:
        print(f"report: {path}")
    return {"report": str(path)}


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    """One table across result directories (``results/<experiment>`` folders)."""
    from aqgan_ray.experiment.report import compare

    rows = compare([Path(d) for d in args.dirs])
    if not args.json:
        print(rows.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return {"rows": json.loads(rows.to_json(orient="records"))}


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    from aqgan_ray.bench import run_bench

    if args.name == "costs":
        return _bench_costs(args)
    if args.name == "tuning":
        return _bench_tuning(args)
    if args.name == "sensitivity":
        return _bench_sensitivity(args)
    exp = _experiment(args)
    with _session(args, exp) as s:
        figures = run_bench(s, args.name, repeats=args.repeats, configs=args.configs)
    if args.output:
        from aqgan_ray.store import write_table

        write_table([figures], Path(args.output))
    if not args.json:
        for key, value in figures.items():
            print(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")
    return figures


def _bench_tuning(args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    from aqgan_ray.bench import bench_tuning

    with _session(args, _experiment(args)) as s:
        rows = pd.DataFrame(bench_tuning(s))
    if args.output:
        from aqgan_ray.store import write_table

        write_table(rows.to_dict("records"), Path(args.output))
    if not args.json:
        point = rows["hw"] + " " + rows["metric"] + "<=" + rows["budget"].map("{:.4g}".format)
        table = rows.assign(point=point).pivot(index="point", columns="method", values="val_acc")
        print(table[list(dict.fromkeys(rows["method"]))].to_string(float_format="{:.4f}".format))
        print(rows.groupby("method", sort=False)[["val_acc", "evaluations", "tune_s"]].mean())
    return {"rows": json.loads(rows.to_json(orient="records"))}


def _bench_sensitivity(args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    from aqgan_ray.bench import bench_sensitivity

    with _session(args, _experiment(args)) as s:
        rows = pd.DataFrame(bench_sensitivity(s))
    if args.output:
        from aqgan_ray.store import write_table

        write_table(rows.to_dict("records"), Path(args.output))
    if not args.json:
        figures = ["val_acc", "unresolved", "negative", "sensitivity_s", "solve_s"]
        means = rows.groupby(["probes", "seed", "floor"])[figures].mean()
        print(means.to_string(float_format="{:.4f}".format))
    return {"rows": json.loads(rows.to_json(orient="records"))}


def _bench_costs(args: argparse.Namespace) -> dict[str, Any]:
    """Needs no experiment: a model, a table and the figures that compare them."""
    from aqgan_ray.bench import bench_costs

    rows, constants = bench_costs(args.table, args.hw, args.refit, args.hold_out)
    if args.output:
        from aqgan_ray.store import write_table

        write_table(rows.to_dict("records"), Path(args.output))
    if not args.json:
        if constants:
            print("fitted: " + ", ".join(f"{k} {v:.4g}" for k, v in constants.items()))
        print(rows.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return {"rows": json.loads(rows.to_json(orient="records")), "fitted": constants}


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
        with _sigterm_unwinds(), quiet, warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                _check_options(args)
                result = COMMANDS[args.command](args)
            finally:
                if not caller_connected:
                    _release_ray()
    except PoolFailure as exc:  # the cluster failed, not the input: a code of its own
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (``Terminated``, perhaps re-raised by Ray)
        if _sigterm.is_set():
            print("error: terminated; what was written so far is kept", file=sys.stderr)
            return 143
        print("error: interrupted; what was written so far is kept", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(_json_safe(result), allow_nan=False), file=stdout)
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our own warnings (a merged design point) as one ``warning:`` line; others as Python's."""
    if category.__module__.startswith("aqgan_ray"):
        text = f"warning: {message}\n"
    else:
        text = warnings.formatwarning(message, category, filename, lineno, line)
    print(text, end="", file=sys.stderr)


def _json_safe(value: Any) -> Any:
    """NaN and infinities as null: no JSON reader accepts them. numpy scalars as Python's."""
    numpy = sys.modules.get("numpy")  # loaded by every command that could return its scalars
    if numpy is not None and isinstance(value, numpy.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _release_ray() -> None:
    """Leave Ray (stopping an embedded instance) while its log messages still go to stderr."""
    pool = sys.modules.get("aqgan_ray.pools.ray_actors")
    if pool is not None:
        pool.disconnect()


if __name__ == "__main__":
    sys.exit(main())
