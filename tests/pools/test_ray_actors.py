"""Evaluator actors on a real two-node loopback Ray cluster: the same accuracies as an
in-process evaluator, work spread over both nodes, dead actors replaced with nothing lost, and
resource requests the cluster cannot meet refused at once."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from aqgan_ray.config import QuantConfig
from aqgan_ray.errors import UserError
from aqgan_ray.evaluate import Evaluator
from aqgan_ray.pools import ray_actors as pool
from aqgan_ray.pools.ray_actors import EvaluatorPool, PoolSpec


def _configs(prepared, n: int, seed: int = 0) -> list[QuantConfig]:
    rng = np.random.default_rng(seed)
    names = prepared.layer_names
    return [
        QuantConfig(
            names, tuple(rng.integers(4, 9, len(names))), tuple(rng.integers(4, 9, len(names)))
        ).pinned()  # the smoke preset's search space
        for _ in range(n)
    ]


def test_actors_match_in_process_evaluator_on_both_nodes(ray_cluster, smoke):
    _, prepared, splits = smoke
    configs = _configs(prepared, 4)
    val = (splits.val_x, splits.val_y)
    local = Evaluator(prepared, val=val, compile=False)
    expected = {c.hash: local.evaluate(c).val_acc for c in configs}
    with EvaluatorPool(prepared, val, spec=PoolSpec(workers=2)) as p:
        assert len(set(p.worker_pids())) == 2
        results = list(p.imap_unordered(configs))
    assert sorted(r.config.hash for r in results) == sorted(expected)
    for r in results:
        assert abs(r.result.val_acc - expected[r.config.hash]) <= 1 / len(splits.val_y)
    assert len({r.node_id for r in results}) == 2  # SPREAD: one actor per node


def test_killed_actor_is_replaced_and_its_configs_requeued(ray_cluster, smoke):
    _, prepared, splits = smoke
    configs = _configs(prepared, 8, seed=1)
    with EvaluatorPool(prepared, (splits.val_x, splits.val_y), spec=PoolSpec(workers=2)) as p:
        victim = p.worker_pids()[0]
        seen = []
        for r in p.imap_unordered(configs):
            seen.append(r.config.hash)
            if len(seen) == 1:
                os.kill(victim, signal.SIGKILL)  # the OOM killer, or a lost node
        assert p.replaced >= 1
        assert victim not in p.worker_pids()
    assert sorted(seen) == sorted(c.hash for c in configs)  # none lost, none twice


def test_requests_the_cluster_cannot_meet_fail_at_once(ray_cluster):
    start = time.perf_counter()
    with pytest.raises(UserError, match="--workers 3"):
        pool.plan_workers(PoolSpec(workers=3))
    with pytest.raises(UserError, match="no node has that much"):
        pool.plan_workers(PoolSpec(cpus_per_worker=2))
    with pytest.raises(UserError, match="no node has that much"):
        pool.plan_workers(PoolSpec(gpus_per_worker=1))
    assert pool.plan_workers(PoolSpec()) == 2
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize(
    ("address", "fragment"),
    [("127.0.0.1:1", "cannot reach a Ray cluster"), ("no-port", "expected auto, HOST:PORT")],
)
def test_unreachable_or_malformed_address(address, fragment):
    start = time.perf_counter()
    with pytest.raises(UserError, match=fragment):
        pool._check_reachable(address)
    assert time.perf_counter() - start < pool.CONNECT_TIMEOUT_S + 1
