"""Collection on the loopback cluster: grows the store to exactly N distinct configs, resumes
after Ctrl-C evaluating only what is missing, and survives a killed evaluator with no row
lost or duplicated. The service answers stored configs from the store and charges them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from aqgan_ray.collect import collect, uniform_configs
from aqgan_ray.config import QuantConfig
from aqgan_ray.evaluate import evaluation_key
from aqgan_ray.pools.ray_actors import EvaluatorPool, PoolSpec
from aqgan_ray.sampling import SamplerSpec
from aqgan_ray.service import EvaluationService
from aqgan_ray.store import EvaluationStore


@pytest.fixture(scope="module")
def actors(ray_cluster, smoke):
    _, prepared, splits = smoke
    with EvaluatorPool(prepared, (splits.val_x, splits.val_y), spec=PoolSpec(workers=2)) as p:
        p.worker_pids()
        yield p


def _store(tmp_path, smoke) -> EvaluationStore:
    _, prepared, splits = smoke
    return EvaluationStore(
        tmp_path / "evaluations", evaluation_key(prepared, splits.val_x, splits.val_y)
    )


def _collect(service, smoke, samples: int, **kwargs):
    exp, prepared, _ = smoke
    return collect(
        service,
        prepared.layer_names,
        exp.quant.bit_choices,
        samples,
        exp.seed,
        progress=False,
        keep_first_last=exp.quant.keep_first_last,
        **kwargs,
    )


def _raw_hashes(root) -> list[str]:
    """Every row in every part file, before any deduplication."""
    return [
        h
        for p in sorted(root.glob("part-*.parquet"))
        for h in pq.read_table(p)["config_hash"].to_pylist()
    ]


def test_collect_grows_to_n_then_does_nothing(tmp_path, smoke, actors):
    store = _store(tmp_path, smoke)
    stats = _collect(EvaluationService(store, actors), smoke, 8)
    assert stats.evaluated_now == 8 and stats.total == 8 and len(stats.node_ids) == 2
    raw = _raw_hashes(store.root)
    assert len(raw) == len(set(raw)) == 8
    rows = _store(tmp_path, smoke).rows()
    assert {r["source"] for r in rows} == {"collect"}
    assert {r["sampler"] for r in rows} <= {"uniform", "level-jitter", "random", "stratified"}
    # the uniform configs first: AQGAN's floor at every budget (aqgan.hw_tune)
    exp, prepared, _ = smoke
    anchors = uniform_configs(prepared.layer_names, exp.quant.bit_choices, True)
    assert len(anchors) == len(exp.quant.bit_choices)
    assert {c.hash for c in anchors} == {
        r["config_hash"] for r in rows if r["sampler"] == "uniform"
    }
    assert all(0.0 <= r["val_acc"] <= 1.0 and r["eval_s"] > 0 for r in rows)
    again = _collect(EvaluationService(_store(tmp_path, smoke), actors), smoke, 8)
    assert again.evaluated_now == 0 and again.total == 8
    assert len(_raw_hashes(store.root)) == 8


def test_interrupted_collect_keeps_results_and_resumes(tmp_path, smoke, actors):
    def stop_after_three(outcome, seen=[]):  # noqa: B006 - a counter local to this test
        seen.append(outcome)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _collect(
            EvaluationService(_store(tmp_path, smoke), actors),
            smoke,
            10,
            on_result=stop_after_three,
        )
    kept = _store(tmp_path, smoke)
    assert len(kept) == 3  # what completed before Ctrl-C was written
    resumed = _collect(EvaluationService(kept, actors), smoke, 10)
    assert resumed.evaluated_now == 7 and resumed.total == 10
    raw = _raw_hashes(kept.root)
    assert len(raw) == len(set(raw)) == 10


def test_the_store_depends_on_seed_and_size_not_on_arrival_order(tmp_path, smoke, actors):
    """Two evaluators return in timing order; draws happen in rounds, so two collections of
    the same size hold the same configs, and one resumed at a round boundary matches too."""
    spec = SamplerSpec(warmup=4, stratified_share=0.6, round_size=4)
    one = _store(tmp_path / "one", smoke)
    _collect(EvaluationService(one, actors), smoke, 12, spec=spec)
    two = _store(tmp_path / "two", smoke)
    _collect(EvaluationService(two, actors), smoke, 8, spec=spec)
    _collect(EvaluationService(two, actors), smoke, 12, spec=spec)
    samplers = {r["sampler"] for r in one.rows()}
    assert "stratified" in samplers  # later rounds were drawn from earlier results
    assert {r["config_hash"] for r in one.rows()} == {r["config_hash"] for r in two.rows()}
    assert len(one) == 12


def test_killed_evaluator_still_gives_exactly_n_rows(tmp_path, smoke, actors):
    victim = actors.worker_pids()[1]

    def kill_once(outcome, seen=[]):  # noqa: B006
        seen.append(outcome)
        if len(seen) == 2:
            os.kill(victim, signal.SIGKILL)

    store = _store(tmp_path, smoke)
    before = actors.replaced
    stats = _collect(EvaluationService(store, actors), smoke, 10, on_result=kill_once)
    assert stats.total == 10 and actors.replaced > before
    raw = _raw_hashes(store.root)
    assert len(raw) == len(set(raw)) == 10


def test_service_answers_stored_configs_from_the_store_and_charges_them(tmp_path, smoke, actors):
    _, prepared, _ = smoke
    store = _store(tmp_path, smoke)
    service = EvaluationService(store, actors)
    names = prepared.layer_names
    eight, six = QuantConfig.uniform(names, 8), QuantConfig.uniform(names, 6).pinned()
    first = service.evaluate([eight, eight, six], source="uniform")
    assert [o.cached for o in first] == [False, True, False]  # asked twice, evaluated once
    assert first[0].val_acc == first[1].val_acc > 0.8
    second = service.evaluate([six], source="optuna")
    assert second[0].cached and second[0].val_acc == first[2].val_acc
    assert service.requested == 4 and service.evaluated == 2
    store.close()
    assert sorted(_raw_hashes(store.root)) == sorted([eight.hash, six.hash])


def test_other_methods_rows_are_not_collected_nor_learnt_from(tmp_path, smoke, actors):
    """Evidence by source: rows a baseline stored first neither count towards N nor reach the
    sampler, so the collection is the one an empty store would have drawn."""
    exp, prepared, _ = smoke
    names = prepared.layer_names
    store = _store(tmp_path / "a", smoke)
    service = EvaluationService(store, actors)
    n = len(names)  # configs no sampler draw would produce: alternating bits
    others = [
        QuantConfig(
            names, (b, 2) * (n // 2) + (b,) * (n % 2), (3, b) * (n // 2) + (3,) * (n % 2)
        ).pinned()
        for b in (4, 6, 8)
    ]
    service.evaluate(others, source="random")
    stats = _collect(service, smoke, 6)
    assert stats.total == 6 and stats.evaluated_now == 6 and len(store) == 9
    rows = store.rows()
    collected = {r["config_hash"] for r in rows if r["source"] == "collect"}
    assert len(collected) == 6 and not collected & {c.hash for c in others}
    alone = _store(tmp_path / "b", smoke)
    _collect(EvaluationService(alone, actors), smoke, 6)
    assert {r["config_hash"] for r in alone.rows()} == collected
    assert all(r["w_bits"][0] == r["w_bits"][-1] == r["a_bits"][-1] == 8 for r in rows)


# A collection through the evaluation service on a synthetic in-process pool (no Ray, no model:
# the accuracy is a function of the bits), stopped by SIGTERM as the CLI stops it: the signal
# raises in the driver and unwinds the stack like Ctrl-C.
SIGTERM_COLLECTION = """
import os, signal, sys, time
from aqgan_ray.collect import collect
from aqgan_ray.evaluate import EvalResult
from aqgan_ray.pools.base import Evaluated
from aqgan_ray.service import EvaluationService
from aqgan_ray.store import EvaluationStore

