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
    # The batch killed before its checkpoint (trials 2, 3) failed, then asked again as it was.
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] * 2 + [
        TrialState.COMPLETE
    ] * 4
    assert [t.params for t in trials[2:4]] == [t.params for t in trials[4:6]]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]  # none lost, none extra
    hashes = [r["config_hash"] for r in result.trace]
    assert [t.user_attrs["config_hash"] for t in complete] == hashes
    assert [t.value for t in complete] == [r["val_acc"] for r in result.trace]


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


# --------------------------------------------------------------------------------------------
# A driver killed at every point of the loop (synthetic evaluator in this process, no Ray)
# --------------------------------------------------------------------------------------------


class ScoringPool:
    """An evaluator pool that scores configs with the synthetic accuracy function in this
    process and dies (``KeyboardInterrupt``: Ctrl-C, a killed driver) at its ``die_at``-th
    evaluation, as a real pool would pass the interruption on."""

    size, replaced = 1, 0

    def __init__(self, synthetic, die_at: int | None = None):
        self.synthetic, self.die_at, self.calls = synthetic, die_at, 0

    def imap_unordered(self, configs):
        import os

        from aqgan_ray.evaluate import EvalResult
        from aqgan_ray.pools.base import Evaluated

        for config in configs:
            self.calls += 1
            if self.calls == self.die_at:
                raise KeyboardInterrupt
            result = EvalResult(config.hash, float(self.synthetic.accuracy(config)), None, 1e-3)
            yield Evaluated(config, result, "synthetic", os.getpid())

    def close(self) -> None:
        """Nothing runs outside this process."""


def _proposer(method: str, point: DesignPoint, folder, batch: int):
    from baselines.haq import Haq, HaqArgs
    from baselines.optuna_tpe import OptunaTPE
    from baselines.random_search import RandomSearch

    if method == "random":
        return RandomSearch(point, seed=7)
    if method == "haq":  # small networks: this tests the loop, not DDPG
        args = HaqArgs(warmup=2, hidden=16, batch_size=8, episodes_per_ask=batch)
        return Haq(point, seed=7, fp_val_acc=0.85, args=args)
    return OptunaTPE(point, seed=7, storage_path=folder / "optuna.journal")


def _run(method, point, synthetic, folder, evaluations, batch, monkeypatch, kill=None):
    """One driver run of a search in ``folder`` against the store in ``folder/evaluations``;
    ``kill`` = (where, n) interrupts it: at the pool's ``n``-th evaluation (``evaluate``), at
    the ``n``-th result (``result``), just before (``checkpoint``) or just after (``saved``) the
    checkpoint of ``n`` rows is written, or just before the trace of ``n`` rows is
    (``trace``)."""
    import aqgan_ray.search as search
    from aqgan_ray.service import EvaluationService
    from aqgan_ray.store import EvaluationStore

    where, n = kill or (None, None)
    save, write = search._save_checkpoint, search.write_trace

    def save_or_die(path, identity, trace, proposer):
        if where == "checkpoint" and len(trace) == n:
            raise KeyboardInterrupt
        save(path, identity, trace, proposer)
        if where == "saved" and len(trace) == n:
            raise KeyboardInterrupt

    def write_or_die(trace, identity, path):
        if where == "trace" and len(trace) == n:
            raise KeyboardInterrupt
        return write(trace, identity, path)

    monkeypatch.setattr(search, "_save_checkpoint", save_or_die)
    monkeypatch.setattr(search, "write_trace", write_or_die)
    seen = []

    def on_result(row):
        seen.append(row)
        if where == "result" and len(seen) == n:
            raise KeyboardInterrupt

    pool = ScoringPool(synthetic, n if where == "evaluate" else None)
    store = EvaluationStore(folder / "evaluations", "synthetic")
    proposer = _proposer(method, point, folder / "search", batch)
    try:
        return proposer, search.run_search(
            proposer, EvaluationService(store, pool), point, evaluations, folder / "search",
            _identity(method, point), batch, on_result,
        )  # fmt: skip
    finally:
        store.close()  # as leaving its `with` block on Ctrl-C does
        monkeypatch.undo()


