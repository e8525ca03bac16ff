"""Store-best: the most accurate of AQGAN's own training rows (collected and refined) that fits
the budget. No generator and no ranker: a lookup in data AQGAN already paid for, so its only
cost is the one-time collection it shares with AQGAN.

The ablation AQGAN's hardware tuning has to beat (issue 21: on the smoke preset the paper's flow
lost to it at three of four points). It asks for its one config, a cache hit charged like any
other evaluation, so that its choice goes through the same trace, test split and ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aqgan_ray.config import QuantConfig
from aqgan_ray.search import DesignPoint, Proposer


class StoreBest(Proposer):
    name = "store"

    def __init__(self, point: DesignPoint, stored: Sequence[dict[str, Any]]):
        best = point.best_fitting(stored)
        self.choice = None if best is None else best[0]
        self.asked = False

    def ask(self, n: int) -> list[QuantConfig]:
        if self.asked or self.choice is None or n < 1:
            return []
        self.asked = True
        return [self.choice]

    def tell(self, configs: Sequence[QuantConfig], val_accs: Sequence[float]) -> None:
        """Nothing to learn: the choice was made from the store."""

    def state_dict(self) -> dict[str, Any]:
        return {"asked": self.asked}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.asked = bool(state["asked"])
