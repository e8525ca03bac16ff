"""Shared fixtures: one real smoke-preset preparation (a trained tiny MobileNetV2 on a
Fashion-MNIST subset) per test session, in a private cache directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aqgan_ray.prepare import prepare
from aqgan_ray.settings import load_experiment


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("aqgan-cache")


@pytest.fixture(scope="session")
def smoke(cache_dir: Path):
    """(experiment, prepared, splits) of the smoke preset; the model is trained once."""
    exp = load_experiment("smoke")
    prepared, splits = prepare(exp, cache_dir, progress=False)
    return exp, prepared, splits


@pytest.fixture(scope="session")
def cli(cache_dir: Path, smoke, tmp_path_factory: pytest.TempPathFactory):
    """Run ``python -m aqgan_ray`` as a user would, sharing the session's trained model."""
    results = tmp_path_factory.mktemp("results")
    env = {**os.environ, "AQGAN_RAY_CACHE": str(cache_dir)}

    def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        extra = [] if "--results" in args else ["--results", str(results)]
        return subprocess.run(
            [sys.executable, "-m", "aqgan_ray", *args, *extra],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=600,
        )

    return run
