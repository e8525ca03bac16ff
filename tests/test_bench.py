"""``aqgan-ray bench costs``: the calibration figures, in-process (no experiment, no Ray)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from aqgan_ray.calibrate import BITFUSION_TABLE
from aqgan_ray.cli import main


def test_bench_costs_reports_fitted_and_held_out_figures(tmp_path, capsys) -> None:
    out = tmp_path / "costs.parquet"
    assert main(["bench", "costs", "--json", "--output", str(out)]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert all(0.9 <= r["per_shape_spearman"] <= 1 for r in rows)
    assert [(r["metric"], r["split"]) for r in rows] == [
        ("latency_ms", "fitted"), ("latency_ms", "held-out"),
        ("energy_mj", "fitted"), ("energy_mj", "held-out"),
    ]  # fmt: skip
    assert pd.read_parquet(out).to_dict("records")[1]["spearman"] == pytest.approx(
        rows[1]["spearman"]
    )


def test_bench_costs_refits_on_a_users_table(tmp_path, capsys) -> None:
    # A "simulator" that is Bit Fusion's table with every latency doubled: the refit finds it.
    data = json.loads(BITFUSION_TABLE.read_text())
    doubled = {k: {**v, "latency": 2 * v["latency"]} for k, v in data.items()}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(doubled))
    assert main(["bench", "costs", "--table", str(path), "--refit", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    held = {r["metric"]: r for r in out["rows"] if r["split"] == "held-out"}
    assert held["latency_ms"]["median_ratio"] == pytest.approx(1.0, abs=0.05)
    assert out["fitted"]["dram_bits_per_cycle"] < 240  # half the speed, found in the fit


def test_cost_on_the_apq_table_names_the_shapes_it_lacks(capsys) -> None:
    table = f"table:{BITFUSION_TABLE}"
    assert main(["cost", "--experiment", "paper", "--uniform", "8", "--hw", table]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "missing 14 shape(s): (3, 32, 224, 3, 2, 1, 1)" in err


def test_bench_costs_bad_input_is_one_line(tmp_path, capsys) -> None:
    by_layer = tmp_path / "by_layer.csv"
    by_layer.write_text("layer,w_bits,a_bits,latency_ms\nconv,8,8,1.0\n")
    assert main(["bench", "costs", "--table", str(by_layer)]) == 2
    assert "keyed by layer" in capsys.readouterr().err
    assert main(["bench", "costs", "--hw", "size"]) == 2
    assert "share no latency_ms" in capsys.readouterr().err
    assert main(["bench", "costs", "--hold-out", "colour=5"]) == 2
    assert "is not COLUMN=INTEGER" in capsys.readouterr().err
    zero = tmp_path / "zero.json"
    zero.write_text('{"(1, 4, 8, 3, 1, 1, 1)-W8A8": {"latency": 0, "energy": 1}}')
    assert main(["bench", "costs", "--table", str(zero), "--refit"]) == 2
    assert "positive latency_ms" in capsys.readouterr().err


def test_bench_sensitivity_solves_every_design_point_per_setting(smoke, cache_dir, tmp_path):
    """On the trained smoke model, in this process: one probe count and seed, both floors."""
    from aqgan_ray.bench import bench_sensitivity
    from aqgan_ray.session import Session

    exp = smoke[0]
    with Session(exp, tmp_path, pool="local", cache_dir=cache_dir, progress=False) as s:
        rows = pd.DataFrame(bench_sensitivity(s, probes=(2,), seeds=(0,)))
        stored = s.service.store.rows()
    assert len(rows) == 2 * 6 and set(rows["floor"]) == {"se", "zero"}
    assert rows["val_acc"].between(0, 1).all() and (rows["solve_s"] > 0).all()
    assert rows["sensitivity_s"].nunique() == 1  # one pass serves both floors
    assert {r["source"] for r in stored} == {"bench"}
