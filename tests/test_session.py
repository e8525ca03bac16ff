"""The public Python API (``import aqgan_ray as aq``): the contract's example in a fresh Python
process with the in-process pool (Ray never imported), ``aq.run`` returning DataFrames, and bad
arguments refused with ``aq.UserError`` before anything slow or written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import aqgan_ray as aq
from baselines import METHODS

# The contract's example (shared/CONTRACT.md, "Python API"), with the tiny preset and sizes a
# test can afford; the store starts with STORED collected evaluations, so `collect` evaluates 2
# more.
EXAMPLE = """
import json, sys
import aqgan_ray as aq

exp = aq.load_experiment(path=PRESET, seed=0)
with aq.Session(exp, results="results", pool="local") as s:
    info = s.prepare()
    layers = s.layers
    r = s.evaluate(aq.QuantConfig.uniform([l.name for l in layers], 8))
    collected = s.collect(samples=STORED + 2)
    gen = s.train_aqgan()
    props = gen.propose(target_acc=0.8, hw="bismo-edge", budget="latency_ms=0.5x", n=1000, top=5)
    fitting = gen.best_under_budget(hw="bismo-edge", budget="latency_ms=0.5x", top=3)
    best = s.search("random", hw="bismo-edge", budget="latency_ms=0.5x", evaluations=4)
    trace = best.trace
    verified = s.verify(gen, target_acc=0.7, top=1, rounds=1)
ray_after_session = "ray" in sys.modules

result = aq.run(exp, results="results", pool="local")
hw = aq.get_hw_model("bitfusion", layers, [2, 3, 4, 5, 6, 7, 8])
import numpy as np
w = np.full((2, len(layers)), 4); w[1] = 8
priced = hw.batch(layers, w, w)
budget = aq.parse_budget("latency_ms=0.75x", hw, layers)
print(json.dumps({
    "layers": len(layers), "fp_val_acc": info["fp_val_acc"], "val_acc": r["val_acc"],
    "evaluated_now": collected["evaluated_now"], "total": collected["total"],
    "workers": collected["workers"], "trained_on": gen.training["store_configs"],
    "proposals": [[p.within_budget, p.cost, p.predicted_acc] for p in props + fitting],
    "fitting": len(fitting),
    "trace_rows": len(trace), "trace_columns": list(trace.columns),
    "best_val": best.best["val_acc"], "verified": len(verified.every),
    "ray_after_session": ray_after_session, "ray_after_run": "ray" in sys.modules,
    "search_cost_methods": sorted(set(result.search_cost["method"])),
    "search_cost_rows": len(result.search_cost), "report": str(result.report),
    "latency": priced["latency_ms"].tolist(), "budget": budget.value,
}))
"""


def test_the_contract_example_runs_in_process_without_ray(
    smoke, collected, cache_dir, tmp_path, tiny_preset
):
    import pandas as pd

    preset = tiny_preset
    store = tmp_path / "results" / "smoke" / "evaluations"
    shutil.copytree(collected / "smoke" / "evaluations", store)
    stored = (pd.read_parquet(store)["source"] == "collect").sum()  # other tests' rows aside
    script = tmp_path / "example.py"
    script.write_text(f"PRESET = {preset!r}\nSTORED = {stored}\n" + textwrap.dedent(EXAMPLE))
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "AQGAN_RAY_CACHE": str(cache_dir)},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["layers"] == 53 and abs(out["val_acc"] - out["fp_val_acc"]) <= 0.005
    assert out["evaluated_now"] == 2 and out["total"] == stored + 2 and out["workers"] == 1
    assert out["trained_on"] >= 40
    assert out["fitting"] == 3 and all(fits for fits, _, _ in out["proposals"])
    assert out["trace_rows"] == 4 and {"val_acc", "within_budget"} <= set(out["trace_columns"])
    assert 0 < out["best_val"] <= 1 and out["verified"] == 1
    assert not out["ray_after_session"] and not out["ray_after_run"]
    assert out["search_cost_methods"] == sorted(METHODS)
    assert (tmp_path / "results" / "smoke" / "report.md").is_file()
    assert out["latency"][0] < out["latency"][1] and out["budget"] == pytest.approx(
        0.75 * out["latency"][1]
    )


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    exp = aq.load_experiment("smoke")
    with pytest.raises(aq.UserError, match="unknown pool 'gpu'"):
        aq.Session(exp, tmp_path, pool="gpu")
    with pytest.raises(aq.UserError, match="needs pool='ray'"):
        aq.Session(exp, tmp_path, pool="local", address="127.0.0.1:6379")
    with aq.Session(exp, tmp_path, pool="local", cache_dir=tmp_path / "cache") as s:
        with pytest.raises(aq.UserError, match="runs on Ray Tune"):
            s.train_aqgan(tune_samples=2)
        with pytest.raises(aq.UserError, match="unknown baseline 'aqgan'"):
            s.search("aqgan", hw="bismo-edge", budget="latency_ms=0.5x")
        with pytest.raises(aq.UserError, match="below the cheapest"):
            s.search("random", hw="bismo-edge", budget="latency_ms=0.0001")
        with pytest.raises(aq.UserError, match="53 quantizable layers"):
            s.cost(aq.QuantConfig(("a",), (8,), (8,)))
        with pytest.raises(aq.UserError, match="no AQGAN checkpoint"):
            s.generator()
    assert not (tmp_path / "cache").exists()  # nothing was trained
    assert not any(tmp_path.rglob("*.*"))  # nor written
    with pytest.raises(aq.UserError, match="not both"):
        aq.load_experiment("smoke", path="x.toml")


def test_costs_need_no_trained_model(tmp_path):
    with aq.Session(aq.load_experiment("smoke"), tmp_path, pool="local") as s:
        four = s.cost(aq.QuantConfig.uniform(s.layer_names, 4).pinned(), hw=["bitfusion"])
        eight = s.cost(s.config([8] * len(s.layers)))
        # HAQ's space by default: a config that quantizes the first or last layer is refused
        with pytest.raises(aq.UserError, match="keep_first_last"):
            s.cost(aq.QuantConfig.uniform(s.layer_names, 4))
    assert 0.5 * eight["size_bytes"] < four["size_bytes"] < 0.6 * eight["size_bytes"]
    assert four["bitfusion"]["latency_ms"] < eight["bitfusion"]["latency_ms"]


def test_importing_the_package_loads_names_on_use():
    code = "import sys, aqgan_ray as aq; aq.QuantConfig; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr
    assert set(aq.__all__) <= set(dir(aq))
    with pytest.raises(AttributeError):
        aq.no_such_name  # noqa: B018
