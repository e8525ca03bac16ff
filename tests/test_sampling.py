"""The collection sampler: valid, seeded, spread over precision levels, and once told results,
stratified over the accuracy range."""

from __future__ import annotations

import numpy as np

from aqgan_ray.config import DEFAULT_BIT_CHOICES
from aqgan_ray.sampling import CollectionSampler, SamplerSpec, space_size

LAYERS = tuple(f"layer{i}" for i in range(40))


def _draw(sampler: CollectionSampler, n: int):
    return [sampler.ask() for _ in range(n)]


def test_configs_are_valid_and_seeded():
    a = _draw(CollectionSampler(LAYERS, DEFAULT_BIT_CHOICES, seed=3), 50)
    b = _draw(CollectionSampler(LAYERS, DEFAULT_BIT_CHOICES, seed=3), 50)
    c = _draw(CollectionSampler(LAYERS, DEFAULT_BIT_CHOICES, seed=4), 50)
    assert [x[0].hash for x in a] == [x[0].hash for x in b] != [x[0].hash for x in c]
    for config, name in a:
        config.validate(DEFAULT_BIT_CHOICES)
        assert config.layers == LAYERS and name in {"level-jitter", "random"}


def test_levels_cover_the_whole_bit_range():
    """Uniform random bits put every config's mean near 5; levels must reach both ends."""
    draws = _draw(CollectionSampler(LAYERS, DEFAULT_BIT_CHOICES, seed=0), 400)
    means = np.array([np.mean(c.w_bits + c.a_bits) for c, name in draws if name != "random"])
    counts, _ = np.histogram(means, bins=[2, 3, 4, 5, 6, 7, 8.01])
    assert counts.min() >= 0.08 * len(means), counts
    # and configs are mixed, not only uniform ones
    assert np.mean([len(set(c.w_bits)) > 1 for c, _ in draws]) > 0.9


def test_stratified_draws_fill_thin_accuracy_bins():
    """Told an accuracy curve whose steep middle the levels cover thinly, the sampler starts
    mutating configs from every part of the accuracy range."""
    spec = SamplerSpec(warmup=30, stratified_share=0.9, random_share=0.0)
    sampler = CollectionSampler(LAYERS, DEFAULT_BIT_CHOICES, seed=1, spec=spec)

    def accuracy(config) -> float:  # a steep sigmoid in the lowest layer precision
        low = np.mean(np.minimum(config.w_bits, config.a_bits))
        return 0.1 + 0.8 / (1 + np.exp(-6 * (low - 4.0)))

    for config, _ in _draw(sampler, 30):
        sampler.tell(config, accuracy(config))
    draws = _draw(sampler, 300)
    names = [name for _, name in draws]
    assert names.count("stratified") > 200
    accs = np.array([accuracy(c) for c, name in draws if name == "stratified"])
    counts, _ = np.histogram(accs, bins=4, range=(0.1, 0.9))
    assert counts.min() >= 0.1 * len(accs), counts


def test_what_it_draws_depends_on_the_told_set_not_its_order():
    """Results arrive from a cluster in timing order; ties at chance accuracy are common."""
    spec = SamplerSpec(warmup=10, stratified_share=1.0, random_share=0.0)
    told = _draw(CollectionSampler(LAYERS, DEFAULT_BIT_CHOICES, seed=5), 40)
    accs = [0.1 if i % 3 else 0.1 + i / 100 for i in range(len(told))]  # many exact ties

    def draws_after(order) -> list[str]:
        sampler = CollectionSampler(LAYERS, DEFAULT_BIT_CHOICES, seed=0, spec=spec)
        for i in order:
            sampler.tell(told[i][0], accs[i])
        sampler.reseed(9)
        return [c.hash for c, _ in _draw(sampler, 30)]

    forward = list(range(len(told)))
    shuffled = list(np.random.default_rng(1).permutation(forward))
    assert draws_after(forward) == draws_after(shuffled) == draws_after(forward[::-1])


def test_space_size():
    assert space_size(3, 7) == 7**6
