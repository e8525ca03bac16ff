"""Bad input through the command line, in this process: exit status 2, exactly one
``error: ...`` line on stderr, and the results directory left exactly as it was (no file
created, changed or removed). None of these needs Ray or a trained model: each is refused
before either is touched."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from aqgan_ray.cli import _json_safe, main

SMOKE = (resources.files("aqgan_ray") / "presets" / "smoke.toml").read_text()


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (folders included) with its size and modification time."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_size if path.is_file() else -1, st.st_mtime_ns)
    return out


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A working directory holding a results directory with an earlier run's files, and the
    helpers to write input files; ``world.refused(args, fragment)`` runs ``main`` and checks
    the one line, the exit status and that nothing under the working directory changed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AQGAN_RAY_CACHE", str(tmp_path / "cache"))
    results = tmp_path / "results"
    (results / "smoke" / "evaluations").mkdir(parents=True)
    (results / "smoke" / "layers.json").write_text("[]")
    (results / "smoke" / "evaluations" / "part-0.parquet").write_bytes(b"rows")

    class World:
        root = tmp_path

        @staticmethod
        def preset(old: str, new: str, name: str = "p.toml") -> str:
            """The smoke preset with one line replaced."""
            assert old in SMOKE
            path = tmp_path / "inputs" / name
            path.parent.mkdir(exist_ok=True)
            path.write_text(SMOKE.replace(old, new, 1))
            return str(path)

        @staticmethod
        def file(name: str, content: bytes) -> str:
            path = tmp_path / "inputs" / name
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(content)
            return str(path)

        @staticmethod
        def refused(args: list[str], fragment: str, capsys) -> str:
            before = _tree(tmp_path)
            code = main([*args] if args[0] == "compare" else [*args, "--results", str(results)])
            err = capsys.readouterr().err
            lines = [line for line in err.splitlines() if line.strip()]
            assert code == 2 and len(lines) == 1, (code, lines)
            assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
            assert _tree(tmp_path) == before  # nothing created, changed or removed
            return lines[0]

    return World()


COST = ["cost", "--uniform", "4"]


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ("bit_choices = [2, 3, 4, 5, 6, 7, 8]", 'bit_choices = ["a"]', "item 'a' has the wrong"),
        ("bit_choices = [2, 3, 4, 5, 6, 7, 8]", "bit_choices = [2.7, 4, 8]", "item 2.7"),
        ("bit_choices = [2, 3, 4, 5, 6, 7, 8]", "bit_choices = [4, 8, 64]", "item 64 is out"),
        ("width = 0.35", "width = nan", "model.width = nan is not a finite number"),
        ("width = 0.35", "width = inf", "model.width = inf is not a finite number"),
        ("width = 0.35", "width = -0.35", "model.width = -0.35 is out of range"),
        ("lr = 0.1", "lr = nan", "train.lr = nan"),
        ("epochs = 3", "epochs = true", "train.epochs = True has the wrong type"),
        ("epochs = 3", "epochs = 1e9", "train.epochs = 1000000000.0 has the wrong type"),
        ("samples = 60", "samples = -5", "collect.samples = -5 is out of range"),
        ("seed = 0", "seed = -1", "seed = -1 is out of range"),
        ("seed = 0", "seed = 4294967296", "seed = 4294967296 is out of range"),
        ("seeds = [0]", "seeds = [0, -3]", "design.seeds item -3 is out of range"),
        ('name = "smoke"', 'name = ".."', "experiment name '..' must be one folder name"),
        ('name = "smoke"', 'name = "../escape"', "experiment name '../escape'"),
        ('name = "smoke"', 'name = "/tmp/abs"', "experiment name '/tmp/abs'"),
    ],
)
def test_bad_preset_values(world, capsys, old, new, fragment):
    world.refused([*COST, "--config", world.preset(old, new)], fragment, capsys)


def test_bad_preset_values_stop_a_run_too(world, capsys):
    """``run`` refuses them before it reads or writes the results directory."""
    config = world.preset("width = 0.35", "width = nan")
    world.refused(["run", "--config", config], "model.width = nan", capsys)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--seed", "-1"], "--seed must be an integer within 0..4294967295, not -1"),
        (["--seed", "4294967296"], "--seed must be an integer within 0..4294967295"),
    ],
)
def test_bad_seed_option(world, capsys, args, fragment):
    world.refused([*COST, "--experiment", "smoke", *args], fragment, capsys)


@pytest.mark.parametrize(
    ("seeds", "fragment"),
    [
        ("0,-1", "seed -1 is not a non-negative integer up to 4294967295"),
        ("4294967296", "4294967296"),
    ],
)
def test_bad_seeds_option(world, capsys, seeds, fragment):
    world.refused(["run", "--experiment", "smoke", "--seeds", seeds], fragment, capsys)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--cpus-per-worker", "nan"], "--cpus-per-worker must be a finite number at least 0.1"),
        (["--cpus-per-worker", "1e-9"], "--cpus-per-worker must be at least 0.1, not 1e-09"),
        (["--cpus-per-worker=-1"], "--cpus-per-worker must be at least 0.1"),
        (["--gpus-per-worker", "nan"], "--gpus-per-worker must be a finite number 0 or at least"),
        (["--gpus-per-worker", "1e-6"], "--gpus-per-worker must be 0 or at least 0.01"),
        (["--gpus-per-worker=-inf"], "--gpus-per-worker must be a finite number"),
        (["--workers", "0"], "--workers must be at least 1, not 0"),
        (["--workers=-2"], "--workers must be at least 1, not -2"),
        (["--samples=-1"], "--samples must be at least 0"),
    ],
)
def test_bad_ray_options_fail_before_ray_starts(world, capsys, args, fragment):
    def ray_up() -> bool:  # this process may have joined the session's cluster already
        ray = sys.modules.get("ray")
        return ray is not None and ray.is_initialized()

    before = ray_up()
    world.refused(["collect", "--experiment", "smoke", *args], fragment, capsys)
    assert ray_up() == before  # refused before Ray was started or left


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["generate", "--target-acc", "0.5", "--n", "0"], "--n must be within 1..1000000, not 0"),
        (["generate", "--target-acc", "nan"], "--target-acc nan must be an accuracy in [0, 1]"),
        (["generate", "--target-acc", "0.5", "--tolerance", "nan"], "--tolerance nan must be"),
        (["train", "--steps", "0"], "--steps must be at least 1, not 0"),
        (["baseline", "random", "--evaluations", "-3"], "--evaluations must be at least 1"),
        (["bench", "eval", "--repeats", "0"], "--repeats must be at least 1, not 0"),
    ],
)
def test_bad_counts(world, capsys, args, fragment):
    world.refused([*args, "--experiment", "smoke"], fragment, capsys)


def test_files_that_are_not_utf8(world, capsys):
    bits = world.file("bits.json", b'{"w_bits": [8], "a_bits": [8]}\xff')
    world.refused(
        [*COST[:1], "--experiment", "smoke", "--bits", bits], "is not UTF-8 text (byte 0xff", capsys
    )
    config = world.file("p.toml", SMOKE.encode().replace(b'"smoke"', b'"sm\xe9ke"'))
    world.refused([*COST, "--config", config], "--config", capsys)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"layer,w_bits,a_bits,latency_ms\n0,8,8,inf\n", "non-finite"),
        (b"layer,w_bits,a_bits,latency_ms\n0,99999999999999,8,1\n", "within 1..16"),
        (b"layer,w_bits,a_bits,latency_ms\n0,inf,8,1\n", "within 1..16"),
    ],
)
def test_bad_cost_tables(world, capsys, content, fragment):
    table = world.file("table.csv", content)
    world.refused([*COST, "--experiment", "smoke", "--hw", f"table:{table}"], fragment, capsys)


def test_a_damaged_experiment_json(world, capsys):
    manifest = world.root / "results" / "smoke" / "experiment.json"
    manifest.write_text('{"name": "smo')
    world.refused(["run", "--experiment", "smoke"], "experiment.json is damaged", capsys)


def test_a_damaged_run_json(world, capsys):
    import pandas as pd

    run_dir = world.root / "results" / "smoke"
    pd.DataFrame({"method": ["aqgan"]}).to_parquet(run_dir / "search_cost.parquet")
    (run_dir / "run.json").write_bytes(b"\xff\xfe")
    world.refused(["compare", str(run_dir)], "run.json is damaged", capsys)


def test_read_json_names_the_file_and_what_to_do(tmp_path):
    from aqgan_ray.atomic import read_json
    from aqgan_ray.errors import UserError

    path = tmp_path / "run.json"
    for content in (b'{"chance_acc": 0.1', b"\xff", b"[1, 2]"):
        path.write_bytes(content)
        with pytest.raises(UserError, match=r"run.json is damaged \(.*\); delete it") as err:
            read_json(path)
        assert "\n" not in str(err.value)
    path.write_text('{"chance_acc": 0.1}')
    assert read_json(path) == {"chance_acc": 0.1}


def test_json_output_never_holds_nan():
    value = {
        "a": float("nan"),
        "b": [np.float32("inf"), np.float64(0.5), (np.int64(3), -math.inf)],
        "c": {"d": np.float32(0.25), "e": np.bool_(True)},
    }
    text = json.dumps(_json_safe(value), allow_nan=False)
    assert json.loads(text) == {"a": None, "b": [None, 0.5, [3, None]], "c": {"d": 0.25, "e": True}}


def test_sigterm_unwinds_like_ctrl_c(monkeypatch, capsys):
    """A SIGTERM mid-command runs the command's ``finally`` blocks (where stores flush), prints
    one line and exits 143; the previous handler is back afterwards."""
    from aqgan_ray import cli

    unwound = []

    def command(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            threading.Event().wait(10)  # the handler raises here, in the main thread
        finally:
            unwound.append(True)
        raise AssertionError("SIGTERM did not stop the command")

    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setitem(cli.COMMANDS, "compare", command)
    assert main(["compare", "somewhere"]) == 143
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["error: terminated; what was written so far is kept"]
    assert unwound == [True]
    assert signal.getsignal(signal.SIGTERM) is previous


def test_sigterm_handler_only_in_the_main_thread(monkeypatch):
    """``main`` called from another thread (a notebook's worker) runs without one."""
    from aqgan_ray import cli

    seen = []
    monkeypatch.setitem(
        cli.COMMANDS, "compare", lambda args: seen.append(signal.getsignal(signal.SIGTERM)) or {}
    )
    previous = signal.getsignal(signal.SIGTERM)
    codes = []
    worker = threading.Thread(target=lambda: codes.append(main(["compare", "x"])))
    worker.start()
    worker.join()
    assert codes == [0] and seen == [previous]


def test_the_cli_and_the_pool_refuse_the_same_worker_shares():
    from aqgan_ray import cli, settings

    assert cli._OPTION_LIMITS["cpus_per_worker"][0] == settings.MIN_CPUS_PER_WORKER
    assert cli._OPTION_LIMITS["gpus_per_worker"][0] == settings.MIN_GPUS_PER_WORKER
