"""The command line as users run it: real subprocesses, one JSON object on stdout, and a
one-line ``error: ...`` with exit status 2 for bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from baselines import METHODS


def _ok(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)  # exactly one JSON object, nothing else on stdout


def _user_error(proc, fragment: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and fragment in lines[-1], lines[-1]
    assert "Traceback" not in proc.stderr


@pytest.fixture
def inproc(cache_dir, tmp_path, capsys, monkeypatch):
    """``main()`` in this process: the console script's code path (it only adds ``sys.exit``)
    without a Python start-up per call, for commands that start no Ray of their own (joining
    the session's loopback cluster with ``--address`` is fine: ``main`` leaves a caller's Ray
    connected). Returns the exit status, stdout and stderr."""
    from aqgan_ray.cli import main

    monkeypatch.setenv("AQGAN_RAY_CACHE", str(cache_dir))

    def run(*args: str) -> tuple[int, str, str]:
        given = "--results" in args or args[0] == "compare"  # compare takes directories
        results = [] if given else ["--results", str(tmp_path / "results")]
        code = main([*args, *results])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def main_error(inproc, tmp_path):
    """Bad input: exactly one stderr line ``error: ...``, exit status 2, nothing written."""

    def check(args, fragment: str) -> None:
        code, _, err = inproc(*args)
        # This process is connected to the test cluster, whose raylet may stream its own
        # warnings here at any moment (a disk over 95% full, for one): not the command's output.
        lines = [line for line in err.splitlines() if line.strip() and "(raylet)" not in line]
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith("error: ") and fragment in lines[0], lines
        results = tmp_path / "results"
        assert not results.exists() or not any(results.rglob("*.*"))

    return check


def _inproc_ok(result: tuple[int, str, str]) -> dict:
    code, out, err = result
    assert code == 0, err[-2000:]
    return json.loads(out)


def test_prepare_json(cli, smoke):
    out = _ok(cli("prepare", "--experiment", "smoke", "--json"))
    assert out["model"] == "mobilenet_v2" and out["dataset"] == "fashion-mnist"
    assert len(out["layers"]) == len(smoke[1].layers) == 53
    assert out["fp_val_acc"] == smoke[1].fp_val_acc and out["fp_test_acc"] > 0.8
    assert {"name", "kind", "macs", "params", "stride", "groups"} <= set(out["layers"][0])


def test_evaluate_uniform_8_and_2(cli):
    eight = _ok(cli("evaluate", "--experiment", "smoke", "--uniform", "8", "--json"))
    assert abs(eight["val_acc"] - eight["fp_val_acc"]) <= 0.005
    assert set(eight["cost"]) >= {"size_bytes", "bitops", "bitfusion", "bismo-edge", "bismo-cloud"}
    assert eight["w_bits"] == [8] * 53 and len(eight["config_hash"]) == 16
    two = _ok(cli("evaluate", "--experiment", "smoke", "--uniform", "2", "--json"))
    assert two["val_acc"] < eight["val_acc"] - 0.2
    assert two["w_bits"][0] == two["w_bits"][-1] == 8 and set(two["w_bits"][1:-1]) == {2}
    assert (
        3 * two["cost"]["size_bytes"] < eight["cost"]["size_bytes"] < 4 * two["cost"]["size_bytes"]
    )


def test_cost_with_bits_file_and_table(inproc, smoke, tmp_path):
    bits = tmp_path / "bits.json"
    bits.write_text(json.dumps({"w_bits": [8] + [4] * 51 + [8], "a_bits": [8] * 53}))
    out = _inproc_ok(inproc("cost", "--experiment", "smoke", "--bits", str(bits), "--json"))
    # --uniform 4 in HAQ's search space: the first and last layers stay at 8 bits
    uniform = _inproc_ok(inproc("cost", "--experiment", "smoke", "--uniform", "4", "--json"))
    assert out["cost"]["size_bytes"] == uniform["cost"]["size_bytes"]
    ratio = out["cost"]["bitops"] / uniform["cost"]["bitops"]
    # W4A8 against W4A4 everywhere but the pinned layers
    assert ratio > 1.5
    assert ratio < 2
    bits.write_text(json.dumps({"w_bits": [4] * 53, "a_bits": [8] * 53}))
    code, _, err = inproc("cost", "--experiment", "smoke", "--bits", str(bits), "--json")
    assert code == 2 and "keep_first_last" in err
    names = smoke[1].layer_names
    table = tmp_path / "lat.csv"
    rows = [
        {"layer": n, "w_bits": w, "a_bits": a, "latency_ms": 0.01 * w * a}
        for n in names
        for w in range(2, 9)
        for a in range(2, 9)
    ]
    pd.DataFrame(rows).to_csv(table, index=False)
    out = _inproc_ok(
        inproc(
            "cost", "--experiment", "smoke", "--uniform", "4", "--hw", f"table:{table}", "--json"
        )
    )
    assert out["cost"][f"table:{table}"]["latency_ms"] == pytest.approx(51 * 0.16 + 2 * 0.64)


def test_bench_eval_writes_parquet(cli, tmp_path):
    target = tmp_path / "bench.parquet"
    out = _ok(
        cli(
            "bench",
            "eval",
            "--experiment",
            "smoke",
            "--repeats",
            "1",
            "--output",
            str(target),
            "--json",
        )
    )
    assert out["fp32_forward_s"] > 0 and out["compiled_over_fp32"] > 0
    assert pd.read_parquet(target)["eager_over_fp32"].iloc[0] == out["eager_over_fp32"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["evaluate", "--model", "vgg16", "--uniform", "8"], "unknown model 'vgg16'"),
        (["evaluate", "--dataset", "mnist", "--uniform", "8"], "unknown dataset 'mnist'"),
        (["cost", "--uniform", "8", "--hw", "tpu"], "unknown hardware model 'tpu'"),
        (["cost", "--uniform", "8", "--hw", "table:/no/such.csv"], "/no/such.csv"),
        (["cost", "--bits", '{"w_bits": [8], "a_bits": [8]}'], "53 quantizable layers"),
        (["cost", "--uniform", "9"], "not one of the allowed bitwidths"),
        (["cost", "--bits", "{oops"], "not valid JSON"),
        (["evaluate", "--uniform", "8", "--data-dir", "/no/such/dir"], "/no/such/dir"),
        (["evaluate", "--experiment", "nope", "--uniform", "8"], "unknown experiment 'nope'"),
    ],
)
def test_bad_input_is_one_line_exit_2(main_error, args, fragment):
    if args[0] in ("cost", "evaluate") and "--experiment" not in args:
        args = [*args, "--experiment", "smoke"]
    main_error(args, fragment)


def test_bad_input_from_the_console_script(cli):
    _user_error(cli("frobnicate"), "invalid choice")
    _user_error(cli("evaluate", "--uniform", "8", "--bits", "{}"), "not allowed with argument")


def test_corrupt_checkpoint(main_error, tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    preset = tmp_path / "p.toml"
    preset.write_text(
        f'name = "p"\n[data]\nval_size = 200\ntrain_subset = 300\n'
        f'test_subset = 100\ncalib_size = 32\n[model]\ncheckpoint = "{bad}"\n'
        "width = 0.35\n"
    )
    main_error(["prepare", "--config", str(preset)], "corrupt or unreadable")
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, wrong)
    preset.write_text(preset.read_text().replace(str(bad), str(wrong)))
    main_error(["prepare", "--config", str(preset)], "does not fit this model")


def test_unwritable_results_dir(main_error, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    main_error(["prepare", "--experiment", "smoke", "--results", str(blocker / "sub")], "writable")


def test_evaluate_rejects_bad_config_before_training(main_error, tmp_path):
    empty_cache = tmp_path / "cache"  # nothing trained here: prepare would have to train
    bits = '{"w_bits": [8], "a_bits": [8]}'
    args = ["evaluate", "--experiment", "smoke", "--cache-dir", str(empty_cache), "--bits", bits]
    main_error(args, "53 quantizable layers")
    main_error([*args[:-2], "--uniform", "8", "--hw", "tpu"], "unknown hardware model")
    assert not empty_cache.exists()


def test_collect_embedded_ray_then_nothing_to_do(cli, tmp_path):
    """Without --address an embedded local Ray starts (a second run evaluating nothing is
    tested in test_collect.py)."""
    args = ("collect", "--experiment", "smoke", "--samples", "4", "--results", str(tmp_path))
    first = _ok(cli(*args, "--json"))
    assert first["requested"] == 4 and first["evaluated_now"] == 4 and first["total"] == 4
    assert first["cluster"]["address"] == "local" and first["nodes"] == 1
    assert sum(b["configs"] for b in first["val_acc_histogram"]) == 4


def test_collect_on_a_two_node_cluster(cli, tmp_path, ray_cluster):
    out = _ok(
        cli(
            "collect", "--experiment", "smoke", "--samples", "6", "--address",
            ray_cluster["address"], "--results", str(tmp_path), "--json",
        )
    )  # fmt: skip
    assert out["total"] == 6 and out["workers"] == 2
    assert out["nodes"] == 2 and out["cluster"]["nodes"] == 2
    rows = pd.read_parquet(tmp_path / "smoke" / "evaluations")
    assert len(rows) == rows["config_hash"].nunique() == 6
    assert rows["node_id"].nunique() == 2


def test_collect_bad_input_leaves_the_store_intact(cli, main_error, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from aqgan_ray.store import EVALUATION_SCHEMA

    base = ["collect", "--experiment", "smoke", "--results", str(tmp_path)]
    store = tmp_path / "smoke" / "evaluations"
    store.mkdir(parents=True)
    old = EVALUATION_SCHEMA.with_metadata({b"aqgan_ray.schema_version": b"0"})
    pq.write_table(pa.Table.from_pylist([], schema=old), store / "part-0-old.parquet")
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    main_error([*base, "--samples", "4"], "schema version 0")
    assert {p.name: p.read_bytes() for p in store.iterdir()} == before
    (store / "part-0-old.parquet").unlink()
    # Address checks in a process of their own: this one may already be connected to Ray.
    _user_error(cli(*base, "--samples", "4", "--address", "127.0.0.1:1"), "cannot reach")
    _user_error(cli(*base, "--samples", "4", "--address", "nowhere"), "HOST:PORT")
    main_error([*base, "--samples", "-1"], "non-negative")
    blocker = tmp_path / "file"
    blocker.write_text("")
    main_error([*base[:-1], str(blocker / "sub"), "--samples", "4"], "not writable")
    # Refused once the embedded Ray is up: a real process.
    _user_error(cli(*base, "--samples", "4", "--workers", "64"), "--workers 64")
    assert {p.name for p in store.iterdir()} == set()


def test_bench_scaling_reports_side_by_side(cli, tmp_path, ray_cluster):
    out_file = tmp_path / "scaling.parquet"
    out = _ok(
        cli(
            "bench", "scaling", "--experiment", "smoke", "--configs", "2", "--address",
            ray_cluster["address"], "--output", str(out_file), "--json",
        )
    )  # fmt: skip
    for key in ("in_process_s", "ray_1_actor_s", "ray_2_actors_s"):
        assert out[key] > 0
    assert out["speedup_2_vs_1_actor"] == pytest.approx(
        out["ray_1_actor_s"] / out["ray_2_actors_s"]
    )
    assert pd.read_parquet(out_file)["ray_overhead"].iloc[0] == pytest.approx(out["ray_overhead"])


@pytest.fixture(scope="module")
def checkpointed(collected, smoke, tmp_path_factory):
    """A results directory holding only a quickly trained smoke AQGAN checkpoint."""
    from aqgan_ray.aqgan import checkpoint as aqgan
    from aqgan_ray.aqgan import model as gan
    from aqgan_ray.aqgan.data import training_data
    from aqgan_ray.aqgan.fit import fit
    from aqgan_ray.store import EvaluationStore

    exp, prepared, _ = smoke
    names, choices = prepared.layer_names, exp.quant.bit_choices
    rows = EvaluationStore(collected / "smoke" / "evaluations", None).rows()
    spec = gan.GanSpec(steps=20, predictor_members=1, predictor_epochs=20)
    model, metrics, _ = fit(training_data(rows, names, choices), choices, spec)
    results = tmp_path_factory.mktemp("checkpointed")
    path = results / "smoke" / "aqgan.pt"
    aqgan.save_checkpoint(path, model, spec, names, choices, "k", metrics, aqgan.model_id(exp))
    return results


def test_train_then_generate_and_verify(inproc, collected, ray_cluster, tiny_preset):
    """`train` on 40 real evaluations, then proposals for a target and under a budget, and
    their verification through the evaluator actors (in this process, connected to the
    loopback cluster, to save five Python start-ups)."""
    base = ("--experiment", "smoke", "--results", str(collected))
    base += ("--address", ray_cluster["address"])
    trained = _inproc_ok(
        inproc("train", *base, "--steps", "150", "--fidelity-targets", "2", "--top", "2",
            "--refine-rounds", "1", "--refine-targets", "2", "--json")
    )  # fmt: skip
    refined = pd.read_parquet(collected / "smoke" / "refine.parquet")
    assert list(refined["round"]) == [0, 0] and trained["refine_evaluations"] == 2
    assert trained["refine"][0]["evaluations"] == 2
    store = pd.read_parquet(collected / "smoke" / "evaluations")
    new = store[store["source"] == "refine"]["config_hash"]
    assert set(new) <= set(refined["config_hash"]) and trained["store_configs"] == 40 + len(new)
    assert trained["fidelity_evaluations"] == 4
    assert 0 <= trained["fidelity_mae"] <= 1 and trained["heldout_mae"] > 0
    fidelity = pd.read_parquet(trained["fidelity_table"])
    assert {"target_acc", "predicted_acc", "achieved_val_acc"} <= set(fidelity.columns)
    # held out: the test split, scored once after the choice
    assert fidelity["achieved_test_acc"].between(0, 1).all() and trained["fidelity_test_mae"] >= 0
    assert (collected / "smoke" / "aqgan.pt").is_file()

    rows = pd.read_parquet(collected / "smoke" / "evaluations")
    target = float(rows["val_acc"].quantile(0.8))
    out = _inproc_ok(
        inproc("generate", *base[:4], "--target-acc", f"{target:.3f}", "--top", "3", "--json")
    )
    assert len(out["proposals"]) == 3 and out["generate_s"] < 1.0
    # The ranking also uses what was evaluated after the checkpoint: the fidelity proposals.
    assert out["store_evidence"] == (store["source"] == "aqgan").sum() > 0
    first = out["proposals"][0]
    assert {"w_bits", "a_bits", "config_hash", "cost", "within_budget", "predicted_acc"} <= set(
        first
    )
    assert len(first["w_bits"]) == 53 and "bitfusion" in first["cost"]
    # The miss to expect is the checkpoint's own: its 4 fidelity proposals, all 4 nearest.
    assert out["fidelity_verified"] == 4
    misses = (fidelity["achieved_val_acc"] - fidelity["target_acc"]).abs()
    assert first["expected_miss"] == pytest.approx(misses.mean())

    budgeted = _inproc_ok(
        inproc("generate", *base[:4], "--hw", "bismo-edge", "--budget", "latency_ms=0.5x", "--json")
    )
    limit = budgeted["budget"]["value"]
    assert budgeted["proposals"] and all(p["within_budget"] for p in budgeted["proposals"])
    assert all(p["cost"]["bismo-edge"]["latency_ms"] <= limit for p in budgeted["proposals"])
    # a budget alone is hardware tuning (aqgan.hw_tune): tuned candidates and the floor
    assert {p["origin"].split("+")[0] for p in budgeted["proposals"]} <= {"generator", "store",
                                                                          "bred"}  # fmt: skip
    assert all(p["target_acc"] is None for p in budgeted["proposals"])

    once = ("--target-acc", f"{target:.3f}", "--top", "2", "--verify", "--verify-rounds", "1")
    verified = _inproc_ok(inproc("generate", *base, *once, "--json"))
    assert verified["verify_evaluations"] == 2 and verified["verify_rounds"] == 1
    assert all(0 <= p["val_acc"] <= 1 and p["round"] == 1 for p in verified["proposals"])
    assert all(0 <= p["test_acc"] <= 1 for p in verified["proposals"])
    fresh = sum(not p["cached"] for p in verified["proposals"])
    again = _inproc_ok(inproc("generate", *base[:4], "--target-acc", "0.5", "--top", "1", "--json"))
    assert again["store_evidence"] == out["store_evidence"] + fresh
    alone = ("--target-acc", "0.5", "--top", "1", "--checkpoint-only", "--json")
    assert _inproc_ok(inproc("generate", *base[:4], *alone))["store_evidence"] == 0
    # verified, hardware tuning spends at most --top, one at a time, most accurate first
    tuned = ("--hw", "bismo-edge", "--budget", "latency_ms=0.5x", "--top", "2", "--verify")
    checked = _inproc_ok(inproc("generate", *base, *tuned, "--json"))
    assert 1 <= checked["verify_evaluations"] <= 2
    accs = [p["val_acc"] for p in checked["proposals"]]
    assert accs == sorted(accs, reverse=True) and all(
        p["within_budget"] for p in checked["proposals"]
    )
    floor = [p for p in budgeted["proposals"] if p["origin"] == "store"]
    assert not floor or accs[0] >= floor[0]["predicted_acc"]  # never below the best stored

    # Tolerance 0 is never met: every round runs, each verifies 2 configs not verified before,
    # and the 2 nearest the target of all 6 are returned.
    rounds = ("--target-acc", "0.5", "--top", "2", "--verify", "--tolerance", "0", "--json")
    looped = _inproc_ok(inproc("generate", *base, *rounds))
    every = looped["verified"]
    assert looped["verify_rounds"] == 3 and looped["verify_evaluations"] == len(every) == 6
    assert [v["round"] for v in every] == [1, 1, 2, 2, 3, 3]
    assert len({v["config_hash"] for v in every}) == 6
    nearest = sorted(abs(v["val_acc"] - 0.5) for v in every)[:2]
    assert [abs(p["val_acc"] - 0.5) for p in looped["proposals"]] == nearest

    # Trained again without refinement: the logged round is not counted, and the configs it
    # evaluated, still in the store, are not trained on; nor are verifications (the collected
    # rows are).
    again = _inproc_ok(
        inproc("train", *base, "--steps", "20", "--fidelity-targets", "0",
               "--refine-rounds", "0", "--json")
    )  # fmt: skip
    store = pd.read_parquet(collected / "smoke" / "evaluations")
    assert again["refine_evaluations"] == 0 and again["refine"] == []
    assert again["store_configs"] == (store["source"] == "collect").sum() == 40
    assert again["rows_by_source"] == {"collect": 40, "refine": 0}

    # `bench tuning` on the tiny preset's two points: every variant against uniform, store-best
    # and the paper's flow; hardware tuning never below store-best, within verify_top (1)
    where = ("--config", tiny_preset, "--results", str(collected))
    bench = _inproc_ok(inproc("bench", "tuning", *where, *base[4:], "--json"))
    rows = pd.DataFrame(bench["rows"])
    assert len(rows) == 2 * 10  # uniform measures every uniform config that fits
    assert rows[rows["method"] != "uniform"]["evaluations"].le(1).all()
    picks = rows.pivot(index="budget", columns="method", values="val_acc")
    assert (picks["tuned"] >= picks["store"]).all() and (picks["store"] >= picks["uniform"]).all()


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--target-acc", "1.5"], "must be an accuracy in [0, 1]"),
        (["--hw", "bitfusion", "--budget", "latency_ms=0.01"], "below the cheapest"),
        (["--hw", "size", "--budget", "latency_ms=1"], "does not provide latency_ms"),
        (["--target-acc", "0.8", "--model", "resnet18"], "trained for mobilenet_v2"),
        (["--budget", "size_bytes=0.5x"], "needs --hw"),
        (["--target-acc", "0.8", "--verify-rounds", "0"], "--verify-rounds must be at least 1"),
        (["--target-acc", "0.8", "--tolerance", "-0.1"], "--tolerance -0.1 must be"),
    ],
)
def test_generate_bad_input(main_error, checkpointed, extra, fragment):
    main_error(
        ["generate", "--experiment", "smoke", "--results", str(checkpointed), *extra], fragment
    )


def test_train_refuses_a_store_too_small(main_error, tmp_path, ray_cluster):
    args = ["train", "--experiment", "smoke", "--address", ray_cluster["address"]]
    main_error(args, "needs at least 30")
    main_error(["generate", *args[1:3], "--target-acc", "0.8"], "run `aqgan-ray train` first")


def test_tune_search_runs_and_resumes(cli, collected, ray_cluster, tmp_path):
    """Ray Tune + Optuna over 2 trials; a second call restores the experiment instead of
    starting new trials."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(collected / "smoke" / "evaluations", results / "smoke" / "evaluations")
    args = (
        "train", "--experiment", "smoke", "--results", str(results), "--address",
        ray_cluster["address"], "--tune-samples", "2", "--steps", "40", "--fidelity-targets", "0",
        "--refine-rounds", "0", "--json",
    )  # fmt: skip
    first = _ok(cli(*args))  # no refinement: test_refine.py and the train test above cover it
    assert set(first["tune"]) >= {"lr_g", "cond_weight", "gumbel_tau"}
    tune_dir = results / "smoke" / "tune" / "aqgan-tune"
    trials = sorted(p.name for p in tune_dir.iterdir() if p.is_dir())
    assert len(trials) == 2
    second = _ok(cli(*args))
    assert sorted(p.name for p in tune_dir.iterdir() if p.is_dir()) == trials
    assert second["tune"] == first["tune"] and second["objective"] == first["objective"]


