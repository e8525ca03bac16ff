"""GAN-unranked: the generator alone, as the paper uses it, without the ranker, the store or any
tuning. Targets are swept from the best accuracy AQGAN's store holds down to the start of its
band (``hw_tune.TuneSpec.targets`` of them); at each, the generator's samples that fit the
budget are taken in the order drawn, until ``verify_top`` distinct configs are found, and all of
them are verified. The choice is the best measured; with nothing that fits, there is none.

The ablation that says what the ranker and the store add to the generator. Built from AQGAN's
checkpoint, so it shares AQGAN's one-time cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from aqgan_ray.aqgan import model as gan
from aqgan_ray.aqgan.checkpoint import Loaded
from aqgan_ray.aqgan.data import band_start, configs_of
from aqgan_ray.aqgan.hw_tune import TuneSpec
from aqgan_ray.config import QuantConfig
from aqgan_ray.cost import within_budget
from aqgan_ray.search import DesignPoint, Proposer


class GanUnranked(Proposer):
    name = "gan-unranked"

    def __init__(self, loaded: Loaded, point: DesignPoint, seed: int, samples: int, top: int):
        self.loaded, self.point, self.seed = loaded, point, seed
        self.samples, self.top = samples, top
        self.asked = 0
        self._picks: list[QuantConfig] | None = None

    def picks(self) -> list[QuantConfig]:
        """The first ``top`` distinct fitting samples, highest targets first (deterministic in
        the seed: a resumed search picks the same)."""
        model, choices = self.loaded.model, np.asarray(self.loaded.bit_choices)
        lo, hi = model.scaler.lo, model.scaler.hi
        found: dict[bytes, np.ndarray] = {}
        for step, target in enumerate(np.linspace(hi, band_start(lo, hi), TuneSpec.targets)):
            idx, _, _ = gan.sample(model, float(target), self.samples, self.seed + step)
            idx = self.loaded.pinned(idx)
            bits = choices[idx]
            fits = within_budget(self.point.costs(bits[:, :, 0], bits[:, :, 1]), self.point.budget)
            for row in idx[fits]:
                found.setdefault(row.tobytes(), row)
                if len(found) == self.top:
                    break
            if len(found) == self.top:
                break
        rows = np.array(list(found.values()), dtype=np.int64)
        if not len(rows):
            return []
        return configs_of(rows, self.loaded.layer_names, self.loaded.bit_choices)

    def ask(self, n: int) -> list[QuantConfig]:
        if self._picks is None:
            self._picks = self.picks()
        configs = self._picks[self.asked : self.asked + max(0, n)]
        self.asked += len(configs)
        return configs

    def tell(self, configs: Sequence[QuantConfig], val_accs: Sequence[float]) -> None:
        """Nothing to learn: the picks do not depend on what was measured."""

    def origin(self, config: QuantConfig) -> str:
        return "generator"

    def state_dict(self) -> dict[str, Any]:
        return {"asked": self.asked}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.asked = int(state["asked"])