class BitsPool:
    size, replaced = 1, 0

    def imap_unordered(self, configs):
        for config in configs:
            time.sleep(0.01)
            acc = sum(config.w_bits) / (8 * len(config.w_bits))
            yield Evaluated(config, EvalResult(config.hash, acc, None, 0.01), "node", os.getpid())

    def close(self):
        pass

def stop(*_):
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, stop)
store = EvaluationStore(sys.argv[1], "key")  # default buffering: 64 rows or 5 seconds
told = lambda outcome: print("told", outcome.config.hash, flush=True)
collect(EvaluationService(store, BitsPool()), ("a", "b", "c", "d"), (2, 4, 8), 5_000, 0,
        progress=False, on_result=told)
"""


def test_sigterm_during_collection_keeps_every_told_row(tmp_path):
    root = tmp_path / "evaluations"
    child = subprocess.Popen([sys.executable, "-c", SIGTERM_COLLECTION, str(root)],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    told = [child.stdout.readline().split()[1] for _ in range(30)]
    child.send_signal(signal.SIGTERM)
    rest, _ = child.communicate(timeout=120)
    told += [line.split()[1] for line in rest.splitlines()]
    assert child.returncode != 0  # stopped, not finished
    stored = EvaluationStore(root, "key")
    assert {h for h in told if h not in stored} == set()
    assert len(_raw_hashes(root)) == len(stored)  # each row written once
