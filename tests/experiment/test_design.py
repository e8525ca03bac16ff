"""The runner's accounting, on hand-made traces: design points and their subset, cost-to-match,
and the one-time costs (AQGAN's, the ILP's sensitivity pass) shared by the points they served."""

from __future__ import annotations

import math
import warnings

import pytest

from aqgan_ray.cost import get_hw_model, parse_budget
from aqgan_ray.errors import UserError
from aqgan_ray.experiment.design import DesignWarning, Planned, design_points, runs_on
from aqgan_ray.experiment.ledger import (
    break_even,
    cost_rows,
    evaluations_to_match,
    one_time_cost,
    sensitivity_cost,
    trace_rows,
)
from aqgan_ray.search import DesignPoint, SearchResult
from aqgan_ray.settings import load_experiment


def test_design_points_are_each_model_with_its_budgets_and_the_searching_subset(smoke_layers):
    exp = load_experiment("smoke")
    planned = design_points(exp, smoke_layers)
    # Both BISMOs take the two plain budgets; Bit Fusion its own two (prefixed) latency budgets.
    assert [p.label for p in planned] == [
        "bismo-edge energy_mj=0.35x", "bismo-edge energy_mj=0.5x",
        "bismo-cloud energy_mj=0.35x", "bismo-cloud energy_mj=0.5x",
        "bitfusion latency_ms=0.7x", "bitfusion latency_ms=0.85x",
    ]  # fmt: skip
    assert all(p.merged == () for p in planned)
    subset = [p for p in planned if runs_on("haq", p, exp)]
    assert [(p.hw_name, p.budget_text) for p in subset] == [("bismo-edge", "energy_mj=0.5x")]
    assert all(runs_on("aqgan", p, exp) and runs_on("uniform", p, exp) for p in planned)
    assert len({p.slug() for p in planned}) == len(planned)