def test_bench_generate(cli, checkpointed):
    out = _ok(
        cli("bench", "generate", "--experiment", "smoke", "--results", str(checkpointed),
            "--repeats", "1", "--json")
    )  # fmt: skip
    assert out["proposals"] == 1000 and out["generate_select_s"] > 0
    assert out["evaluations_per_generation"] == pytest.approx(
        out["one_evaluation_s"] / out["generate_select_s"]
    )


def test_baseline_searches_resumes_and_extends(inproc, tmp_path, ray_cluster):
    args = (
        "baseline", "random", "--experiment", "smoke", "--hw", "bismo-edge", "--budget",
        "latency_ms=0.5x", "--address", ray_cluster["address"], "--results", str(tmp_path),
        "--json",
    )  # fmt: skip
    first = _inproc_ok(inproc(*args, "--evaluations", "4"))
    assert first["evaluations"] == 4 and first["evaluated_now"] + first["cached"] >= 4
    best = first["best"]
    assert best["within_budget"] and best["cost_value"] <= first["budget"]["value"]
    assert best["cost"]["bismo-edge"]["latency_ms"] == pytest.approx(best["cost_value"])
    assert 0 < first["best"]["test_acc"] <= 1 and first["preset_evaluations"] == 20
    trace = pd.read_parquet(first["trace"])
    assert list(trace["index"]) == [0, 1, 2, 3] and trace["within_budget"].all()
    more = _inproc_ok(inproc(*args, "--evaluations", "6"))  # the same search, continued
    assert more["resumed_from"] == 4 and more["evaluations"] == 6 and more["evaluated_now"] <= 2
    assert more["best"]["val_acc"] >= first["best"]["val_acc"]
    assert len(pd.read_parquet(more["trace"])) == 6


