"""Shared fixtures: one real smoke-preset preparation (a trained tiny MobileNetV2 on a
Fashion-MNIST subset) per test session, in a private cache directory; a real two-node Ray
cluster on loopback; a synthetic store for AQGAN's logic.

Tiers, by the fixtures a test uses (``pytest_collection_modifyitems``): ``ray`` (it starts or
joins Ray) and ``slow`` (it trains the base model or runs the command line in subprocesses).
``make test-fast`` runs the rest: ``pytest -m "not ray and not slow"``.
"""

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


# Fixtures that put a test in a tier; `item.fixturenames` holds those a test uses indirectly too.
RAY_FIXTURES = {"ray_cluster", "cli"}  # the CLI's commands start an embedded Ray
SLOW_FIXTURES = {"smoke", "cli", "ray_cluster"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & RAY_FIXTURES:
            item.add_marker(pytest.mark.ray)
        if used & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)


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
    from aqgan_ray.pools import ray_actors as pool

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
    from aqgan_ray.pools.ray_actors import EvaluatorPool, PoolSpec
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
            keep_first_last=exp.quant.keep_first_last,
        )
    return results


@pytest.fixture
def tiny_preset(tmp_path) -> str:
    """A preset file: smoke at test size, the same model and store (40 configs), AQGAN trained
    briefly, two design points, three evaluations per searching baseline, the ILP's
    sensitivity from two probes per batch."""
    from importlib import resources

    text = (resources.files("aqgan_ray") / "presets" / "smoke.toml").read_text()
    text = text.split("\n[baselines]")[0].replace("samples = 60", "samples = 40")
    text += (
        "\n[baselines]\nevaluations = 3\nhaq_warmup = 1\nilp_probes = 2\n"
        "[aqgan]\nsteps = 60\nfidelity_targets = 2\nfidelity_top = 1\nverify_top = 1\n"
        "proposals = 200\nrefine_rounds = 1\nrefine_targets = 2\n"
        '[design]\nhw = ["bismo-edge", "bitfusion"]\n'
        'budgets = ["energy_mj=0.5x", "bitfusion:latency_ms=0.75x"]\n'
        'search_hw = ["bismo-edge"]\n'
    )
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="session")
def smoke_layers():
    """The smoke model's layer table, from the architecture alone (nothing trained)."""
    from aqgan_ray.data import DATASET_SHAPES
    from aqgan_ray.layers import layer_table
    from aqgan_ray.models import build_model

    shape, classes = DATASET_SHAPES["fashion-mnist"]
    return layer_table(build_model("mobilenet_v2", classes, shape, 0.35), shape)


class SyntheticStore:
    """Store-shaped rows for the smoke layer table without training or evaluating anything: the
    configs are drawn by the real collection sampler and scored by a fixed accuracy function
    that behaves like the real one (each layer has its own sensitivity, quantization noise falls
    4x per extra bit, accuracy falls from 0.85 to chance 0.10 along a sigmoid in the summed
    noise; uniform 8, 4, 3, 2 bits give 0.83, 0.80, 0.31, 0.10). For unit tests of AQGAN's
    logic, which is what they test, not the evaluator."""

    def __init__(self, layers, choices, seed: int = 0):
        import numpy as np

        self.layers = tuple(layers)
        self.names = tuple(layer.name for layer in layers)
        self.choices = tuple(choices)
        sens = np.random.default_rng(seed).lognormal(0.0, 1.0, len(layers))
        self._sens = sens / sens.sum()

    def accuracy(self, config) -> float:
        import numpy as np

        w, a = np.asarray(config.w_bits), np.asarray(config.a_bits)
        noise = float((self._sens * (4.0 ** -(w - 2) + 0.5 * 4.0 ** -(a - 2))).sum())
        return 0.1 + 0.75 / (1.0 + np.exp((noise - 0.3) / 0.08))

    def row(self, config, source: str = "collect") -> dict:
        return {
            "config_hash": config.hash,
            "w_bits": list(config.w_bits),
            "a_bits": list(config.a_bits),
            "val_acc": self.accuracy(config),
            "source": source,
            "eval_key": "synthetic",
        }

    def rows(self, n: int, seed: int = 0) -> list[dict]:
        """``n`` distinct configs as ``collect`` would draw them, with their accuracies."""
        from aqgan_ray.sampling import CollectionSampler

        sampler = CollectionSampler(self.names, self.choices, seed)
        rows: dict[str, dict] = {}
        while len(rows) < n:
            config, _ = sampler.ask()
            if config.hash not in rows:
                rows[config.hash] = self.row(config)
                sampler.tell(config, rows[config.hash]["val_acc"])
        return list(rows.values())


@pytest.fixture(scope="session")
def synthetic(smoke_layers) -> SyntheticStore:
    from aqgan_ray.config import DEFAULT_BIT_CHOICES

    return SyntheticStore(smoke_layers, DEFAULT_BIT_CHOICES)


@pytest.fixture(scope="session")
def synthetic_aqgan(synthetic, tmp_path_factory):
    """(an AQGAN checkpoint trained briefly on 60 synthetic rows, loaded; those rows)."""
    from aqgan_ray.aqgan import checkpoint as aqgan
    from aqgan_ray.aqgan import model as gan
    from aqgan_ray.aqgan.data import training_data
    from aqgan_ray.aqgan.fit import fit
    from aqgan_ray.settings import load_experiment

    exp = load_experiment("smoke")
    names, choices = synthetic.names, exp.quant.bit_choices
    rows = synthetic.rows(60)
    spec = gan.GanSpec(steps=150, predictor_members=2, predictor_epochs=300)
    model, metrics, _ = fit(training_data(rows, names, choices), choices, spec)
    path = tmp_path_factory.mktemp("ckpt") / "aqgan.pt"
    aqgan.save_checkpoint(path, model, spec, names, choices, "k", metrics, aqgan.model_id(exp))
    return aqgan.load_checkpoint(path, names, choices, aqgan.model_id(exp)), rows


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
