"""Benchmarks: commands that print measured figures, ratios taken side by side in one run.

Speed goals live here rather than in timed tests, because this machine is noisy.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch

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


def bench_eval(prepared: Prepared, splits: Splits, repeats: int = 5) -> dict[str, Any]:
    """Quantized evaluation of a config vs a plain FP32 forward pass over the same images.

    The FP32 reference is the same BN-folded, channels-last network without fake quantization,
    run eagerly: the fastest float model we have without a compiler. Each quantized repetition
    applies a *different* random mixed-precision config, so weight quantization is paid every
    time. Quantized evaluation is timed both eagerly and compiled (TorchInductor, what the
    evaluator actors use); the one-off compilation is reported on its own.
    """
    x, y = splits.val_x, splits.val_y
    rng = np.random.default_rng(prepared.experiment.seed)
    choices = np.array(prepared.experiment.quant.bit_choices)
    names = prepared.layer_names

    def random_config() -> QuantConfig:
        return QuantConfig(
            names, tuple(rng.choice(choices, len(names))), tuple(rng.choice(choices, len(names)))
        )

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
