"""The report's comparison on hand-made search-cost rows: methods compared on the design points
they share, a point with nothing found within budget at chance accuracy, means and spread over
seeds, and a difference from AQGAN marked only when it is larger than that spread; and the whole
report built from a run folder of small tables, with and without the cost-to-match columns
added later."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from aqgan_ray.errors import UserError
from aqgan_ray.experiment.report import (
    anytime_band,
    build,
    match_table,
    readable_summary,
    shared,
    summary_table,
    tuning_table,
)
from aqgan_ray.settings import check_seeds


def _row(method: str, budget: float, seed: int, test_acc: float) -> dict:
    found = not math.isnan(test_acc)
    return {
        "method": method, "hw": "bismo-edge", "metric": "energy_mj", "budget": budget,
        "budget_fraction": budget, "seed": seed, "evaluations": 3 if method == "aqgan" else 16,
        "amortized_evaluations": 10.0 if method == "aqgan" else 16.0, "eval_cpu_s": 1.0,
        "val_acc": test_acc, "test_acc": test_acc, "within_budget": found,
    }  # fmt: skip


@pytest.fixture
def cost() -> pd.DataFrame:
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.02), (2, -0.01)):
        rows += [
            _row("aqgan", 0.3, seed, 0.80 + shift),
            _row("aqgan", 0.5, seed, 0.85 + shift),
            _row("uniform", 0.3, seed, 0.60 + shift),
            _row("uniform", 0.5, seed, 0.86 + shift + (0.01 if seed == 1 else -0.01)),
            # random search ran on one point only, and found nothing in one seed
            _row("random", 0.5, seed, math.nan if seed == 2 else 0.5),
        ]
    return pd.DataFrame(rows)


def test_methods_are_compared_on_the_points_they_share(cost):
    assert set(shared(cost)["budget"]) == {0.5}
    assert set(shared(cost, ["aqgan", "uniform"])["budget"]) == {0.3, 0.5}
    table = summary_table(cost, chance=0.1)
    assert list(table.index) == ["aqgan", "uniform", "random"]
    assert (table["points"] == 1).all() and (table["seeds"] == 3).all()
    # nothing within budget counts at chance, not as a missing value
    assert table.loc["random", "mean test acc"] == pytest.approx((0.5 + 0.5 + 0.1) / 3)
    assert table.loc["random", "found within budget"] == pytest.approx(2 / 3)
    assert table.loc["random", "beyond spread"]  # far below AQGAN in every seed
    # uniform and AQGAN trade places by seed at 0.5x: within the spread, not marked
    assert not table.loc["uniform", "beyond spread"]
    wide = summary_table(cost[cost["method"].isin(["aqgan", "uniform"])], chance=0.1)
    assert (wide["points"] == 2).all() and wide.loc["uniform", "beyond spread"]
    text = readable_summary(wide)
    assert "±" in text.loc["aqgan", "mean test acc"] and text.loc["uniform", "vs aqgan"].endswith(
        "*"
    )


def test_one_seed_marks_no_difference(cost):
    table = summary_table(cost[cost["seed"] == 0], chance=0.1)
    assert not table["beyond spread"].any() and table["test acc std"].isna().all()


def test_seeds_are_distinct_non_negative_integers():
    assert check_seeds([0, 1, 2]) == (0, 1, 2)
    for bad, fragment in (([], "at least one"), ([1, 1], "repeat"), ([-1], "non-negative")):
        with pytest.raises(UserError, match=fragment):
            check_seeds(bad)


def test_the_tuning_table_sets_aqgan_against_uniform_the_store_and_the_ilp(cost):
    assert tuning_table(cost) is None  # no store-best rows: nothing to set against
    store = [
        {**_row("store", b, seed, acc), "origin": "store"}
        for seed in (0, 1, 2)
        for b, acc in ((0.3, 0.70), (0.5, 0.86))
    ]
    with_store = pd.concat([cost.assign(origin="generator+tuned"), pd.DataFrame(store)])
    table = tuning_table(with_store)
    assert list(table.index) == ["bismo-edge energy_mj 0.3x", "bismo-edge energy_mj 0.5x"]
    low, high = table.iloc[0], table.iloc[1]
    # AQGAN 0.80 (mean over seeds 0.8033) against the store's 0.70: +10.33 points
    assert low["aqgan margin"] == pytest.approx(100 * (0.80 + 0.01 / 3 - 0.70))
    # at 0.5x uniform (0.86 on average) and the store (0.86) beat AQGAN's 0.8533
    assert high["aqgan margin"] < 0 and high["aqgan origin"] == "generator+tuned"
    assert high["aqgan evals"] == 3
    assert "ilp val" not in table
    # the ILP beside them where it ran on the same points: its own column, the margin unchanged
    ilp = [_row("ilp", b, seed, 0.88) for seed in (0, 1, 2) for b in (0.3, 0.5)]
    table = tuning_table(pd.concat([with_store, pd.DataFrame(ilp)]))
    assert table.iloc[0]["aqgan margin"] == pytest.approx(low["aqgan margin"])
    assert table.iloc[0]["aqgan - ilp"] == pytest.approx(100 * (0.80 + 0.01 / 3 - 0.88))
    assert table.iloc[1]["ilp test"] == pytest.approx(0.88)


# A run folder of two seeds: AQGAN, store-best and uniform at two points, random search and HAQ
# at one; random search never matches AQGAN in seed 1, within its 6 evaluations.
TO_MATCH = {("random", 0): 5.0, ("random", 1): math.nan, ("haq", 0): 3.0, ("haq", 1): 4.0}
BREAK_EVEN = {("random", 0): 12.0, ("random", 1): 9.5, ("haq", 0): 7.0, ("haq", 1): 8.0}
LENGTH = {("random", 0): 8, ("random", 1): 6, ("haq", 0): 8, ("haq", 1): 8}


def _run_row(method: str, fraction: float, seed: int) -> dict:
    evaluations = LENGTH.get((method, seed), {"aqgan": 2, "store": 1}.get(method, 2))
    to_match = TO_MATCH.get((method, seed), math.nan)
    baseline = method not in ("aqgan", "store")
    return {
        **_row(method, 4 * fraction, seed, 0.7 + 0.1 * fraction + 0.01 * seed),
        "budget_fraction": fraction, "evaluations": evaluations,
        "amortized_evaluations": 40.0 if method == "aqgan" else float(evaluations),
        "eval_cpu_s": 0.5 * evaluations, "evaluations_to_match": to_match,
        "evaluations_to_match_0_5": to_match, "eval_cpu_s_to_match": 0.5 * to_match,
        # uniform costs no more per point than AQGAN's marginal: AQGAN never breaks even
        "break_even_points": BREAK_EVEN.get((method, seed), math.inf if baseline else math.nan),
        "origin": method,
    }  # fmt: skip


def _trace(method: str, fraction: float, seed: int, length: int) -> list[dict]:
    best, rows = math.nan, []
    for index in range(length):
        within = not (method == "haq" and seed == 0 and index == 0)  # nothing found at first
        val_acc = 0.5 + 0.04 * index
        if within:
            best = val_acc if math.isnan(best) else max(best, val_acc)
        rows.append({
            "method": method, "hw": "bismo-edge", "metric": "energy_mj", "budget": 4 * fraction,
            "budget_fraction": fraction, "seed": seed, "index": index, "val_acc": val_acc,
            "within_budget": within, "best_so_far_val_acc": best, "eval_s": 0.5, "origin": method,
        })  # fmt: skip
    return rows


@pytest.fixture
def run_dir(tmp_path) -> Path:
    cost, traces = [], []
    for seed in (0, 1):
        for fraction in (0.25, 0.5):
            for method in ("aqgan", "store", "uniform"):
                cost.append(_run_row(method, fraction, seed))
                traces += _trace(method, fraction, seed, cost[-1]["evaluations"])
        for method in ("haq", "random"):
            cost.append(_run_row(method, 0.5, seed))
            traces += _trace(method, 0.5, seed, LENGTH[method, seed])
        # a method the registry does not know (a table from another version): left out
        cost.append(_run_row("mystery", 0.5, seed))
        traces += _trace("mystery", 0.5, seed, cost[-1]["evaluations"])
    pd.DataFrame(cost).to_parquet(tmp_path / "search_cost.parquet")
    pd.DataFrame(traces).to_parquet(tmp_path / "traces.parquet")
    return tmp_path


def test_anytime_band_spans_only_what_every_seed_reached(run_dir):
    traces = pd.read_parquet(run_dir / "traces.parquet")
    random_search = anytime_band(traces[traces["method"] == "random"])
    assert list(random_search.index) == [1, 2, 3, 4, 5, 6]  # seed 1 stopped after 6
    # HAQ's seed 0 found nothing within budget in its first evaluation
    band = anytime_band(traces[traces["method"] == "haq"])
    assert list(band.index) == list(range(2, 9))
    assert band.loc[2, "low"] == pytest.approx(0.54) and band.loc[2, "high"] == pytest.approx(0.54)


def test_the_report_shows_cost_to_match_and_break_even_over_seeds(run_dir):
    text = build(run_dir).read_text()
    for name in ("anytime.png", "cost_to_match.png", "accuracy_vs_budget.png", "search_cost.png"):
        assert (run_dir / name).is_file(), name
    assert "![evaluations to match AQGAN](cost_to_match.png)" in text
    assert "break_even_points" in text
    table = match_table(pd.read_parquet(run_dir / "search_cost.parquet"))
    assert "mystery" not in set(table["method"]) and "mystery" not in text
    never = table[(table["method"] == "random") & (table["seed"] == 1)].iloc[0]
    assert never["evaluations_to_match"] == "> 6" and never["evaluations_to_match_0_5"] == "> 6"
    assert never["eval_cpu_s_to_match"] == "> 3" and never["break_even_points"] == "<= 9.5"
    matched = table[(table["method"] == "haq") & (table["seed"] == 1)].iloc[0]
    assert matched["evaluations_to_match"] == "4" and matched["break_even_points"] == "8"
    assert set(table.loc[table["method"] == "uniform", "break_even_points"]) == {"never"}
    assert "| > 6 | > 6 | > 3 | <= 9.5 |" in text
    # per point, mean ± std over the two seeds of each method's validation and test accuracy
    assert "| bismo-edge energy_mj 0.5x | haq | 2/2 | 0.7550 ± 0.0071 | 0.7550 ± 0.0071 |" in text


@pytest.mark.parametrize(
    "missing",
    [
        ["evaluations_to_match_0_5", "eval_cpu_s_to_match", "break_even_points"],
        ["evaluations_to_match", "evaluations_to_match_0_5", "eval_cpu_s_to_match",
         "break_even_points"],
    ],
)  # fmt: skip
def test_the_report_builds_from_a_table_without_the_later_columns(run_dir, missing):
    path = run_dir / "search_cost.parquet"
    pd.read_parquet(path).drop(columns=missing).to_parquet(path)
    text = build(run_dir).read_text()
    assert "break_even_points" not in text and (run_dir / "anytime.png").is_file()
    has_match = "evaluations_to_match" not in missing
    assert ("## Cost to match AQGAN" in text) == has_match
    assert (run_dir / "cost_to_match.png").is_file() == has_match
    assert ("| > 6 |" in text) == has_match