def test_a_budget_no_config_meets_names_its_design_point(smoke_layers, tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text(
        'name = "p"\n[design]\nhw = ["bismo-edge", "bitfusion"]\nbudgets = ["energy_mj=0.15x"]\n'
    )
    exp = load_experiment(path=str(preset))
    with pytest.raises(UserError, match="design point bitfusion energy_mj=0.15x: .*below"):
        design_points(exp, smoke_layers)


def _row(index: int, acc: float, fits: bool = True, eval_s: float = 2.0) -> dict:
    return {
        "index": index,
        "config_hash": f"h{index}",
        "w_bits": [8],
        "a_bits": [8],
        "val_acc": acc,
        "cost": 1.0,
        "within_budget": fits,
        "cached": False,
        "eval_s": eval_s,
        "elapsed_s": 3.0 * (index + 1),
        "best_so_far_val_acc": acc,
    }


def test_evaluations_to_match_counts_until_the_first_fitting_config_that_reaches():
    trace = [_row(0, 0.5), _row(1, 0.9, fits=False), _row(2, 0.81), _row(3, 0.95)]
    assert evaluations_to_match(trace, 0.8) == 3
    assert math.isnan(evaluations_to_match(trace, 0.99))


def test_one_time_cost_is_shared_by_the_design_points_aqgan_served(smoke_layers):
    exp = load_experiment("smoke")
    hw = get_hw_model("bismo-edge", smoke_layers, exp.quant.bit_choices)
    points = [
        Planned("bismo-edge", text, DesignPoint(tuple(smoke_layers), exp.quant.bit_choices, hw,
                parse_budget(text, hw, smoke_layers)), 0)
        for text in ("latency_ms=0.4x", "latency_ms=0.6x")
    ]  # fmt: skip
    store = [
        {"config_hash": "c1", "source": "collect", "eval_s": 1.0},
        {"config_hash": "c2", "source": "collect", "eval_s": 3.0},
        {"config_hash": "f1", "source": "aqgan", "eval_s": 5.0},
        {"config_hash": "x", "source": "haq", "eval_s": 7.0},
    ]
    one = one_time_cost(store, [{"config_hash": "f1"}], train_s=10.0)
    assert (one.evaluations, one.eval_cpu_s) == (3, 9.0)
    results = {
        ("aqgan", points[0]): SearchResult([_row(0, 0.8), _row(1, 0.7)], 0, 2, 1.0),
        ("aqgan", points[1]): SearchResult([_row(0, 0.85)], 0, 1, 1.0),
        ("haq", points[0]): SearchResult([_row(0, 0.6), _row(1, 0.82), _row(2, 0.7)], 0, 3, 1.0),
        ("ilp", points[0]): SearchResult([_row(0, 0.81)], 0, 1, 1.0, {"decide_s": 0.25}),
        ("ilp", points[1]): SearchResult([_row(0, 0.83)], 0, 1, 1.0, {"decide_s": 0.5}),
    }
    # the sensitivity pass, 12 s, at the store's median of 4 s per evaluation: 3 evaluations
    sensitivity = sensitivity_cost(12.0, store)
    assert (sensitivity.evaluations, sensitivity.eval_cpu_s) == (3.0, 12.0)
    once = {"aqgan": one, "ilp": sensitivity}
    rows = cost_rows(exp, results, {"h0": 0.79, "h1": 0.8}, once)
    by = {(r["method"], r["budget_fraction"]): r for r in rows}
    aqgan = by[("aqgan", 0.4)]
    assert aqgan["evaluations"] == 2 and aqgan["amortized_evaluations"] == 2 + 3 / 2
    assert aqgan["eval_cpu_s"] == 4.0 and aqgan["amortized_eval_cpu_s"] == 4.0 + 9.0 / 2
    assert aqgan["wall_s"] == 6.0 and aqgan["amortized_wall_s"] == 6.0 + (10.0 + 9.0) / 2
    assert aqgan["val_acc"] == 0.8 and aqgan["test_acc"] == 0.79
    haq = by[("haq", 0.4)]
    assert haq["amortized_evaluations"] == haq["evaluations"] == 3
    assert haq["evaluations_to_match"] == 2  # reached AQGAN's 0.8 at its second evaluation
    assert haq["evaluations_to_match_0_5"] == 2 and haq["eval_cpu_s_to_match"] == 4.0
    assert haq["break_even_points"] == math.inf  # matched within AQGAN's own 2 evaluations
    assert haq["break_even_points_s"] == math.inf
    assert math.isnan(haq["decide_s"])  # HAQ does not report it
    ilp = by[("ilp", 0.4)]
    assert ilp["evaluations"] == 1 and ilp["amortized_evaluations"] == 1 + 3.0 / 2
    assert ilp["amortized_eval_cpu_s"] == 2.0 + 12.0 / 2 and ilp["decide_s"] == 0.25
    assert ilp["amortized_wall_s"] == 3.0 + 12.0 / 2
    assert [r["method"] for r in rows] == ["aqgan", "aqgan", "ilp", "ilp", "haq"]
    assert len(trace_rows(results)) == 8


def test_break_even_counts_the_design_points_aqgans_one_time_cost_needs():
    assert break_even(100, 2, 12) == 10  # 100 + 10 * 2 <= 10 * 12
    assert break_even(101, 2, 12) == 11
    assert break_even(1, 2, 600) == 1
    assert break_even(100, 2, 2) == math.inf


def test_cost_to_match_is_a_lower_bound_when_never_reached_and_looser_by_half_a_point(
    smoke_layers,
):
    exp = load_experiment("smoke")
    hw = get_hw_model("bismo-edge", smoke_layers, exp.quant.bit_choices)
    point = Planned("bismo-edge", "latency_ms=0.5x", DesignPoint(tuple(smoke_layers),
                    exp.quant.bit_choices, hw, parse_budget("latency_ms=0.5x", hw,
                    smoke_layers)), 0)  # fmt: skip
    one = one_time_cost([{"config_hash": f"c{i}", "source": "collect", "eval_s": 1.0}
                         for i in range(40)], [], train_s=1.0)  # fmt: skip
    results = {
        ("aqgan", point): SearchResult([_row(0, 0.9)], 0, 1, 1.0),
        ("random", point): SearchResult([_row(i, 0.8 + i / 1000) for i in range(5)], 0, 5, 1.0),
        ("optuna", point): SearchResult([_row(0, 0.7), _row(1, 0.896)], 0, 2, 1.0),
        ("uniform", point): SearchResult([_row(0, 0.7), _row(1, 0.6)], 0, 2, 1.0),
        ("haq", point): SearchResult([_row(0, 0.5)], 0, 1, 1.0),
    }
    test_acc = {f"h{i}": 0.9 for i in range(5)}
    rows = {r["method"]: r for r in cost_rows(exp, results, test_acc, {"aqgan": one})}
    never = rows["random"]
    assert math.isnan(never["evaluations_to_match"]) and math.isnan(never["eval_cpu_s_to_match"])
    assert math.isnan(never["evaluations_to_match_0_5"])
    assert never["break_even_points"] == 10  # from its 5 evaluations: 40 / (5 - 1), at most
    # in seconds: 40 s collected + 1 s training over (5 x 2 s - 2 s) per point
    assert never["break_even_points_s"] == 6
    near = rows["optuna"]
    assert math.isnan(near["evaluations_to_match"]) and near["evaluations_to_match_0_5"] == 2
    assert math.isnan(rows["aqgan"]["break_even_points"])
    # one evaluation, no match, as many as AQGAN's: a bound that says nothing (unknown)
    assert math.isnan(rows["haq"]["break_even_points"])
    # uniform stopped on its own below AQGAN: no cost to match, not even a bound
    assert math.isnan(rows["uniform"]["break_even_points"])


def test_default_design_has_12_distinct_points():
    from aqgan_ray.prepare import architecture_layers

    exp = load_experiment("default")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a merge would be a DesignWarning
        planned = design_points(exp, architecture_layers(exp))
    assert len(planned) == 12
    assert len({p.label for p in planned}) == 12


def test_points_that_price_every_config_alike_are_merged_with_a_warning(smoke_layers, tmp_path):
    # bismo-edge is batch 1 already: bismo-edge@1 is the same machine under another name.
    preset = tmp_path / "p.toml"
    preset.write_text(
        'name = "p"\n[design]\nhw = ["bismo-edge", "bismo-edge@1", "bismo-cloud"]\n'
        'budgets = ["energy_mj=0.5x"]\nseeds = [0, 1]\n'
    )
    exp = load_experiment(path=str(preset))
    with pytest.warns(DesignWarning, match="bismo-edge@1 energy_mj=0.5x prices every config as"):
        planned = design_points(exp, smoke_layers)
    assert [(p.label, p.seed) for p in planned] == [
        ("bismo-edge energy_mj=0.5x", 0), ("bismo-edge energy_mj=0.5x", 1),
        ("bismo-cloud energy_mj=0.5x", 0), ("bismo-cloud energy_mj=0.5x", 1),
    ]  # fmt: skip
    assert planned[0].merged == ("bismo-edge@1 energy_mj=0.5x",)


def test_a_budget_for_hardware_the_design_does_not_list_is_refused(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text(
        'name = "p"\n[design]\nhw = ["bismo-edge"]\nbudgets = ["bitfusion:latency_ms=0.5x"]\n'
    )
    with pytest.raises(UserError, match="for hardware 'bitfusion', which design.hw does not list"):
        load_experiment(path=str(preset))


def test_a_prefixed_search_budget_selects_that_models_point_only(smoke_layers, tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text(
        'name = "p"\n[design]\nhw = ["bismo-edge", "bitfusion"]\n'
        'budgets = ["latency_ms=0.9x"]\nsearch_budgets = ["bitfusion:latency_ms=0.9x"]\n'
    )
    exp = load_experiment(path=str(preset))
    planned = design_points(exp, smoke_layers)
    assert [p.label for p in planned if runs_on("optuna", p, exp)] == ["bitfusion latency_ms=0.9x"]


def test_a_search_identity_fingerprints_the_prices(smoke_layers):
    import dataclasses

    from aqgan_ray.cost import BitFusionHardware, BitFusionModel
    from aqgan_ray.experiment.design import identity

    exp = load_experiment("smoke")
    planned = next(p for p in design_points(exp, smoke_layers) if p.hw_name == "bitfusion")
    same = identity("random", planned, "key")
    assert same == identity("random", planned, "key")
    # Recalibrated constants under the same name and budget: another search, not one to continue.
    slower = BitFusionModel(dataclasses.replace(BitFusionHardware(), layer_overhead_cycles=900.0))
    point = dataclasses.replace(planned.point, hw=slower)
    other = identity("random", dataclasses.replace(planned, point=point), "key")
    assert other["hw"] == same["hw"] and other["hw_prices"] != same["hw_prices"]
