"""Benchmarks: commands that print measured figures, ratios taken side by side in one run.

Speed goals live here rather than in timed tests, because this machine is noisy.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from aqgan_ray.config import QuantConfig
from aqgan_ray.data import Splits
from aqgan_ray.evaluate import Evaluator
from aqgan_ray.prepare import Prepared


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and kernel selection are not what we measure
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _random_configs(prepared: Prepared, n: int) -> list[QuantConfig]:
    """Per-layer bits drawn uniformly, seeded: every run and path times the same configs, in
    the experiment's search space."""
    rng = np.random.default_rng(prepared.experiment.seed)
    quant = prepared.experiment.quant
    choices = np.array(quant.bit_choices)
    names = prepared.layer_names
    configs = [
        QuantConfig(
            names, tuple(rng.choice(choices, len(names))), tuple(rng.choice(choices, len(names)))
        )
        for _ in range(n)
    ]
    return [c.pinned() for c in configs] if quant.keep_first_last else configs


def bench_eval(prepared: Prepared, splits: Splits, repeats: int = 5) -> dict[str, Any]:
    """Quantized evaluation of a config vs a plain FP32 forward pass over the same images.

    The FP32 reference is the same BN-folded, channels-last network without fake quantization,
    run eagerly: the fastest float model we have without a compiler. Each quantized repetition
    applies a *different* random mixed-precision config, so weight quantization is paid every
    time. Quantized evaluation is timed both eagerly and compiled (TorchInductor, what the
    evaluator actors use); the one-off compilation is reported on its own.
    """
    x, y = splits.val_x, splits.val_y
    configs = iter(_random_configs(prepared, 2 * repeats + 4))

    def random_config() -> QuantConfig:
        return next(configs)

    eager = Evaluator(prepared, val=(x, y), compile=False)

    def fp32() -> None:
        eager.qmodel.reset()
        eager.accuracy(x, y)

    fp32_s = _median_time(fp32, repeats)
    eager_s = _median_time(lambda: eager.evaluate(random_config()), repeats)
    compiled = Evaluator(prepared, val=(x, y), compile=True)
    start = time.perf_counter()
    compiled.evaluate(random_config())
    first_s = time.perf_counter() - start
    compiled_s = _median_time(lambda: compiled.evaluate(random_config()), repeats)
    return {
        "benchmark": "eval",
        "model": prepared.experiment.model.name,
        "dataset": prepared.experiment.data.name,
        "images": len(x),
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "fp32_forward_s": fp32_s,
        "quantized_eager_eval_s": eager_s,
        "quantized_compiled_eval_s": compiled_s,
        "compile_once_s": first_s - compiled_s,
        "eager_over_fp32": eager_s / fp32_s,
        "compiled_over_fp32": compiled_s / fp32_s,
        "evals_to_amortize_compile": (first_s - compiled_s) / max(1e-9, eager_s - compiled_s),
    }


