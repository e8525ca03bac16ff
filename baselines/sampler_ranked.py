"""Sampler-ranked: AQGAN's hardware tuning with the generator taken out. The same ranker,
projection, filling and verification (``aqgan_ray.aqgan.hw_tune``) over candidates drawn from
the collection sampler (told AQGAN's training rows) in the generator's place, next to the same
store and bred candidates.

The ablation that says what the generator adds *at a design point*: where AQGAN does no better
than this, the ranker and the store do the work there, not the GAN's samples. The generator is
not gone altogether: the training rows include active refinement's, which the generator chose,
and the ranker was trained on them. Built from AQGAN's checkpoint and training rows, so it
shares AQGAN's one-time cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aqgan_ray.aqgan.checkpoint import Loaded
from aqgan_ray.aqgan.hw_tune import TunedAqgan, TuneSpec
from aqgan_ray.search import DesignPoint

SOURCES = ("sampler", "store", "bred")


class SamplerRanked(TunedAqgan):
    name = "sampler-ranked"

    def __init__(
        self,
        loaded: Loaded,
        point: DesignPoint,
        seed: int,
        samples: int,
        top: int,
        stored: Sequence[dict[str, Any]] = (),
    ):
        super().__init__(loaded, point, seed, samples, top, stored, TuneSpec(sources=SOURCES))
