"""Ray itself: start an embedded local Ray or join a cluster, and say what it can hold. With
``ray_actors`` (the evaluators) the only modules of the pools that import ``ray``.

- ``connect`` starts an embedded local Ray of its own (``address="local"``: never a stale
  ``ray_current_cluster``), joins the cluster ``RAY_ADDRESS`` names, or joins a given one
  (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``), failing with one line when it cannot; the
  token file Ray may write is kept 0600.
- ``plan_workers`` turns a ``PoolSpec`` into a number of evaluators the live nodes can hold, or
  one line saying why not.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import ray
from ray.exceptions import AuthenticationError, RayError

from aqgan_ray.errors import UserError
from aqgan_ray.settings import MIN_CPUS_PER_WORKER, MIN_GPUS_PER_WORKER

# How long a cluster address may take to answer a TCP connection before we call it unreachable.
CONNECT_TIMEOUT_S = 5.0


class ClusterWarning(UserWarning):
    """A one-line note about the cluster (the CLI prints ``warning: ...``)."""


@dataclass(frozen=True)
class PoolSpec:
    workers: int | None = None  # None: as many as the cluster's nodes can hold
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


def _check_reachable(address: str) -> None:
    """A TCP probe with a short timeout: ``ray.init`` itself retries for a minute or more."""
    if address == "auto":
        return
    target = urlsplit(address if "://" in address else f"tcp://{address}")
    if target.scheme not in ("tcp", "ray"):
        raise UserError(f"--address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        host, port = target.hostname, target.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise UserError(f"--address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise UserError(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); check the "
            "address and that `ray start --head` runs there"
        ) from None


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect(address: str | None = None, num_cpus: int | None = None) -> dict[str, object]:
    """Join (or start) Ray once per process; a second call reuses the connection.

    Without ``address``, ``RAY_ADDRESS`` is honoured as if it were given (``ray job submit``
    sets it for the job's command), with a one-line note; unset, an embedded local Ray starts.
    """
    if not ray.is_initialized():
        from_env = os.environ.get("RAY_ADDRESS", "").strip()
        if address is None and from_env and from_env != "local":
            warnings.warn(
                f"joining the Ray cluster at {from_env} named by RAY_ADDRESS (unset it for an "
                "embedded local Ray)",
                ClusterWarning,
                stacklevel=2,
            )
            address = from_env
        with _token_file_kept_private(), _sigterm_handler_kept():
            if address is None:
                _start_local(num_cpus)
            else:
                _join(address)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    return {
        "address": address or "local",
        "nodes": len(nodes),
        "cpus": sum(n["Resources"].get("CPU", 0) for n in nodes),
        "gpus": sum(n["Resources"].get("GPU", 0) for n in nodes),
    }


def _start_local(num_cpus: int | None) -> None:
    """A new local Ray whatever else runs on the machine: ``address="local"`` skips both
    ``RAY_ADDRESS`` and the ``ray_current_cluster`` file a dead ``ray start`` leaves behind
    (joining that is what made ``num_cpus`` an error)."""
    hidden = os.environ.pop("RAY_ADDRESS", None)  # not inherited by the daemons either
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            logging_level="WARNING",
        )
    except (ConnectionError, RuntimeError, ValueError, RayError) as exc:
        raise UserError(f"cannot start a local Ray: {first_line(exc)}") from None
    finally:
        if hidden is not None:
            os.environ["RAY_ADDRESS"] = hidden


def _join(address: str) -> None:
    _check_reachable(address)
    try:
        ray.init(address=address, logging_level="WARNING")
    except AuthenticationError as exc:
        raise UserError(
            f"cannot join the Ray cluster at {address}: {first_line(exc).rstrip('.')}; set "
            "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token) to the cluster's token"
        ) from None
    except (ConnectionError, RuntimeError, ValueError, RayError) as exc:
        raise UserError(
            f"cannot join the Ray cluster at {address}: {first_line(exc)} (a cluster with token "
            "authentication needs its token: RAY_AUTH_TOKEN or ~/.ray/auth_token)"
        ) from None


@contextmanager
def _sigterm_handler_kept():
    """Ray's core worker installs a native SIGTERM handler that aborts the driver; the caller's
    Python handler (the CLI's, which unwinds the stack so buffered rows are written) is put
    back over it. Signal handlers belong to the main thread: elsewhere nothing is touched."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(previous):
            signal.signal(signal.SIGTERM, previous)


def _token_path() -> Path:
    """Where Ray reads (and, for a new local cluster, writes) its authentication token."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


@contextmanager
def _token_file_kept_private():
    """The token grants full control of the cluster, but Ray writes a missing token file with
    the process umask (usually 0644). Only when Ray may write one is the umask 077 while it
    starts (the daemons inherit it); a token file of ours readable by others ends up 0600."""
    path = _token_path()
    creating = not path.exists() and not os.environ.get("RAY_AUTH_TOKEN")
    old = os.umask(0o077) if creating else None
    try:
        yield
    finally:
        if old is not None:
            os.umask(old)
        try:
            mode = path.stat()
        except OSError:
            mode = None
        if mode is not None and mode.st_uid == os.getuid() and mode.st_mode & 0o077:
            try:
                path.chmod(0o600)
            except OSError:
                pass
            else:
                if not creating:
                    warnings.warn(
                        f"{path} was readable by other users; made it 0600",
                        ClusterWarning,
                        stacklevel=3,
                    )


def is_connected() -> bool:
    return ray.is_initialized()


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()


def plan_workers(spec: PoolSpec) -> int:
    """How many evaluators to start; a request the cluster cannot meet fails now, instead of
    Ray queueing actors forever."""
    cpu, gpu = spec.cpus_per_worker, spec.gpus_per_worker
    if not math.isfinite(cpu) or cpu < MIN_CPUS_PER_WORKER:
        raise UserError(
            f"--cpus-per-worker {cpu:g}: an evaluator needs a finite CPU share of at least "
            f"{MIN_CPUS_PER_WORKER:g}"
        )
    if not math.isfinite(gpu) or gpu < 0 or 0 < gpu < MIN_GPUS_PER_WORKER:
        raise UserError(
            f"--gpus-per-worker {gpu:g}: expected 0, or a finite GPU share of at least "
            f"{MIN_GPUS_PER_WORKER:g}"
        )
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    capacity = _capacity(spec)
    if capacity == 0:
        largest = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
        raise UserError(
            f"an evaluator asks for {cpu:g} CPU and {gpu:g} GPU but no node has that much "
            f"(largest: {largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU); lower "
            "--cpus-per-worker/--gpus-per-worker or add nodes"
        )
    if spec.workers is None:
        return capacity
    if spec.workers < 1:
        raise UserError("--workers must be at least 1")
    if spec.workers > capacity:
        raise UserError(
            f"--workers {spec.workers} asks for more evaluators than the cluster holds: "
            f"{capacity} fit at {cpu:g} CPU / {gpu:g} GPU each; lower --workers"
        )
    return spec.workers


def _capacity(spec: PoolSpec) -> int:
    """Evaluators of ``spec``'s size that the live nodes hold (an actor fits on one node)."""
    cpu, gpu = spec.cpus_per_worker, spec.gpus_per_worker

    def fits(res: dict) -> int:
        by_cpu = math.floor(res.get("CPU", 0) / cpu + 1e-9)
        by_gpu = math.floor(res.get("GPU", 0) / gpu + 1e-9) if gpu else by_cpu
        return min(by_cpu, by_gpu)

    return sum(fits(n["Resources"]) for n in ray.nodes() if n["Alive"])
