"""The search interface's shared pieces: HAQ's budget enforcement (used by HAQ, TPE and random
search) on a hand-made per-layer cost table, and the checkpoint that a search refuses to
continue under other settings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aqgan_ray.cost import Budget, parse_budget
from aqgan_ray.cost_table import TableModel
from aqgan_ray.errors import UserError
from aqgan_ray.layers import Layer
from aqgan_ray.search import DesignPoint, _load_checkpoint, _save_checkpoint, rng_restore, rng_state

LAYERS = tuple(
    Layer(f"l{i}", "conv", 4, 4, 3, 3, 1, 1, 8, 8, 8, 8, 144, 144 * 64) for i in range(3)
)
CHOICES = (2, 3, 4)


@pytest.fixture
def table(tmp_path) -> TableModel:
    """latency_ms of a layer = w_bits x a_bits x (its index + 1): the last layer is dearest."""
    rows = [
        {"layer": f"l{i}", "w_bits": w, "a_bits": a, "latency_ms": float(w * a * (i + 1))}
        for i in range(3)
        for w in CHOICES
        for a in CHOICES
    ]
    path = tmp_path / "latency.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return TableModel.load(str(path))


def _point(table: TableModel, budget_ms: float) -> DesignPoint:
    return DesignPoint(LAYERS, CHOICES, table, Budget("latency_ms", budget_ms))


def test_repair_lowers_from_the_last_layer_activation_first(table):
    full = DesignPoint(LAYERS, CHOICES, table, Budget("latency_ms", 1e9)).config((4,) * 3, (4,) * 3)
    assert _point(table, 96.0).cost(full) == 16 * (1 + 2 + 3)
    # 96 -> l2.a 4->3: 84. One step is enough.
    fixed = _point(table, 90.0).repair(full)
    assert (fixed.w_bits, fixed.a_bits) == ((4, 4, 4), (4, 4, 3))
    # 96 -> l2.a: 84 -> l2.w: 75 -> l1.a: 67 -> l1.w: 61 -> l0.a: 57, which fits.
    fixed = _point(table, 57.0).repair(full)
    assert (fixed.w_bits, fixed.a_bits) == ((4, 3, 3), (3, 3, 3))
    assert _point(table, 57.0).cost(fixed) == 57


def test_repair_keeps_a_fitting_config_and_stops_at_the_lowest_bits(table):
    point = _point(table, 24.0)  # exactly the all-2-bit cost: 4 x (1 + 2 + 3)
    cheap = point.config((2, 2, 3), (2, 2, 2))
    assert _point(table, 1e9).repair(cheap) == cheap
    fixed = point.repair(point.config((4,) * 3, (4,) * 3))
    assert (fixed.w_bits, fixed.a_bits) == ((2,) * 3, (2,) * 3)
    assert point.fits(fixed)


def test_budgets_below_the_cheapest_config_are_refused_before_any_search(table):
    with pytest.raises(UserError, match="below the cheapest"):
        parse_budget("latency_ms=23", table, LAYERS, min(CHOICES))


def test_a_checkpoint_is_continued_only_with_the_same_settings(tmp_path):
    from baselines.random_search import RandomSearch

    path = tmp_path / "state.pt"
    identity = {"method": "random", "hw": "bitfusion", "seed": 3}
    rng = np.random.default_rng(5)
    proposer = RandomSearch.__new__(RandomSearch)
    proposer.rng, proposer.repaired = rng, 0
    _save_checkpoint(path, identity, [{"index": 0}], proposer)
    state = _load_checkpoint(path, identity)
    assert state["trace"] == [{"index": 0}]
    with pytest.raises(UserError, match="another seed"):
        _load_checkpoint(path, {**identity, "seed": 4})
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        _load_checkpoint(path, identity)


def test_rng_state_round_trips_through_plain_values():
    rng = np.random.default_rng(11)
    rng.random(7)
    saved = rng_state(rng)
    expected = rng.random(3)
    other = np.random.default_rng(0)
    rng_restore(other, saved)
    assert np.array_equal(other.random(3), expected)


# --------------------------------------------------------------------------------------------
# Searches through the real evaluators (loopback Ray cluster, smoke model)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(ray_cluster, smoke, tmp_path_factory):
    from aqgan_ray.evaluate import evaluation_key
    from aqgan_ray.pools.ray_actors import EvaluatorPool, PoolSpec
    from aqgan_ray.service import EvaluationService
    from aqgan_ray.store import EvaluationStore

    _, prepared, splits = smoke
    root = tmp_path_factory.mktemp("search") / "evaluations"
    store = EvaluationStore(root, evaluation_key(prepared, splits.val_x, splits.val_y))
    with EvaluatorPool(prepared, (splits.val_x, splits.val_y), spec=PoolSpec(workers=2)) as pool:
        yield EvaluationService(store, pool)
    store.close()


@pytest.fixture(scope="module")
def smoke_point(smoke) -> DesignPoint:
    from aqgan_ray.cost import get_hw_model

    exp, prepared, _ = smoke
    choices = exp.quant.bit_choices
    hw = get_hw_model("bismo-edge", prepared.layers, choices)
    pinned = exp.quant.keep_first_last  # HAQ's search space, as the evaluator expects
    budget = parse_budget("latency_ms=0.5x", hw, prepared.layers, keep_first_last=pinned)
    return DesignPoint(tuple(prepared.layers), tuple(choices), hw, budget, pinned)


def _identity(method: str, point: DesignPoint) -> dict:
    return {"method": method, "hw": point.hw.name, "metric": "latency_ms",
            "budget": point.budget.value, "seed": 0}  # fmt: skip


def _interrupt_at(n: int):
    seen = []

    def on_result(row: dict) -> None:
        seen.append(row)
        if len(seen) == n:
            raise KeyboardInterrupt

    return on_result


def test_haq_interrupted_halfway_ends_with_the_same_episodes(service, smoke, smoke_point, tmp_path):
    import pyarrow.parquet as pq

    from aqgan_ray.search import run_search
    from baselines.haq import Haq, HaqArgs

    fp = smoke[1].fp_val_acc
    args, identity = HaqArgs(warmup=2), _identity("haq", smoke_point)

    def agent() -> Haq:
        return Haq(smoke_point, seed=0, fp_val_acc=fp, args=args)

    run_dir = tmp_path / "haq"
    with pytest.raises(KeyboardInterrupt):
        run_search(agent(), service, smoke_point, 6, run_dir, identity, on_result=_interrupt_at(3))
    resumed_agent = agent()
    resumed = run_search(resumed_agent, service, smoke_point, 6, run_dir, identity)
    assert resumed.resumed_from == 2  # the 3rd result arrived, but was never told: asked again
    assert [r["index"] for r in resumed.trace] == list(range(6))
    assert resumed_agent.summary()["episodes"] == 6
    assert all(r["within_budget"] for r in resumed.trace)
    assert resumed.best["val_acc"] == max(r["val_acc"] for r in resumed.trace)
    table = pq.read_table(run_dir / "trace.parquet")
    assert table.num_rows == 6 and table.schema.metadata[b"aqgan_ray.schema_version"] == b"2"

    # Uninterrupted, same seed: the same configs in the same order, now all from the store.
    straight = run_search(agent(), service, smoke_point, 6, tmp_path / "straight", identity)
    assert [r["config_hash"] for r in straight.trace] == [r["config_hash"] for r in resumed.trace]
    assert straight.evaluated_now == 0 and all(r["cached"] for r in straight.trace)

    with pytest.raises(UserError, match="another seed"):
        run_search(agent(), service, smoke_point, 6, run_dir, {**identity, "seed": 1})


def test_tpe_resumes_through_optuna_storage(service, smoke_point, tmp_path):
    from optuna.trial import TrialState

    from aqgan_ray.search import run_search
    from baselines.optuna_tpe import OptunaTPE

    run_dir, identity = tmp_path / "tpe", _identity("optuna", smoke_point)

    def tpe() -> OptunaTPE:
        return OptunaTPE(smoke_point, seed=0, storage_path=run_dir / "optuna.journal")

    with pytest.raises(KeyboardInterrupt):
        run_search(tpe(), service, smoke_point, 6, run_dir, identity, 2, _interrupt_at(3))
    resumed_tpe = tpe()
    result = run_search(resumed_tpe, service, smoke_point, 6, run_dir, identity, batch=2)
    assert result.resumed_from == 2 and len(result.trace) == 6
    trials = sorted(resumed_tpe.study.trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6  # none lost, none extra
    assert [t.user_attrs["config_hash"] for t in trials] == [r["config_hash"] for r in result.trace]
    assert [t.value for t in trials] == [r["val_acc"] for r in result.trace]


@pytest.mark.parametrize("method", ["uniform", "random"])
def test_baselines_find_a_config_within_budget_and_pay_for_cache_hits(
    method, service, smoke, smoke_point, tmp_path
):
    from aqgan_ray.search import run_search
    from baselines import METHODS, SearchSetup

    exp, prepared, _ = smoke
    fp = prepared.fp_val_acc

    def make(name, run_dir, batch=1):
        return METHODS[name].build(SearchSetup(smoke_point, 0, run_dir, fp, batch, exp))

    def search(run_dir):
        proposer = make(method, run_dir, batch=2)
        return run_search(
            proposer, service, smoke_point, 4, run_dir, _identity(method, smoke_point), 2
        )

    first = search(tmp_path / "a")
    assert first.best is not None and smoke_point.fits(
        smoke_point.config(first.best["w_bits"], first.best["a_bits"])
    )
    accs = [r["val_acc"] for r in first.trace]
    if method == "random":
        assert len(first.trace) == 4
    else:  # widest fitting width first, one narrower each time, until a drop or the end
        fitting = [c.w_bits[1] for c in make("uniform", tmp_path).candidates]
        widths = [r["w_bits"][1] for r in first.trace]
        assert widths == fitting[: len(widths)]
        assert all(a <= b for a, b in zip(accs[:-2], accs[1:-1], strict=True))
        assert accs[-1] < accs[-2] or len(widths) in (4, len(fitting))
    again = search(tmp_path / "b")  # same seed, new run: every config is in the store
    assert again.evaluated_now == 0
    assert len(again.trace) == len(first.trace)  # and every one is charged
    assert all(r["cached"] for r in again.trace)
