"""Fault injection: the command line killed at random points, an evaluator killed, a node of a
loopback cluster removed, the only node lost. After each, a rerun ends with no lost and no
duplicated evaluation, no config charged twice, and nothing hangs (every wait is bounded).

Each kill point is drawn from a seeded generator, printed with the test's output, so a failure
names the delay that caused it. Commands run as subprocesses in sessions of their own: the test
kills exactly the process it means to, then everything the command left running.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

# Every wait here has a bound: a hang fails the test instead of stalling CI.
COMMAND_TIMEOUT_S = 420
ROWS_TIMEOUT_S = 240

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture
def launch(cache_dir, smoke, tmp_path):
    """Start ``python -m aqgan_ray ARGS`` in a session of its own; teardown kills the session
    (an embedded Ray's daemons and actors live in it)."""
    started: list[subprocess.Popen] = []

    def start(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.Popen:
        env = {**os.environ, "AQGAN_RAY_CACHE": str(cache_dir), **(env_extra or {})}
        log = tmp_path / f"cmd-{len(started)}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "aqgan_ray", *args],
            stdout=open(f"{log}.out", "w"),  # noqa: SIM115 - closed with the process
            stderr=open(f"{log}.err", "w"),  # noqa: SIM115
            env=env,
            start_new_session=True,
        )
        proc.log = log  # type: ignore[attr-defined]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        _kill_session(proc)


def _kill_session(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    """Wait for a command (bounded) and return its status and stderr."""
    try:
        code = proc.wait(timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill_session(proc)
        pytest.fail(f"hung: {Path(f'{proc.log}.err').read_text()[-2000:]}")
    _kill_session(proc)  # what a killed driver left behind
    return code, Path(f"{proc.log}.err").read_text()


def _ok(proc: subprocess.Popen) -> None:
    code, err = _finish(proc)
    assert code == 0, err[-3000:]


def _stop(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the driver alone; a SIGTERM must end it as Ctrl-C would: exit 143 and
    one line (or 0, had it just finished)."""
    os.kill(proc.pid, sig)
    code, err = _finish(proc)
    if sig == signal.SIGTERM and code != 0:
        assert code == 143, err[-3000:]
        assert len(_error_lines(err)) == 1 and "terminated" in _error_lines(err)[0], err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def _raw_rows(store: Path) -> list[dict]:
    """Every row of every readable part, duplicates kept (the store's reader drops them)."""
    rows = []
    for part in sorted(store.glob("part-*.parquet")):
        rows += pq.read_table(part).select(["config_hash", "source"]).to_pylist()
    return rows


def _wait_for_rows(store: Path, n: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + ROWS_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return  # finished (or failed) before the kill point: the checks still apply
        try:
            if len(_raw_rows(store)) >= n:
                return
        except OSError:
            pass  # a part renamed while listed
        time.sleep(0.2)
    pytest.fail(f"no {n} rows in {store} after {ROWS_TIMEOUT_S} s")


def _descendant_pids(proc: subprocess.Popen, fragment: str) -> list[int]:
    """Processes started by ``proc`` (Ray starts its daemons in sessions of their own) whose
    command line contains ``fragment``."""
    out = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True
    ).stdout
    children: dict[int, list[tuple[int, str]]] = {}
    for line in out.splitlines():
        pid, ppid, *args = line.split(None, 2)
        children.setdefault(int(ppid), []).append((int(pid), "".join(args)))
    found, todo = [], [proc.pid]
    while todo:
        for pid, args in children.get(todo.pop(), []):
            todo.append(pid)
            if fragment in args:
                found.append(pid)
    return found


def _assert_no_duplicates(store: Path, expected: int | None = None) -> list[dict]:
    rows = _raw_rows(store)
    hashes = [r["config_hash"] for r in rows]
    assert len(hashes) == len(set(hashes)), "a config was evaluated (and stored) twice"
    assert not list(store.glob("*.corrupt")), "a part was quarantined"
    if expected is not None:
        assert len(rows) == expected
    return rows


def _assert_trace_charged_once(trace_path: Path, store_rows: list[dict], method: str, n: int):
    """The trace charges each ask once, in order, and charges every evaluation the method
    caused: each of its stored rows is in its trace."""
    trace = pq.read_table(trace_path).to_pandas()
    assert list(trace["index"]) == list(range(n)), list(trace["index"])
    asked = set(trace["config_hash"])
    own = {r["config_hash"] for r in store_rows if r["source"] == method}
    assert own <= asked, f"evaluated but never charged: {sorted(own - asked)}"
    fresh = trace[~trace["cached"]]["config_hash"]
    assert fresh.is_unique, "a config evaluated now was charged twice"


def _kill_at_random(
    proc: subprocess.Popen, store: Path, sig: int, seed: str, rows: tuple[int, int], wait_s: float
) -> None:
    """Stop ``proc`` with ``sig`` once ``store`` holds a drawn number of rows, a drawn delay
    later (seeded, printed: a failure names its kill point)."""
    rng = random.Random(seed)
    kill_after, delay = rng.randint(*rows), rng.uniform(0.0, wait_s)
    print(f"kill point: {signal.Signals(sig).name} after {kill_after} rows + {delay:.2f} s")
    _wait_for_rows(store, kill_after, proc)
    time.sleep(delay)
    if proc.poll() is None:
        _stop(proc, sig)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill9", "sigterm"])
@pytest.mark.parametrize("draw", [0, 1])
def test_collect_killed_at_a_random_point_then_rerun(launch, tmp_path, sig, draw):
    args = ("collect", "--experiment", "smoke", "--samples", "12", "--results", str(tmp_path))
    store = tmp_path / "smoke" / "evaluations"
    _kill_at_random(launch(*args), store, sig, f"collect-{sig}-{draw}", (1, 8), 2.0)
    _ok(launch(*args))
    _assert_no_duplicates(store, expected=12)


def test_collect_survives_a_killed_evaluator(launch, tmp_path):
    args = ("collect", "--experiment", "smoke", "--samples", "10", "--results", str(tmp_path))
    store = tmp_path / "smoke" / "evaluations"
    proc = launch(*args, "--workers", "2")
    _wait_for_rows(store, 1, proc)
    victims = _descendant_pids(proc, "_EvaluatorActor")
    assert victims, "no evaluator among the command's processes"
    os.kill(victims[0], signal.SIGKILL)
    _ok(proc)
    _assert_no_duplicates(store, expected=10)


@pytest.mark.parametrize(
    ("sig", "draw"), [(signal.SIGKILL, 0), (signal.SIGTERM, 1)], ids=["kill9", "sigterm"]
)
def test_baseline_optuna_killed_at_a_random_point_then_rerun(launch, tmp_path, sig, draw):
    args = (
        "baseline", "optuna", "--experiment", "smoke", "--hw", "bismo-edge", "--budget",
        "latency_ms=0.5x", "--evaluations", "8", "--results", str(tmp_path),
    )  # fmt: skip
    store = tmp_path / "smoke" / "evaluations"
    _kill_at_random(launch(*args), store, sig, f"optuna-{draw}", (1, 5), 1.5)
    _ok(launch(*args))
    rows = _assert_no_duplicates(store)
    (trace,) = (tmp_path / "smoke" / "searches" / "optuna").glob("*/trace.parquet")
    _assert_trace_charged_once(trace, rows, "optuna", 8)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill9", "sigterm"])
def test_run_killed_at_a_random_point_then_resumed(launch, tmp_path, tiny_preset, sig):
    args = ("run", "--config", tiny_preset, "--results", str(tmp_path))
    first = launch(*args)
    deadline = time.monotonic() + ROWS_TIMEOUT_S
    while not list(tmp_path.glob("*/evaluations")) and time.monotonic() < deadline:
        time.sleep(0.5)
    (store,) = tmp_path.glob("*/evaluations")
    _kill_at_random(first, store, sig, f"run-{sig}", (5, 40), 3.0)
    _ok(launch(*args, "--resume"))
    rows = _assert_no_duplicates(store)
    experiment = store.parent
    assert (experiment / "search_cost.parquet").exists() and (experiment / "report.md").exists()
    for method in ("haq", "optuna", "random"):
        for trace in (experiment / "searches" / method).glob("*/trace.parquet"):
            _assert_trace_charged_once(trace, rows, method, 3)


def _start_node(cmd: list[str], log: Path) -> int:
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        assert proc.wait(timeout=120) == 0, log.read_text()[-2000:]
    return proc.pid  # its daemons outlive it, in this process group


def test_a_node_removed_mid_collect(launch, tmp_path):
    """Two one-CPU nodes, one evaluator each; the worker node dies mid-run, so its evaluator's
    replacement has nowhere to go: the command must not wait for it forever."""
    ray_bin = str(Path(sys.executable).with_name("ray"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="aqf", dir="/tmp")
    common = ["--num-cpus", "1", "--object-store-memory", "150000000", "--disable-usage-stats"]
    head = [ray_bin, "start", "--head", "--port", str(port), "--temp-dir", temp,
            "--include-dashboard", "false", *common]  # fmt: skip
    worker = [ray_bin, "start", "--address", f"127.0.0.1:{port}", *common]
    groups = []
    try:
        groups.append(_start_node(head, Path(temp) / "head.log"))
        groups.append(_start_node(worker, Path(temp) / "worker.log"))
        args = (
            "collect", "--experiment", "smoke", "--samples", "10", "--results", str(tmp_path),
            "--address", f"127.0.0.1:{port}",
        )  # fmt: skip
        store = tmp_path / "smoke" / "evaluations"
        proc = launch(*args, "--workers", "2")
        _wait_for_rows(store, 2, proc)
        os.killpg(groups.pop(), signal.SIGKILL)  # the worker node, all of it
        code, err = _finish(proc)
        if code != 0:  # refused to go on short-handed: one line, then a rerun finishes
            assert len(_error_lines(err)) == 1, err[-3000:]
            _ok(launch(*args))
        _assert_no_duplicates(store, expected=10)
    finally:
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


def test_the_only_node_lost_says_so_in_one_line(launch, tmp_path):
    """The embedded node's raylet killed (as an OOM kill of Ray's agent takes it down): a
    one-line error, a non-zero exit, the rows written so far kept, and a rerun finishes."""
    args = ("collect", "--experiment", "smoke", "--samples", "10", "--results", str(tmp_path))
    store = tmp_path / "smoke" / "evaluations"
    proc = launch(*args)
    _wait_for_rows(store, 2, proc)
    assert proc.poll() is None, Path(f"{proc.log}.err").read_text()[-3000:]
    raylets = _descendant_pids(proc, "raylet/raylet")
    assert raylets, "no raylet among the command's processes"
    kept = {r["config_hash"] for r in _raw_rows(store)}
    for pid in raylets:
        os.kill(pid, signal.SIGKILL)
    code, err = _finish(proc)
    assert code == 3, err[-3000:]  # the cluster failed, not the input
    assert len(_error_lines(err)) == 1 and "Traceback" not in err, err[-3000:]
    assert kept <= {r["config_hash"] for r in _raw_rows(store)}
    _ok(launch(*args))
    _assert_no_duplicates(store, expected=10)
