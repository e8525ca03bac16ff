"""The in-process pool: the same ``Evaluator`` the Ray actors run, behind the same protocol, so the
evaluation service, the store and every search work without Ray."""

from __future__ import annotations

import numpy as np

from aqgan_ray.config import QuantConfig
from aqgan_ray.evaluate import Evaluator
from aqgan_ray.pools import Pool
from aqgan_ray.pools.local import LocalPool
from aqgan_ray.service import EvaluationService
from aqgan_ray.store import EvaluationStore


def _configs(prepared, n: int) -> list[QuantConfig]:
    rng = np.random.default_rng(3)
    names = prepared.layer_names
    return [
        QuantConfig(
            names, tuple(rng.integers(3, 9, len(names))), tuple(rng.integers(3, 9, 53))
        ).pinned()  # the smoke preset's search space
        for _ in range(n)
    ]


def test_local_pool_is_a_pool_that_pulls_configs_lazily(smoke):
    _, prepared, splits = smoke
    val = (splits.val_x, splits.val_y)
    configs = _configs(prepared, 3)
    expected = Evaluator(prepared, val=val, compile=False)
    pool = LocalPool(prepared, val, compile=False)
    assert isinstance(pool, Pool) and pool.size == 1 and pool.replaced == 0
    pulled = []

    def source():
        for config in configs:
            pulled.append(config.hash)
            yield config

    results = pool.imap_unordered(source())
    first = next(results)
    assert len(pulled) == 1  # the next config is drawn only once there is room for it
    rest = list(results)
    assert [r.config.hash for r in [first, *rest]] == [c.hash for c in configs]
    for r in [first, *rest]:
        assert r.result.val_acc == expected.evaluate(r.config).val_acc
        assert r.node_id.startswith("local:") and r.worker_pid > 0


def test_the_service_stores_and_charges_through_a_local_pool(smoke, tmp_path):
    _, prepared, splits = smoke
    configs = _configs(prepared, 2)
    val = (splits.val_x, splits.val_y)
    with EvaluationStore(tmp_path / "evaluations", "key") as store:
        service = EvaluationService(store, lambda: LocalPool(prepared, val))
        first = service.evaluate([configs[0], configs[1], configs[0]], source="test")
        assert [o.cached for o in first] == [False, False, True]
        assert service.evaluated == 2 and service.requested == 3 and service.workers == 1
        again = service.evaluate(configs, source="test")
    assert all(o.cached for o in again)
    assert len(EvaluationStore(tmp_path / "evaluations", None)) == 2
