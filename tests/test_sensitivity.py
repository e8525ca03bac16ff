"""The sensitivity profile of the real smoke model: its shape and physics, and its cache."""

from __future__ import annotations

import time

import numpy as np
import torch

from aqgan_ray.sensitivity import cached_profile, sample_images


def test_profile_shape_and_physics(profile, smoke):
    exp, prepared, _ = smoke
    assert profile.shape == (len(prepared.layer_names), 2, len(exp.quant.bit_choices))
    assert np.isfinite(profile).all() and (profile > -1e-6).all()  # a KL divergence
    # Two bits hurt more than eight for every layer and kind, and each bit up to 6 hurts less
    # overall (beyond that the entries sit at the noise floor of every other quantizer at 8).
    assert (profile[:, :, 0] > profile[:, :, -1]).all()
    assert (np.diff(profile.sum(axis=(0, 1)))[:4] < 0).all()


def test_profile_is_cached_and_a_damaged_cache_is_measured_again(smoke, tmp_path):
    """On two bit choices and four images, to keep it quick."""
    exp, prepared, splits = smoke
    args = (prepared, splits.train_x, 4, (2, 8), tmp_path)
    first = cached_profile(*args, progress=False)
    (path,) = (tmp_path / "sensitivity").glob("*.npy")
    start = time.perf_counter()
    assert np.array_equal(cached_profile(*args, progress=False), first)
    assert time.perf_counter() - start < 1.0  # read, not measured
    path.write_bytes(b"damaged")
    assert np.allclose(cached_profile(*args, progress=False), first, rtol=1e-5, atol=1e-8)
    assert np.array_equal(np.load(path), cached_profile(*args, progress=False))


def test_sample_images_is_seeded():
    t = torch.arange(100)
    assert torch.equal(sample_images(t, 10, 3), sample_images(t, 10, 3))
    assert len(sample_images(t, 500, 3)) == 100