# Each entry is one driver run that is killed; a clean run then finishes the search. The runs
# reach every point of the loop: before the first checkpoint, mid-evaluation, between a result
# and ``tell``, between ``tell`` and the checkpoint, between the checkpoint and what follows it
# (Optuna's journal, the trace), and a kill at the last trace write of a finished search.
KILLS = [("evaluate", 1), ("result", 3), ("checkpoint", 4), ("saved", 8), ("trace", 10),
         ("evaluate", 2), ("saved", 12), ("trace", 14)]  # fmt: skip


@pytest.mark.parametrize("method", ["random", "haq", "optuna", "optuna-sampler", "random-sampler"])
def test_a_search_killed_anywhere_charges_every_config_once(
    method, synthetic, point_at, tmp_path, monkeypatch
):
    import torch
    from optuna.trial import TrialState

    from aqgan_ray.store import EvaluationStore

    point, n, batch = point_at("latency_ms=0.5x"), 14, 2
    _, straight = _run(method, point, synthetic, tmp_path / "straight", n, batch, monkeypatch)
    folder = tmp_path / "killed"
    for kill in KILLS:
        with pytest.raises(KeyboardInterrupt):
            _run(method, point, synthetic, folder, n, batch, monkeypatch, kill)
    trace_file = folder / "search" / "trace.parquet"
    assert len(pd.read_parquet(trace_file)) < n  # the last kill left the trace stale
    proposer, result = _run(method, point, synthetic, folder, n, batch, monkeypatch)
    assert result.evaluated_now == 0 and result.resumed_from == n  # the checkpoint was whole

    hashes = [r["config_hash"] for r in result.trace]
    assert [r["index"] for r in result.trace] == list(range(n))
    assert hashes == [r["config_hash"] for r in straight.trace]  # seeded: the same asks
    assert [r["val_acc"] for r in result.trace] == [r["val_acc"] for r in straight.trace]
    assert len(set(hashes)) == n  # no config charged twice
    # one source of truth: the trace file is the checkpoint's trace
    state = torch.load(folder / "search" / "state.pt", weights_only=True)
    assert pd.read_parquet(trace_file)["config_hash"].tolist() == hashes
    assert [r["config_hash"] for r in state["trace"]] == hashes
    # nothing was evaluated that the trace does not charge
    stored = EvaluationStore(folder / "evaluations", "synthetic").rows()
    assert {r["config_hash"] for r in stored} <= set(hashes)
    if method.startswith("optuna"):  # TPE learned from exactly what the trace charges, in order
        complete = [t for t in proposer.study.trials if t.state == TrialState.COMPLETE]
        assert [t.user_attrs["config_hash"] for t in complete] == hashes
        assert [t.value for t in complete] == [r["val_acc"] for r in result.trace]
        assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL)
                   for t in proposer.study.trials)  # fmt: skip


def test_tpe_killed_before_its_first_checkpoint_charges_no_config_twice(
    synthetic, point_at, tmp_path, monkeypatch
):
    """Issue 22's case: killed before the first checkpoint and again later. The rerun used to
    ask new trials beside the dead run's (left running, which TPE's constant liar learns from)
    and the next resume replayed trials already in the trace: 6 distinct configs in 8 rows."""
    from optuna.trial import TrialState

    point, n, batch = point_at("latency_ms=0.5x"), 8, 2
    _, straight = _run("optuna", point, synthetic, tmp_path / "straight", n, batch, monkeypatch)
    for kill in [("evaluate", 1), ("evaluate", 5)]:
        with pytest.raises(KeyboardInterrupt):
            _run("optuna", point, synthetic, tmp_path, n, batch, monkeypatch, kill)
    tpe, result = _run("optuna", point, synthetic, tmp_path, n, batch, monkeypatch)
    hashes = [r["config_hash"] for r in result.trace]
    assert len(set(hashes)) == n and hashes == [r["config_hash"] for r in straight.trace]
    states = [t.state for t in tpe.study.trials]
    assert states.count(TrialState.COMPLETE) == n  # the dead runs' trials: failed, asked again
    assert set(states) == {TrialState.COMPLETE, TrialState.FAIL}
