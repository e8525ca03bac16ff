"""The report's comparison on hand-made search-cost rows: methods compared on the design points
they share, a point with nothing found within budget at chance accuracy, means and spread over
seeds, and a difference from AQGAN marked only when it is larger than that spread."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from aqgan_ray.errors import UserError
from aqgan_ray.experiment.report import readable_summary, shared, summary_table, tuning_table
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
