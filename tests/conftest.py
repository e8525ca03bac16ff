"""Shared fixtures: one real smoke-preset preparation (a trained tiny MobileNetV2 on a
Fashion-MNIST subset) per test session, in a private cache directory."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from aqgan_ray.prepare import prepare
from aqgan_ray.settings import load_experiment

# Ray token authentication for every cluster this session starts or joins. Ray reads these when
# it is imported, so they are set here, before any test module imports it; subprocesses
# (``ray start``, the CLI) inherit them. A session token keeps tests away from ~/.ray.
RAY_AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
os.environ.update(RAY_AUTH)


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

    def run(
        *args: str, cwd: Path | None = None, env_extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        extra = [] if "--results" in args else ["--results", str(results)]
        return subprocess.run(
            [sys.executable, "-m", "aqgan_ray", *args, *extra],
            capture_output=True,
            text=True,
            env={**env, **(env_extra or {})},
            cwd=cwd,
            timeout=600,
        )

    return run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """A real two-node Ray cluster on loopback, with token authentication, shared by every test
    that needs Ray: ``ray start --head`` and a second ``ray start --address``, one CPU each.

    The test process joins it as a driver (one Ray instance per session); CLI subprocesses
    join with ``--address``, all with the session's ``RAY_AUTH_TOKEN``. Each ``ray start`` runs in a
    session of its own, so teardown kills exactly this cluster's processes.
    """
    from aqgan_ray import pool

    ray_bin = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="aqr", dir="/tmp")  # short: Ray's socket paths have a limit
    common = ["--num-cpus", "1", "--object-store-memory", "150000000", "--disable-usage-stats"]
    starts = [
        [ray_bin, "start", "--head", "--port", str(port), "--temp-dir", temp,
         "--include-dashboard", "false", *common],
        [ray_bin, "start", "--address", f"127.0.0.1:{port}", *common],
    ]  # fmt: skip
    groups = []
    try:
        for i, cmd in enumerate(starts):
            log = Path(temp) / f"start-{i}.log"
            with open(log, "w") as out:  # not a pipe: the daemons would hold it open
                proc = subprocess.Popen(
                    cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
                groups.append(proc.pid)  # its daemons outlive it, in this process group
                assert proc.wait(timeout=120) == 0, log.read_text()[-2000:]
        address = f"127.0.0.1:{port}"
        info = pool.connect(address)
        assert info["nodes"] == 2, info
        yield {"address": address, "nodes": 2}
    finally:
        pool.disconnect()
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def collected(ray_cluster, smoke, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results directory whose smoke store holds 40 real evaluations, collected once on the
    loopback cluster; AQGAN tests train on it. Returns the ``--results`` directory."""
    from aqgan_ray.collect import collect
    from aqgan_ray.evaluate import evaluation_key
    from aqgan_ray.pool import EvaluatorPool, PoolSpec
    from aqgan_ray.service import EvaluationService
    from aqgan_ray.store import EvaluationStore

    exp, prepared, splits = smoke
    results = tmp_path_factory.mktemp("collected")
    key = evaluation_key(prepared, splits.val_x, splits.val_y)
    val = (splits.val_x, splits.val_y)
    with (
        EvaluationStore(results / exp.name / "evaluations", key) as store,
        EvaluatorPool(prepared, val, spec=PoolSpec(workers=2)) as pool,
    ):
        collect(
            EvaluationService(store, pool),
            prepared.layer_names,
            exp.quant.bit_choices,
            40,
            exp.seed,
            progress=False,
        )
    return results


@pytest.fixture(scope="session")
def smoke_layers():
    """The smoke model's layer table, from the architecture alone (nothing trained)."""
    from aqgan_ray.data import DATASET_SHAPES
    from aqgan_ray.layers import layer_table
    from aqgan_ray.models import build_model

    shape, classes = DATASET_SHAPES["fashion-mnist"]
    return layer_table(build_model("mobilenet_v2", classes, shape, 0.35), shape)


@pytest.fixture(scope="session")
def point_at(smoke_layers):
    """``point_at("latency_ms=0.5x", hw="bismo-edge")``: a design point on the smoke layers."""
    from aqgan_ray.config import DEFAULT_BIT_CHOICES
    from aqgan_ray.cost import get_hw_model, parse_budget
    from aqgan_ray.search import DesignPoint

    def make(budget: str, hw: str = "bismo-edge"):
        model = get_hw_model(hw, smoke_layers, DEFAULT_BIT_CHOICES)
        return DesignPoint(
            tuple(smoke_layers),
            DEFAULT_BIT_CHOICES,
            model,
            parse_budget(budget, model, smoke_layers),
        )

    return make
