"""Per-layer sensitivity profile: what quantizing one layer's weights or activations to each
bitwidth does to the network's output, measured once per model.

AQGAN's accuracy predictor learns from a few hundred (config, accuracy) pairs at most, and a
config has 2 x 53 choices on MobileNetV2: too few pairs to learn every layer's sensitivity
from scratch. This profile gives the predictor that knowledge directly, the way HAWQ-style and
noise-additivity methods do: for every layer, kind (weight, activation) and bitwidth b, the
float network runs with that one quantizer at b, and the entry is the mean KL divergence of its
output distribution from the float model's, on a seeded sample of
*training* images (never the validation or test split). Output noise of independent
quantizers adds up to first order, so a config's summed entries track its accuracy loss; the
predictor (``gan.Predictor``) calibrates that sum per layer and bitwidth on the store.

Cost: 2 x layers x bitwidths forward passes over ``images`` (742 on MobileNetV2 with bits
2-8), done once in the driver before training and kept beside the store.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from aqgan_ray.data import normalize
from aqgan_ray.prepare import Prepared
from aqgan_ray.quant import act_range, fake_quant_act, fake_quant_weight


@torch.no_grad()
def profile(
    prepared: Prepared,
    images: Tensor,
    bit_choices: Sequence[int],
    progress: bool = True,
) -> np.ndarray:
    """[layers, 2, bitwidths] mean KL(float || one quantizer at b) over ``images`` (uint8).

    The float (BN-folded) model with exactly one quantizer applied, the same quantizers and
    calibrated scales the evaluator uses (``quant.py``): a weight entry swaps that layer's
    weights for their fake-quantized copy, an activation entry adds one pre-hook on its input.
    """
    model = prepared.folded_model().to(memory_format=torch.channels_last)  # 2.5x on CPU
    modules = dict(model.named_modules())
    calib = prepared.calibration
    x = normalize(images, prepared.mean, prepared.std).contiguous(memory_format=torch.channels_last)
    log_p = torch.log_softmax(model(x), dim=1)
    p = log_p.exp()

    def kl() -> float:
        log_q = torch.log_softmax(model(x), dim=1)
        return float((p * (log_p - log_q)).sum(1).mean())

    names = prepared.layer_names
    out = np.zeros((len(names), 2, len(bit_choices)))
    for i, name in enumerate(tqdm(names, desc="sensitivity profile", unit="layer",
                                  disable=not progress, leave=False)):  # fmt: skip
        module = modules[name]
        weight = module.weight.detach().clone()
        for j, bits in enumerate(bit_choices):
            module.weight.copy_(fake_quant_weight(weight, calib.weight_scale[i][bits], bits))
            out[i, 0, j] = kl()
        module.weight.copy_(weight)
        for j, bits in enumerate(bit_choices):
            scale = calib.act_scale[i][bits]
            qmin, qmax = act_range(bits, calib.act_signed[i])
            hook = module.register_forward_pre_hook(
                lambda _m, args, s=scale, lo=qmin, hi=qmax: (fake_quant_act(args[0], s, lo, hi),)
            )
            out[i, 1, j] = kl()
            hook.remove()
    return out


def sample_images(images: Tensor, n: int, seed: int) -> Tensor:
    """A seeded subset of ``n`` images (all of them if there are fewer)."""
    if n >= len(images):
        return images
    gen = torch.Generator().manual_seed(seed)
    return images[torch.randperm(len(images), generator=gen)[:n]]


# Bump when the measurement changes, so that cached profiles are measured again.
VERSION = 2  # 2: one quantizer on the float model (1: the others at 8 bits)


def cached_profile(
    prepared: Prepared,
    train_images: Tensor,
    n_images: int,
    bit_choices: Sequence[int],
    cache_dir: Path,
    progress: bool = True,
) -> np.ndarray:
    """The profile of ``prepared``'s model on ``n_images`` seeded training images, measured
    once and kept under ``<cache>/sensitivity/``, keyed by the model's content (weights,
    calibration, evaluation protocol), the images and the bit choices."""
    from aqgan_ray.evaluate import evaluation_key

    seed = prepared.experiment.seed
    images = sample_images(train_images, n_images, seed)
    digest = hashlib.sha256(
        json.dumps([VERSION, list(map(int, bit_choices)), len(images), seed]).encode()
        + images.contiguous().numpy().tobytes()
    ).hexdigest()[:12]
    key = evaluation_key(prepared, images[:1], torch.zeros(1, dtype=torch.long))
    path = Path(cache_dir) / "sensitivity" / f"{key}-{digest}.npy"
    if path.is_file():
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            pass  # damaged: measured again and rewritten below
    out = profile(prepared, images, bit_choices, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, out, allow_pickle=False)
    os.replace(tmp, path)
    return out