def bench_scaling(
    prepared: Prepared,
    splits: Splits,
    n_configs: int,
    address: str | None = None,
    cpus_per_worker: float = 1.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluations per second: a plain in-process loop, one Ray actor, two Ray actors.

    The same random configs go through each path, after a warm-up evaluation per evaluator
    (model build and, with ``eval.compile``, compilation are reported apart). The in-process
    loop runs with as many torch threads as one actor gets, so ``ray_overhead`` compares like
    with like: what the actor, the object store and ``ray.wait`` add per evaluation.
    """
    from aqgan_ray.pools.ray_actors import EvaluatorPool, PoolSpec, connect

    warm, *configs = _random_configs(prepared, n_configs + 1)
    val = (splits.val_x, splits.val_y)
    train = (splits.train_x, splits.train_y) if prepared.experiment.eval.finetune_steps else None
    threads = max(1, int(cpus_per_worker))

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        local = Evaluator(prepared, val=val, train=train)
        local.evaluate(warm)
        start = time.perf_counter()
        local_acc = [
            local.evaluate(c).val_acc
            for c in tqdm(configs, desc="in-process loop", unit="eval", disable=not progress)
        ]
        local_s = time.perf_counter() - start
    finally:
        torch.set_num_threads(saved_threads)
    del local

    info = connect(address)
    figures: dict[str, Any] = {}
    for workers in (1, 2):
        spec = PoolSpec(workers=workers, cpus_per_worker=cpus_per_worker)
        with EvaluatorPool(prepared, val, train, spec) as pool:
            warm_s = pool.warm_up(warm)
            start = time.perf_counter()
            done = tqdm(
                pool.imap_unordered(configs),
                total=len(configs),
                desc=f"ray, {workers} actor(s)",
                unit="eval",
                disable=not progress,
            )
            ray_acc = {e.config.hash: e.result.val_acc for e in done}
            figures[workers] = (time.perf_counter() - start, warm_s)
        diff = max(abs(ray_acc[c.hash] - a) for c, a in zip(configs, local_acc, strict=True))
        if diff * len(splits.val_x) > 2:  # more than float reordering can flip
            raise RuntimeError(f"Ray actors and the in-process loop disagree (by {diff:.4f})")
    one_s, two_s = figures[1][0], figures[2][0]
    return {
        "benchmark": "scaling",
        "model": prepared.experiment.model.name,
        "dataset": prepared.experiment.data.name,
        "images_per_eval": len(splits.val_x),
        "configs": n_configs,
        "cluster_cpus": info["cpus"],
        "threads_per_evaluator": threads,
        "in_process_s": local_s,
        "ray_1_actor_s": one_s,
        "ray_2_actors_s": two_s,
        "in_process_evals_per_s": n_configs / local_s,
        "ray_1_actor_evals_per_s": n_configs / one_s,
        "ray_2_actors_evals_per_s": n_configs / two_s,
        "speedup_2_vs_1_actor": one_s / two_s,
        "ray_overhead": one_s / local_s - 1.0,
        "actor_warm_up_s": figures[1][1],
    }


def bench_generate(
    loaded, prepared: Prepared, splits: Splits, n: int = 1000, repeats: int = 5
) -> dict[str, Any]:
    """Generating and selecting ``n`` proposals (priced on BISMO-edge under a latency budget),
    with the model loaded, against one real evaluation of a config on the validation split."""
    from aqgan_ray.aqgan.generate import Query, propose
    from aqgan_ray.cost import get_hw_model, parse_budget

    layers = prepared.layers
    choices = prepared.experiment.quant.bit_choices
    hw = get_hw_model("bismo-edge", layers, choices)
    budget = parse_budget("latency_ms=0.5x", hw, layers, min(choices))
    target = float(loaded.model.scaler.unscale(0.9))
    seeds = iter(range(10_000))
    generate_s = _median_time(
        lambda: propose(loaded, layers, Query(target, hw, budget, n, 5, next(seeds))), repeats
    )
    evaluator = Evaluator(prepared, val=(splits.val_x, splits.val_y), compile=False)
    configs = iter(_random_configs(prepared, repeats + 1))
    eval_s = _median_time(lambda: evaluator.evaluate(next(configs)), repeats)
    return {
        "benchmark": "generate",
        "model": prepared.experiment.model.name,
        "proposals": n,
        "torch_threads": torch.get_num_threads(),
        "generate_select_s": generate_s,
        "one_evaluation_s": eval_s,
        "evaluations_per_generation": eval_s / generate_s,
    }


def bench_costs(
    table: str | None = None,
    hw: str = "bitfusion",
    refit: bool = False,
    hold_out: str | None = None,
):
    """A cost model against a simulator's table keyed by layer shape (default: APQ's Bit Fusion
    table): the ``calibrate.figures`` per metric on the fitted and held-out shapes. ``refit``
    first fits Bit Fusion's free constants to this table (a user's own simulator) and reports
    them. Returns (figure rows, fitted constants or None)."""
    import dataclasses

    from aqgan_ray import calibrate
    from aqgan_ray.cost import BitFusionModel, get_hw_model
    from aqgan_ray.errors import UserError

    frame = calibrate.load_shape_table(table or calibrate.BITFUSION_TABLE).frame
    held = calibrate.held_out(frame, hold_out)
    fitted = None
    if refit:
        if "latency_ms" not in frame or "energy_mj" not in frame:
            raise UserError("--refit needs a table with both latency_ms and energy_mj")
        if (frame[["latency_ms", "energy_mj"]] <= 0).any().any():
            raise UserError("--refit needs positive latency_ms and energy_mj in every row")
        fitted = calibrate.rounded(calibrate.fit_bitfusion(frame, held))
        model = BitFusionModel(fitted, name="bitfusion (refitted)")
    else:
        model = get_hw_model(hw)
    rows = calibrate.figures(frame, calibrate.predict(model, frame), held)
    if rows.empty:
        raise UserError(f"{model.name} and the table share no latency_ms or energy_mj column")
    rows.insert(0, "hw", model.name)
    constants = dataclasses.asdict(fitted) if fitted is not None else None
    return rows, constants


def run_bench(session, name: str, repeats: int = 5, configs: int = 24) -> dict[str, Any]:
    """``aqgan-ray bench NAME`` on a session's experiment: ``eval``, ``scaling`` or ``generate``."""
    if name == "scaling":
        from aqgan_ray.pools.ray_actors import connect

        connect(session.address)  # an unreachable cluster fails before the base model trains
        return bench_scaling(session.prepared, session.splits, configs, session.address,
                             session.cpus_per_worker)  # fmt: skip
    if name == "generate":
        loaded = session.generator(checkpoint_only=True).loaded
        return bench_generate(loaded, session.prepared, session.splits, repeats=repeats)
    return bench_eval(session.prepared, session.splits, repeats=repeats)


# AQGAN's hardware tuning and the variants it was measured against (``bench tuning``).
TUNING_VARIANTS = {
    "tuned": {},  # what `run` uses
    "no-generator": {"sources": ("store", "bred")},
    "generator-only": {"sources": ("generator",)},
    "no-projection": {"project": False},
    "mean-estimate": {"kappa": 0.0},
    "kappa-2": {"kappa": 2.0},
    "paper-first": {"lead": True},
}