def test_baseline_ilp_one_evaluation_with_its_costs(inproc, tmp_path, ray_cluster):
    """The issue's command: a config within budget after one evaluation, the sensitivity pass
    and the solve in the JSON; the pass is kept for the next point."""
    args = (
        "baseline", "ilp", "--experiment", "smoke", "--hw", "bismo-edge", "--budget",
        "energy_mj=0.5x", "--address", ray_cluster["address"], "--results", str(tmp_path),
        "--json",
    )  # fmt: skip
    out = _inproc_ok(inproc(*args))
    assert out["evaluations"] == 1 and out["best"]["within_budget"]
    assert out["best"]["cost_value"] <= out["budget"]["value"]
    summary = out["method_summary"]
    assert summary["sensitivity_s"] > 0 and summary["solve_s"] > 0
    assert summary["sensitivity_evaluations"] == pytest.approx(
        summary["sensitivity_s"] / summary["median_eval_s"]
    )
    saved = tmp_path / "smoke" / "sensitivity.json"
    stamp = saved.stat().st_mtime_ns
    other = _inproc_ok(inproc(*args[:7], "latency_ms=0.6x", *args[8:], "--evaluations", "3"))
    assert saved.stat().st_mtime_ns == stamp  # measured once per seed
    assert (
        other["evaluations"] == 3
        and other["method_summary"]["sensitivity_s"] == (summary["sensitivity_s"])
    )
    objectives = other["method_summary"]["objectives"]
    assert objectives == sorted(objectives)  # the pool's solutions, best predicted first


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["dqn", "--hw", "bitfusion", "--budget", "latency_ms=1x"], "unknown baseline 'dqn'"),
        (["ilp", "--hw", "bismo-edge", "--budget", "energy_mj=0.01"], "below the cheapest"),
        (["haq", "--hw", "bismo-edge", "--budget", "latency_ms=0.01"], "below the cheapest"),
        (["haq", "--hw", "bismo-edge", "--budget", "latency_ms=1x", "--evaluations", "0"],
         "--evaluations must be at least 1"),
        (["optuna", "--budget", "latency_ms=1x"], "give --hw H --budget METRIC=V"),
        (["random", "--hw", "size", "--budget", "latency_ms=1"], "does not provide latency_ms"),
    ],
)  # fmt: skip
def test_baseline_bad_input(main_error, extra, fragment):
    main_error(["baseline", *extra, "--experiment", "smoke"], fragment)


