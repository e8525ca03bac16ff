"""Random search under the budget: the sanity floor every method must beat.

Each proposal is drawn uniformly from the configs that fit: independent uniform bits per layer,
drawn in blocks and priced analytically, the first that fits kept (rejection sampling, exact).
When the budget is so tight that no draw of a few thousand fits, the last draw is lowered to
fit with HAQ's budget enforcement instead, and the proposal is counted in ``repaired``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from aqgan_ray.config import QuantConfig
from aqgan_ray.cost import within_budget
from aqgan_ray.search import DesignPoint, Proposer, rng_restore, rng_state

DRAW_BLOCK = 256  # configs priced at once
MAX_BLOCKS = 16  # then repair instead of drawing on


class RandomSearch(Proposer):
    name = "random"

    def __init__(self, point: DesignPoint, seed: int = 0):
        self.point = point
        self.choices = np.asarray(point.bit_choices)
        self.rng = np.random.default_rng(seed)
        self.repaired = 0

    def ask(self, n: int) -> list[QuantConfig]:
        return [self._draw() for _ in range(n)]

    def _draw(self) -> QuantConfig:
        n_layers = len(self.point.layers)
        for _ in range(MAX_BLOCKS):
            w = self.choices[self.rng.integers(0, len(self.choices), (DRAW_BLOCK, n_layers))]
            a = self.choices[self.rng.integers(0, len(self.choices), (DRAW_BLOCK, n_layers))]
            fits = np.flatnonzero(within_budget(self.point.costs(w, a), self.point.budget))
            if len(fits):
                return self.point.config(w[fits[0]], a[fits[0]])
        self.repaired += 1
        return self.point.repair(self.point.config(w[0], a[0]))

    def tell(self, configs: Sequence[QuantConfig], val_accs: Sequence[float]) -> None:
        """Random search learns nothing from results."""

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state(self.rng), "repaired": self.repaired}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rng_restore(self.rng, state["rng"])
        self.repaired = state["repaired"]

    def summary(self) -> dict[str, Any]:
        return {"repaired": self.repaired}
