"""How ``collect`` draws the configs that AQGAN learns from.

Uniform random per-layer bits are a poor training set: with 2..8 bits the chance that *no* layer
of a 50-layer network gets 2 or 3 bits is tiny, so almost every random config collapses to
chance accuracy, and the generator never sees the high-accuracy region users ask for. The
collection sampler therefore mixes three draws, recorded per row as ``sampler``:

- ``level-jitter``: a precision level per config (uniform over the bit range), separate weight
  and activation levels around it, then independent per-layer jitter whose spread is itself
  drawn per config, so both near-uniform and strongly mixed configs appear at every level.
- ``stratified``: once some results are in, a target accuracy is drawn uniformly over the range
  seen so far and a config that reached about that accuracy is mutated (each layer's bits moved
  one choice up or down with a small probability). Accuracy bins that the levels fill thinly
  (the steep fall between 5 and 3 bits) get as many samples as the flat ends.
- ``random``: independent uniform bits per layer, a small share, for the low end and for
  configs no level would produce.

It is an ask/tell proposer like every search method; its state is rebuilt from the store on
resume (``tell`` every stored row). What it draws depends on the *set* of results told, never on
their order: ties in accuracy (many configs sit at chance) are broken by config hash. ``collect``
asks in rounds of ``round_size`` and reseeds at every round from the experiment seed and the
store size, so the store is a function of the seed and its size, whatever order results arrive
in from a cluster, and a collection resumed at a round boundary draws what an uninterrupted one
would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aqgan_ray.config import QuantConfig


@dataclass(frozen=True)
class SamplerSpec:
    warmup: int = 24  # level-jitter draws before stratified draws start
    stratified_share: float = 0.45
    random_share: float = 0.10
    level_spread: float = 0.75  # std of the weight/activation level around the config's level
    max_layer_jitter: float = 1.25  # per-config layer jitter std drawn from U(0.2, this)
    mutate_prob: float = 0.15  # per layer and per kind, in stratified draws
    neighbours: int = 4  # a stratified draw mutates one of the configs nearest the target
    # ``collect`` draws this many configs, waits for all of them, then draws the next round: a
    # round's draws see exactly the results of earlier rounds, never a timing-dependent part of
    # its own. The price is idle evaluators while a round's last results come in (a few percent
    # on 2 evaluators: docs/measurements.md); raise it on a large cluster, where more than 16
    # evaluators would idle from the start of every round.
    round_size: int = 16

    def __post_init__(self):
        if self.round_size < 1:
            raise ValueError("round_size must be at least 1")


class CollectionSampler:
    def __init__(
        self,
        layer_names: Sequence[str],
        bit_choices: Sequence[int],
        seed: int,
        spec: SamplerSpec | None = None,
        keep_first_last: bool = False,
    ):
        """``keep_first_last``: every draw in HAQ's search space (``config.pin_first_last``)."""
        self.layer_names = tuple(layer_names)
        self.keep_first_last = keep_first_last
        self.choices = np.array(sorted(bit_choices))
        self.spec = spec or SamplerSpec()
        self.rng = np.random.default_rng(seed)
        self._idx: list[tuple[np.ndarray, np.ndarray]] = []  # told configs as choice indices
        self._acc: list[float] = []
        self._hash: list[str] = []

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def tell(self, config: QuantConfig, val_acc: float) -> None:
        index = {int(b): i for i, b in enumerate(self.choices)}
        self._idx.append(
            (
                np.array([index[b] for b in config.w_bits]),
                np.array([index[b] for b in config.a_bits]),
            )
        )
        self._acc.append(float(val_acc))
        self._hash.append(config.hash)

    def ask(self) -> tuple[QuantConfig, str]:
        spec, r = self.spec, self.rng.random()
        if r < spec.random_share:
            return self._random(), "random"
        if len(self._acc) >= spec.warmup and r < spec.random_share + spec.stratified_share:
            return self._stratified(), "stratified"
        return self._level_jitter(), "level-jitter"

    def _config(self, w_idx: np.ndarray, a_idx: np.ndarray) -> QuantConfig:
        config = QuantConfig(
            self.layer_names,
            tuple(int(b) for b in self.choices[w_idx]),
            tuple(int(b) for b in self.choices[a_idx]),
        )
        return config.pinned() if self.keep_first_last else config

    def _random(self) -> QuantConfig:
        n, k = len(self.layer_names), len(self.choices)
        return self._config(self.rng.integers(0, k, n), self.rng.integers(0, k, n))

    def _level_jitter(self) -> QuantConfig:
        """Levels and jitter live on the bit axis, then snap to the nearest allowed choice."""
        spec, rng, n = self.spec, self.rng, len(self.layer_names)
        lo, hi = float(self.choices[0]), float(self.choices[-1])
        level = rng.uniform(lo - 0.5, hi + 0.5)
        sigma = rng.uniform(0.2, spec.max_layer_jitter)

        def draw() -> np.ndarray:
            kind_level = level + rng.normal(0.0, spec.level_spread)
            bits = kind_level + rng.normal(0.0, sigma, n)
            return np.abs(bits[:, None] - self.choices[None, :]).argmin(1)

        return self._config(draw(), draw())

    def _stratified(self) -> QuantConfig:
        spec, rng = self.spec, self.rng
        acc = np.asarray(self._acc)
        target = rng.uniform(acc.min(), acc.max())
        # by distance, then by hash: the same told set gives the same neighbours in any order
        nearest = np.lexsort((np.array(self._hash), np.abs(acc - target)))[: spec.neighbours]
        w_idx, a_idx = self._idx[int(rng.choice(nearest))]
        return self._config(self._mutate(w_idx), self._mutate(a_idx))

    def _mutate(self, idx: np.ndarray) -> np.ndarray:
        step = self.rng.choice([-1, 1], len(idx)) * (
            self.rng.random(len(idx)) < self.spec.mutate_prob
        )
        return np.clip(idx + step, 0, len(self.choices) - 1)


def space_size(n_layers: int, n_choices: int, keep_first_last: bool = False) -> int:
    """Distinct configs: every layer picks a weight and an activation bitwidth (all but the
    first and last layers under ``keep_first_last``)."""
    free = max(0, n_layers - 2) if keep_first_last else n_layers
    return n_choices ** (2 * free)