def bench_tuning(session) -> list[dict[str, Any]]:
    """At every design point of the session's experiment, on its trained checkpoint and store:
    the best uniform config that fits, store-best, the paper's flow (the ``verify_top`` most
    accurate proposals that fit, verified) and every ``TUNING_VARIANTS`` entry, each with its
    validation accuracy, evaluations and where its choice came from. Evaluations go through the
    store as source ``bench`` (nobody's evidence; shared by the variants as cache hits)."""
    from aqgan_ray.aqgan.generate import Query, best_under_budget
    from aqgan_ray.aqgan.hw_tune import TunedAqgan, TuneSpec
    from aqgan_ray.collect import uniform_configs
    from aqgan_ray.experiment import design

    exp = session.experiment
    loaded = session.generator(checkpoint_only=True).loaded
    stored = session.training_rows(loaded.eval_key)
    service, layers = session.service, session.layers
    top, samples = exp.aqgan.verify_top, exp.aqgan.proposals

    def measure(configs: list[QuantConfig]) -> list[float]:
        return [o.val_acc for o in service.evaluate(configs, source="bench")] if configs else []

    rows = []
    for planned in design.design_points(exp, layers, [session.seed]):
        point = planned.point
        budget = point.budget
        where = {"hw": planned.hw_name, "metric": budget.metric, "budget": budget.value,
                 "budget_fraction": budget.relative}  # fmt: skip

        def row(method: str, accs: list[float], origin: str, tune_s: float = 0.0, at=where):
            best = max(accs, default=float("nan"))
            rows.append({**at, "method": method, "val_acc": best, "evaluations": len(accs),
                         "origin": origin, "tune_s": tune_s})  # fmt: skip

        fitting = [c for c in uniform_configs(point.layer_names, point.bit_choices,
                                              point.keep_first_last) if point.fits(c)]  # fmt: skip
        row("uniform", measure(fitting), "uniform")
        floor = point.best_fitting(stored)
        row("store", [] if floor is None else [floor[1]], "store")
        query = Query(None, point.hw, point.budget, samples, top, session.seed)
        start = time.perf_counter()
        paper = [p.config for p in best_under_budget(loaded, layers, query)]
        row("paper", measure(paper), "generator", time.perf_counter() - start)
        for name, changes in TUNING_VARIANTS.items():
            tuner = TunedAqgan(loaded, point, session.seed, samples, top, stored,
                               TuneSpec(**changes))  # fmt: skip
            accs: list[float] = []
            while configs := tuner.ask(1):
                accs += measure(configs)
                tuner.tell(configs, accs[-1:])
            row(name, accs, "/".join(o for _, o in tuner.asked), tuner.tune_s)
    return rows


# The sensitivity pass's settings ``bench sensitivity`` measures the ILP with: Hutchinson probes
# per calibration batch, each with two probe seeds.
SENSITIVITY_PROBES = (4, 8, 16, 32)
SENSITIVITY_SEEDS = (0, 1)


def bench_sensitivity(
    session,
    probes: tuple[int, ...] = SENSITIVITY_PROBES,
    seeds: tuple[int, ...] = SENSITIVITY_SEEDS,
) -> list[dict[str, Any]]:
    """The ILP's choice at every design point of the session's experiment, for each probe count
    and probe seed, with an unresolved weight trace counted at its standard error (what ``run``
    uses) or at zero: validation accuracy of the best solution, its predicted loss increase, the
    pass's and the solve's seconds. Evaluations go through the store as source ``bench``."""
    from aqgan_ray.experiment import design
    from baselines.ilp import IntegerProgram, clipped_at_zero, measure_sensitivity

    exp, service = session.experiment, session.service
    prepared, splits = session.prepared, session.splits
    planned = design.design_points(exp, session.layers, [session.seed])
    rows = []
    for count in probes:
        for seed in seeds:
            sens = measure_sensitivity(
                prepared.folded_model(), prepared.layers, prepared.calibration, splits.calib_x,
                splits.calib_y, prepared.mean, prepared.std, probes=count, seed=seed,
                keep_first_last=exp.quant.keep_first_last, threads=session.evaluator_threads,
            )  # fmt: skip
            traces, errors = np.array(sens.weight_trace), np.array(sens.weight_trace_se)
            for floor, used in (("se", sens), ("zero", clipped_at_zero(sens))):
                for p in planned:
                    program = IntegerProgram(p.point, used)
                    solution = program.next()  # None: nothing fits (parse_budget prevents it)
                    configs = [] if solution is None else [solution.config]
                    outcomes = service.evaluate(configs, source="bench")
                    rows.append({
                        "hw": p.hw_name, "metric": p.point.budget.metric,
                        "budget": p.point.budget.value, "budget_fraction": p.point.budget.relative,
                        "probes": count, "seed": seed, "floor": floor,
                        "val_acc": outcomes[0].val_acc if outcomes else float("nan"),
                        "objective": solution.objective if solution else float("nan"),
                        "unresolved": int((traces < errors).sum()),
                        "negative": int((traces < 0).sum()),
                        "sensitivity_s": sens.seconds, "solve_s": program.solve_s,
                    })  # fmt: skip
    return rows
