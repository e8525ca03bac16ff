"""``run --plan``: the design checked and the evaluations counted without data, training or Ray;
seconds estimated only from the experiment's own store."""

from __future__ import annotations

import json

import pytest

from aqgan_ray.errors import UserError
from aqgan_ray.experiment.plan import plan
from aqgan_ray.settings import load_experiment
from aqgan_ray.store import write_table


def test_compare_local_plans_every_method_on_two_points_of_different_hardware():
    found = plan(load_experiment("compare-local"))
    assert found.seeds == (0, 1) and len({p["hw"] for p in found.points}) == 2
    from baselines import METHODS

    assert all(p["methods"] == list(METHODS) for p in found.points)
    assert found.evaluations["haq"] == found.evaluations["random-sampler"] == 2 * 2 * 200
    assert found.serial == found.evaluations["haq"]  # HAQ asks one episode at a time
    assert found.total == 2 * found.one_time + sum(found.evaluations.values())
    assert found.eval_s is None and found.cpu_hours is None


def test_the_estimate_uses_the_median_seconds_of_the_experiments_store(tmp_path):
    exp = load_experiment("compare")
    rows = [{"config_hash": f"c{i}", "eval_s": s} for i, s in enumerate((6.0, 7.0, 100.0))]
    write_table(rows, tmp_path / "compare" / "evaluations" / "part-0.parquet")
    found = plan(exp, tmp_path)
    assert found.eval_s == 7.0
    assert found.evaluations["haq"] == 3 * 12 * 600
    assert found.cpu_hours == pytest.approx(found.total * 7.0 / 3600)
    assert found.sequential_hours == pytest.approx(3 * 12 * 600 * 7.0 / 3600)


def test_a_design_run_would_refuse_is_refused_by_the_plan(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('name = "p"\n[design]\nhw = ["bitfusion"]\nbudgets = ["energy_mj=0.15x"]\n')
    with pytest.raises(UserError, match="design point bitfusion energy_mj=0.15x"):
        plan(load_experiment(path=str(preset)))
    preset.write_text('name = "p"\n[design]\nmethods = ["haq"]\n')
    with pytest.raises(UserError, match="must include 'aqgan'"):
        load_experiment(path=str(preset))


def test_run_plan_prints_json_and_starts_nothing(capsys, tmp_path):
    import sys

    from aqgan_ray.cli import main

    ray_before = "ray" in sys.modules
    code = main(["run", "--experiment", "compare", "--results", str(tmp_path), "--plan", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["total_evaluations"] > 100_000 and len(out["design_points"]) == 12
    assert ("ray" in sys.modules) == ray_before and not any(tmp_path.iterdir())
