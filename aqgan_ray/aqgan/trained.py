"""The trained generator as users hold it: ask for a target accuracy and/or a budget on a
hardware model, get ranked proposals in milliseconds (``propose``, ``best_under_budget``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aqgan_ray.aqgan import generate
from aqgan_ray.aqgan.checkpoint import Loaded, read_checkpoint, told, with_evidence
from aqgan_ray.aqgan.generate import Proposal, Query
from aqgan_ray.config import QuantConfig
from aqgan_ray.cost import Budget, CostModel, get_hw_model, parse_budget
from aqgan_ray.errors import UserError
from aqgan_ray.layers import Layer


@dataclass(frozen=True)
class TrainedGenerator:
    """A trained AQGAN with the layer table it prices proposals on.

    ``hw`` is a hardware model's name (``bismo-edge``, ``table:PATH``, ...) or a ``CostModel``;
    ``budget`` is ``METRIC=VALUE`` (``latency_ms=0.5x``) or a ``Budget``. ``seed`` defaults to
    the experiment's. ``fidelity`` holds (target, achieved) pairs of the checkpoint's verified
    proposals, the measured error bar of ``expected_miss``. ``stored`` holds AQGAN's training
    rows (``Session.generator`` sets them): with them, a budget without a target is answered
    by hardware tuning (``aqgan.hw_tune``), without them by the paper's flow.
    """

    loaded: Loaded
    layers: tuple[Layer, ...]
    seed: int = 0
    fidelity: tuple[tuple[float, float], ...] = ()
    path: Path | None = None
    evidence: int = 0  # stored evaluations told to the ranker beyond the checkpoint's own
    evidence_s: float = 0.0  # seconds spent reading them and telling the ranker
    training: dict[str, Any] = field(default_factory=dict)  # what `train` reported, if it ran
    stored: tuple[dict[str, Any], ...] = field(default=(), repr=False)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return self.loaded.layer_names

    @property
    def bit_choices(self) -> tuple[int, ...]:
        return self.loaded.bit_choices

    @property
    def metrics(self) -> dict[str, Any]:
        return self.loaded.metrics

    def query(
        self,
        target_acc: float | None = None,
        hw: str | CostModel | None = None,
        budget: str | Budget | None = None,
        n: int = 1000,
        top: int = 5,
        seed: int | None = None,
    ) -> Query:
        if budget is not None and hw is None:
            raise UserError("a budget needs the hardware model it is priced on (hw=...)")
        model = get_hw_model(hw, self.layers, self.bit_choices) if isinstance(hw, str) else hw
        if isinstance(budget, str):
            pinned = self.loaded.keep_first_last
            budget = parse_budget(budget, model, self.layers, min(self.bit_choices), pinned)
        return Query(target_acc, model, budget, n, top, self.seed if seed is None else seed)

    def propose(
        self,
        target_acc: float | None = None,
        hw: str | CostModel | None = None,
        budget: str | Budget | None = None,
        n: int = 1000,
        top: int = 5,
        seed: int | None = None,
    ) -> list[Proposal]:
        """Up to ``top`` distinct proposals for ``target_acc`` that fit the budget, ranked by
        predicted distance to the target plus the ranker's uncertainty; with no target, the
        most accurate that fit (``best_under_budget``)."""
        return self.ask(self.query(target_acc, hw, budget, n, top, seed))

    def ask(self, query: Query) -> list[Proposal]:
        """``propose`` for a query built once (``query``): a target, or a budget alone."""
        if query.target_acc is None and self.stored:
            tuned = self.tuner(query).shortlist(query.top)
            return [Proposal(c, None, est, std, self._cost(query, c), True, origin)
                    for c, est, std, origin in tuned]  # fmt: skip
        if query.target_acc is None:
            return generate.best_under_budget(self.loaded, self.layers, query)
        return generate.propose(self.loaded, self.layers, query)

    def tuner(self, query: Query):
        """AQGAN's hardware tuning for ``query``'s budget (``hw_tune.TunedAqgan``), with
        ``query.top`` verifications at most."""
        from aqgan_ray.aqgan.hw_tune import TunedAqgan

        return TunedAqgan(self.loaded, self._point(query), query.seed, query.n, query.top,
                          self.stored)  # fmt: skip

    def _point(self, query: Query):
        from aqgan_ray.search import DesignPoint

        return DesignPoint(self.layers, self.bit_choices, query.hw, query.budget,
                           self.loaded.keep_first_last)  # fmt: skip

    def _cost(self, query: Query, config: QuantConfig) -> float:
        return self._point(query).cost(config)

    def best_under_budget(
        self,
        hw: str | CostModel,
        budget: str | Budget,
        n: int = 1000,
        top: int = 5,
        seed: int | None = None,
    ) -> list[Proposal]:
        """The most accurate proposals that fit: targets swept from the store's best accuracy
        down (the paper's HW-tuning flow)."""
        return generate.best_under_budget(
            self.loaded, self.layers, self.query(None, hw, budget, n, top, seed)
        )

    def expected_miss(self, predicted_acc: float) -> float | None:
        return generate.expected_miss(self.fidelity, predicted_acc)

    def told(self, configs: Sequence[QuantConfig], val_accs: Sequence[float]) -> TrainedGenerator:
        """This generator with measured accuracies added to its ranker (milliseconds; the
        networks are unchanged), so a target asked again is not missed the same way."""
        if not configs:
            return self
        return replace(self, loaded=told(self.loaded, configs, val_accs))

    def with_store_rows(self, rows: Sequence[dict[str, Any]]) -> TrainedGenerator:
        """Told every stored evaluation of its setup it has not seen (``with_evidence``)."""
        loaded, added = with_evidence(self.loaded, rows)
        return replace(self, loaded=loaded, evidence=self.evidence + added)


def load_generator(path: str | Path, layers: Sequence[Layer] | None = None) -> TrainedGenerator:
    """A generator from its checkpoint. ``layers`` (the experiment's layer table) is needed
    only for checkpoints that do not hold their own."""
    loaded = read_checkpoint(Path(path))
    table = tuple(layers) if layers is not None else loaded.layers
    if not table:
        raise UserError(
            f"AQGAN checkpoint {path} holds no layer table; pass the experiment's layers "
            "(Session(exp).layers) or train it again"
        )
    if tuple(layer.name for layer in table) != loaded.layer_names:
        raise UserError(f"AQGAN checkpoint {path} was trained for another layer table")
    return TrainedGenerator(loaded, table, loaded.spec.seed, path=Path(path))
