"""Starting or joining Ray (``pools.cluster``): an embedded Ray of its own whatever cluster files
or ``RAY_ADDRESS`` say, a token file kept private, and one line for an address, a token or a
request the cluster cannot meet."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from aqgan_ray.errors import UserError
from aqgan_ray.pools import cluster
from aqgan_ray.pools.cluster import PoolSpec


def test_requests_the_cluster_cannot_meet_fail_at_once(ray_cluster):
    start = time.perf_counter()
    with pytest.raises(UserError, match="--workers 3"):
        cluster.plan_workers(PoolSpec(workers=3))
    with pytest.raises(UserError, match="no node has that much"):
        cluster.plan_workers(PoolSpec(cpus_per_worker=2))
    with pytest.raises(UserError, match="no node has that much"):
        cluster.plan_workers(PoolSpec(gpus_per_worker=1))
    for cpus in (float("nan"), float("inf"), 0.001, 0.0, -1.0):
        with pytest.raises(UserError, match="--cpus-per-worker"):
            cluster.plan_workers(PoolSpec(cpus_per_worker=cpus))
    for gpus in (float("nan"), -1.0, 0.001):
        with pytest.raises(UserError, match="--gpus-per-worker"):
            cluster.plan_workers(PoolSpec(gpus_per_worker=gpus))
    assert cluster.plan_workers(PoolSpec()) == 2
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize(
    ("address", "fragment"),
    [("127.0.0.1:1", "cannot reach a Ray cluster"), ("no-port", "expected auto, HOST:PORT")],
)
def test_unreachable_or_malformed_address(address, fragment):
    start = time.perf_counter()
    with pytest.raises(UserError, match=fragment):
        cluster._check_reachable(address)
    assert time.perf_counter() - start < cluster.CONNECT_TIMEOUT_S + 1


CONNECT = """
import json, sys
from aqgan_ray.errors import UserError
from aqgan_ray.pools import cluster as pool
try:
    info = pool.connect(sys.argv[1] or None, num_cpus=1)
except UserError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
print(json.dumps(info))
pool.disconnect()
"""


def _connect_elsewhere(
    address: str = "", drop: tuple[str, ...] = (), **extra: str
) -> subprocess.CompletedProcess:
    """``connect`` in a fresh process (this one is joined to the test cluster for good)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", *drop)}
    env.update(extra)
    proc = subprocess.Popen(
        [sys.executable, "-c", CONNECT, address], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # an embedded Ray it started, whatever happened
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.ray
def test_embedded_ray_ignores_a_stale_cluster_file_and_keeps_its_token_private(tmp_path):
    """A ``ray start`` cluster that died uncleanly leaves ``ray_current_cluster`` naming it
    (here in a private RAY_TMPDIR); Ray's default would join it and refuse ``num_cpus``. With
    no token anywhere, the new cluster's token file is written 0600, not with the umask."""
    temp = tempfile.mkdtemp(prefix="aqr", dir="/tmp")  # short: Ray's socket paths have a limit
    try:
        (Path(temp) / "ray").mkdir()
        (Path(temp) / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
        done = _connect_elsewhere(
            drop=("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"),
            RAY_TMPDIR=temp,
            HOME=str(tmp_path),
            RAY_AUTH_MODE="token",
        )
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["nodes"] == 1
    token = tmp_path / ".ray" / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600


def test_ray_address_in_the_environment_is_joined_with_a_note():
    done = _connect_elsewhere(RAY_ADDRESS="127.0.0.1:1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "joining the Ray cluster at 127.0.0.1:1 named by RAY_ADDRESS" in done.stderr
    assert "error: cannot reach a Ray cluster at 127.0.0.1:1" in done.stderr


@pytest.mark.parametrize(
    ("token", "fragment"),
    [(None, "no authentication token was found"), ("wrong", "Failed to connect")],
)
def test_joining_without_the_clusters_token_fails_in_one_line(
    ray_cluster, tmp_path, token, fragment
):
    extra = {"RAY_AUTH_TOKEN": token} if token else {}
    done = _connect_elsewhere(
        ray_cluster["address"], drop=("RAY_AUTH_TOKEN",), HOME=str(tmp_path), **extra
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0]
    assert "RAY_AUTH_TOKEN" in errors[0]
