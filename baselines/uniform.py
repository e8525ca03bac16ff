"""Uniform quantization: one bitwidth for every weight and every activation.

The classic baseline of the HAQ and AQGAN papers. For a budget, the candidates are the
bitwidths whose all-uniform config fits, tried from the widest down; the search stops once a
narrower config scores below the one before it (accuracy falls as bits fall; the comparison
guards against the few tenths of a point by which 8 and 7 bits can swap). Its result is the most
accurate fitting uniform config, and its search cost is the evaluations that took, usually two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aqgan_ray.config import QuantConfig
from aqgan_ray.search import DesignPoint, Proposer


class Uniform(Proposer):
    name = "uniform"

    def __init__(self, point: DesignPoint, seed: int = 0):
        del seed  # deterministic
        n = len(point.layers)
        # point.config pins the first and last layers at 8 bits under keep_first_last.
        widest_first = sorted(point.bit_choices, reverse=True)
        uniform = [point.config((b,) * n, (b,) * n) for b in widest_first]
        self.candidates = [c for c in uniform if point.fits(c)]
        self.tried = 0
        self.last_acc: float | None = None
        self.stopped = False

    def ask(self, n: int) -> list[QuantConfig]:
        """One at a time: whether to try the next width depends on the last result."""
        if self.stopped or self.tried >= len(self.candidates) or n < 1:
            return []
        return [self.candidates[self.tried]]

    def tell(self, configs: Sequence[QuantConfig], val_accs: Sequence[float]) -> None:
        for acc in val_accs:
            self.tried += 1
            if self.last_acc is not None and acc < self.last_acc:
                self.stopped = True
            self.last_acc = acc

    def state_dict(self) -> dict[str, Any]:
        return {"tried": self.tried, "last_acc": self.last_acc, "stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tried, self.last_acc = state["tried"], state["last_acc"]
        self.stopped = state["stopped"]

    def summary(self) -> dict[str, Any]:
        return {"fitting_widths": [c.w_bits[len(c) // 2] for c in self.candidates]}