def test_run_end_to_end_then_resume_reproduces_the_tables(
    inproc, collected, ray_cluster, tmp_path, tiny_preset
):
    """In this process (connected to the loopback cluster), to save two Python start-ups. A
    random search stored first is not AQGAN's evidence; two seeds each collect, train and
    search on their own."""
    import shutil

    preset = tiny_preset
    results = tmp_path / "results"
    shutil.copytree(collected / "smoke" / "evaluations", results / "smoke" / "evaluations")
    where = ("--config", preset, "--results", str(results), "--address", ray_cluster["address"])
    search = ("baseline", "random", "--hw", "bismo-edge", "--budget", "latency_ms=0.5x")
    baseline = _inproc_ok(inproc(*search, "--evaluations", "4", *where, "--json"))
    assert baseline["evaluated_now"] == 4
    args = ("run", *where, "--seeds", "0,1", "--json")
    out = _inproc_ok(inproc(*args))
    run_dir = results / "smoke"
    cost = pd.read_parquet(out["search_cost"])
    assert sorted(set(cost["method"])) == sorted(METHODS)  # the tiny preset names none: all
    assert sorted(set(cost["seed"])) == [0, 1]
    assert cost["within_budget"].all() and cost["test_acc"].between(0, 1).all()
    # HAQ's search space for every method: first layer W8 (image unquantized), last W8/A8
    for w_bits, a_bits in zip(cost["w_bits"], cost["a_bits"], strict=True):
        assert w_bits[0] == w_bits[-1] == a_bits[-1] == 8
    one_seed = cost[cost["seed"] == 0]
    assert len(one_seed[one_seed["method"] == "aqgan"]) == 2
    assert len(one_seed[one_seed["method"] == "haq"]) == 1
    assert (cost[cost["method"] == "haq"]["evaluations"] == 3).all()
    # AQGAN trained on what it paid for: the 40 collected and its refinement, no random rows
    assert out["rows_by_source"] == {"collect": 40, "refine": out["rows_by_source"]["refine"]}
    one_time = json.loads((run_dir / "run.json").read_text())["one_time"]
    assert one_time["collect_evaluations"] == 40
    assert one_time["refine_evaluations"] == len(pd.read_parquet(run_dir / "refine.parquet")) == 2
    assert one_time["evaluations"] == 40 + 2 + one_time["fidelity_evaluations"]
    for method in ("aqgan", "store"):  # store-best shares AQGAN's one-time cost
        rows = one_seed[one_seed["method"] == method]
        share = one_time["evaluations"] / 2
        assert (rows["amortized_evaluations"] == rows["evaluations"] + share).all()
    # the ILP at every design point of both seeds: one evaluation, its pass shared by the two
    ilp = cost[cost["method"] == "ilp"]
    assert len(ilp) == 4 and (ilp["evaluations"] == 1).all() and (ilp["decide_s"] > 0).all()
    passes = json.loads((run_dir / "run.json").read_text())["replicates"]
    for seed, rep in zip((0, 1), passes, strict=True):
        once = rep["sensitivity"]
        assert once["design_points"] == 2 and once["probes"] == 2 and once["seconds"] > 0
        assert once["threads"] == 1  # an evaluator's, as the loopback cluster's actors have
        rows = ilp[ilp["seed"] == seed]
        assert (rows["amortized_evaluations"] == 1 + once["evaluations"] / 2).all()
    assert (run_dir / "sensitivity.json").is_file()
    assert (run_dir / "seed-1" / "sensitivity.json").is_file()
    # hardware tuning: never below the best training row within budget, at most verify_top
    picks = cost.pivot_table(index=["seed", "hw", "budget"], columns="method", values="val_acc")
    assert (picks["aqgan"] >= picks["store"]).all()
    aqgan = cost[cost["method"] == "aqgan"]
    assert aqgan["evaluations"].between(1, 2).all()
    # the ablations: the ranker over the sampler's draws, the generator without the ranker
    assert (picks["sampler-ranked"] >= picks["store"]).all()
    assert cost[cost["method"] == "gan-unranked"]["origin"].dropna().eq("generator").all()
    baselines = cost[cost["method"].isin(["haq", "optuna", "random", "random-sampler"])]
    assert baselines["break_even_points"].notna().all()
    assert aqgan["origin"].str.split("+").str[0].isin(["generator", "store", "bred"]).all()
    assert (cost[cost["method"] == "haq"]["origin"] == "haq").all()
    seed1 = run_dir / "seed-1"
    stored1 = pd.read_parquet(seed1 / "evaluations")
    assert set(stored1["source"]) >= {"collect", "aqgan"} and "random" in set(stored1["source"])
    assert (stored1["source"] == "collect").sum() == 40
    traces = pd.read_parquet(out["traces"])
    assert len(traces) == cost["evaluations"].sum()
    for folder in (run_dir, seed1):
        fidelity = pd.read_parquet(folder / "fidelity.parquet")
        assert fidelity["achieved_test_acc"].between(0, 1).all()
    for name in ("report.md", "accuracy_vs_budget.png", "search_cost.png",
                 "fidelity.png", "anytime.png", "test_accuracy.parquet"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    text = (run_dir / "report.md").read_text()
    assert "## Cost to match AQGAN" in text and "on the test split" in text
    assert "against uniform quantization, its own store and the ILP" in text
    assert "The ILP's one-time cost per seed" in text and "ilp test" in text
    assert "every method ran on" in text and "± " in text

    stores = [pd.read_parquet(folder / "evaluations") for folder in (run_dir, seed1)]
    again = _inproc_ok(inproc(*args[:-1], "--resume", "--json"))
    for folder, before in zip((run_dir, seed1), stores, strict=True):
        after = pd.read_parquet(folder / "evaluations")
        assert len(after) == len(before) == after["config_hash"].nunique()
    assert not again["trained"]
    columns = ["method", "hw", "budget", "seed", "evaluations", "amortized_evaluations",
               "config_hash", "val_acc", "test_acc", "evaluations_to_match"]  # fmt: skip
    pd.testing.assert_frame_equal(pd.read_parquet(again["search_cost"])[columns], cost[columns])

    (run_dir / "report.md").unlink()
    code, stdout, _ = inproc("report", "--config", preset, "--results", str(results), "--json")
    assert code == 0 and json.loads(stdout)["report"] == str(run_dir / "report.md")
    code, stdout, _ = inproc("compare", str(run_dir), str(run_dir), "--json")
    rows = json.loads(stdout)["rows"]
    assert code == 0 and len(rows) == 2 * len(METHODS)
    assert {r["method"] for r in rows} == set(METHODS)


def test_run_bad_input(main_error, tmp_path):
    main_error(["run", "--experiment", "nope"], "unknown experiment 'nope'")
    broken = tmp_path / "broken.toml"
    broken.write_text('name = "x"\n[design\n')
    main_error(["run", "--config", str(broken)], "not valid TOML")
    main_error(["run", "--experiment", "smoke", "--resume"], "no run to resume")
    main_error(["run", "--experiment", "smoke", "--seeds", "0,x"], "comma-separated list")
    main_error(["run", "--experiment", "smoke", "--seeds", "1,1"], "repeat a seed")
    other = tmp_path / "other"
    (other / "smoke").mkdir(parents=True)
    (other / "smoke" / "experiment.json").write_text('{"name": "smoke", "seed": 5}')
    main_error(["run", "--experiment", "smoke", "--results", str(other)], "another experiment")
    assert [p.name for p in (other / "smoke").iterdir()] == ["experiment.json"]
    main_error(["compare", str(tmp_path)], "no search_cost.parquet")
