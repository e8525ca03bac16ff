"""Random search with AQGAN's prior: the collection sampler (``aqgan_ray.sampling``) run under
one design point's budget, told the results it paid for as ``collect`` tells it (without
``collect``'s reseeding per round: a search's batches are already in a fixed order).

Uniform random bits per layer almost always land at chance accuracy (a few 2- and 3-bit layers
are enough to break a network), while AQGAN learns from this structured sampler. This variant
gives random search the same prior, so a comparison cannot be won by the prior alone: if AQGAN
beats it, the generator and its ranker did better than drawing more from AQGAN's own data
source at the point itself.

Each proposal is the first of up to ``MAX_DRAWS`` sampler draws that fits (rejection, priced in
blocks of ``BLOCK``); when none fits, the last is lowered with HAQ's enforcement
(``DesignPoint.repair``) and counted in ``repaired``. The uniform anchors ``collect`` starts
with are left out: uniform quantization is a baseline of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from aqgan_ray.config import QuantConfig
from aqgan_ray.cost import within_budget
from aqgan_ray.sampling import CollectionSampler
from aqgan_ray.search import DesignPoint, Proposer, rng_restore, rng_state

BLOCK = 64  # sampler draws priced at once
MAX_DRAWS = 512  # draws per proposal before repairing instead


def sampler_for(point: DesignPoint, seed: int) -> CollectionSampler:
    """The collection sampler with ``collect``'s settings, in the point's search space."""
    return CollectionSampler(point.layer_names, point.bit_choices, seed,
                             keep_first_last=point.keep_first_last)  # fmt: skip


def fitting_draw(sampler: CollectionSampler, point: DesignPoint) -> tuple[QuantConfig, bool]:
    """The first of up to ``MAX_DRAWS`` draws within budget, or the last one repaired; and
    whether it was repaired."""
    for _ in range(max(1, MAX_DRAWS // BLOCK)):
        draws = [sampler.ask()[0] for _ in range(BLOCK)]
        w, a = np.array([c.w_bits for c in draws]), np.array([c.a_bits for c in draws])
        fits = np.flatnonzero(within_budget(point.costs(w, a), point.budget))
        if len(fits):
            return point.config(draws[fits[0]].w_bits, draws[fits[0]].a_bits), False
    return point.repair(draws[-1]), True


class SamplerSearch(Proposer):
    name = "random-sampler"

    def __init__(self, point: DesignPoint, seed: int = 0):
        self.point = point
        self.sampler = sampler_for(point, seed)
        self.told: list[tuple[QuantConfig, float]] = []
        self.repaired = 0

    def ask(self, n: int) -> list[QuantConfig]:
        configs = []
        for _ in range(n):
            config, repaired = fitting_draw(self.sampler, self.point)
            self.repaired += repaired
            configs.append(config)
        return configs

    def tell(self, configs: Sequence[QuantConfig], val_accs: Sequence[float]) -> None:
        """The sampler's stratified draws then mutate configs near accuracies it has seen."""
        for config, acc in zip(configs, val_accs, strict=True):
            self.sampler.tell(config, float(acc))
            self.told.append((config, float(acc)))

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": rng_state(self.sampler.rng),
            "repaired": self.repaired,
            "told_w": [list(c.w_bits) for c, _ in self.told],
            "told_a": [list(c.a_bits) for c, _ in self.told],
            "told_acc": [acc for _, acc in self.told],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        told = zip(state["told_w"], state["told_a"], state["told_acc"], strict=True)
        for w, a, acc in told:
            self.tell([self.point.config(w, a)], [acc])
        rng_restore(self.sampler.rng, state["rng"])
        self.repaired = int(state["repaired"])

    def summary(self) -> dict[str, Any]:
        return {"repaired": self.repaired}
