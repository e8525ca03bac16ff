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
from aqgan_ray.data import Splits, normalize
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
    i.e. the fastest float model we have, so the ratio is the true overhead of simulation. Each
    quantized repetition applies a *different* random mixed-precision config, so weight
    quantization is paid every time (no layer is skipped because its bits did not change).
    """
    evaluator = Evaluator(prepared, val=(splits.val_x, splits.val_y))
    x, y = splits.val_x, splits.val_y
    rng = np.random.default_rng(prepared.experiment.seed)
    choices = np.array(prepared.experiment.quant.bit_choices)
    names = prepared.layer_names

    def fp32() -> None:
        evaluator.qmodel.reset()
        evaluator.accuracy(x, y)

    def quantized() -> None:
        config = QuantConfig(names, tuple(rng.choice(choices, len(names))),
                             tuple(rng.choice(choices, len(names))))
        evaluator.evaluate(config)

    fp32_s = _median_time(fp32, repeats)
    quant_s = _median_time(quantized, repeats)
    unfolded = prepared.float_model().to(memory_format=torch.channels_last)
    bs = evaluator.spec.batch_size

    @torch.no_grad()
    def eager() -> None:
        for start in range(0, len(x), bs):
            batch = normalize(x[start : start + bs], prepared.mean, prepared.std)
            unfolded(batch.contiguous(memory_format=torch.channels_last))

    eager_s = _median_time(eager, repeats)
    return {
        "benchmark": "eval",
        "model": prepared.experiment.model.name,
        "dataset": prepared.experiment.data.name,
        "images": len(x),
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "fp32_forward_s": fp32_s,
        "fp32_unfolded_forward_s": eager_s,
        "quantized_eval_s": quant_s,
        "quantized_over_fp32": quant_s / fp32_s,
        "quantized_over_unfolded_fp32": quant_s / eager_s,
        "images_per_s_quantized": len(x) / quant_s,
    }
