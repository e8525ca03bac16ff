"""The distribution layer: evaluator actors on Ray, the package's one ``Pool`` that imports
``ray`` (``aqgan.tune`` is the other Ray module: Ray Tune).

- ``connect`` starts an embedded local Ray, or joins a cluster (``auto``, ``HOST:PORT``,
  ``ray://HOST:PORT``), failing fast with one line when the address cannot be reached.
- ``EvaluatorPool`` starts evaluator actors that each load the model, calibration and
  validation images once, from Ray's object store (``ray.put`` once, by reference after that),
  so worker nodes need neither a shared filesystem nor a copy of the dataset. Tasks carry only
  configs. Results are consumed in completion order (``ray.wait``).
- An actor that dies (OOM killer, node lost, ``kill -9``) is replaced and the configs it held
  are sent again; nothing is lost and, because a dead actor returns nothing, nothing is
  counted twice.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError
from torch import Tensor

from aqgan_ray.config import QuantConfig
from aqgan_ray.errors import UserError
from aqgan_ray.evaluate import EvalResult, Evaluator
from aqgan_ray.pools.base import Evaluated
from aqgan_ray.prepare import Prepared

# How long a cluster address may take to answer a TCP connection before we call it unreachable.
CONNECT_TIMEOUT_S = 5.0
# Two tasks in flight per actor: the next config is already waiting when one finishes, so an
# actor never idles for a driver round trip.
TASKS_PER_ACTOR = 2


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


def connect(address: str | None = None, num_cpus: int | None = None) -> dict[str, object]:
    """Join (or start) Ray once per process; a second call reuses the connection."""
    if not ray.is_initialized():
        if address is None:
            ray.init(
                num_cpus=num_cpus or os.cpu_count(),
                include_dashboard=False,
                logging_level="WARNING",
            )
        else:
            _check_reachable(address)
            try:
                ray.init(address=address, logging_level="WARNING")
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(
                    f"cannot join the Ray cluster at {address}: {first} (a cluster with token "
                    "authentication needs its token: RAY_AUTH_TOKEN or ~/.ray/auth_token)"
                ) from None
    nodes = [n for n in ray.nodes() if n["Alive"]]
    return {
        "address": address or "local",
        "nodes": len(nodes),
        "cpus": sum(n["Resources"].get("CPU", 0) for n in nodes),
        "gpus": sum(n["Resources"].get("GPU", 0) for n in nodes),
    }


def is_connected() -> bool:
    return ray.is_initialized()


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()


def plan_workers(spec: PoolSpec) -> int:
    """How many evaluators to start; a request the cluster cannot meet fails now, instead of
    Ray queueing actors forever."""
    cpu, gpu = spec.cpus_per_worker, spec.gpus_per_worker
    if cpu <= 0 or gpu < 0:
        raise UserError("--cpus-per-worker must be positive and --gpus-per-worker non-negative")
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


def _code_version() -> str:
    """The package version plus a digest of its sources: a node where `ray up` did not ship
    the latest edit differs even when the version number does not."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    try:
        release = version("aqgan-ray")
    except PackageNotFoundError:
        release = "unknown"
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + path.read_bytes())
    return f"{release}+{digest.hexdigest()[:8]}"


def _capacity(spec: PoolSpec) -> int:
    """Evaluators of ``spec``'s size that the live nodes hold (an actor fits on one node)."""
    cpu, gpu = spec.cpus_per_worker, spec.gpus_per_worker

    def fits(res: dict) -> int:
        by_cpu = math.floor(res.get("CPU", 0) / cpu + 1e-9)
        by_gpu = math.floor(res.get("GPU", 0) / gpu + 1e-9) if gpu else by_cpu
        return min(by_cpu, by_gpu)

    return sum(fits(n["Resources"]) for n in ray.nodes() if n["Alive"])


class _EvaluatorActor:
    """One evaluator per actor process, built once from object-store references."""

    def __init__(
        self,
        prepared: Prepared,
        val: tuple[Tensor, Tensor],
        train: tuple[Tensor, Tensor] | None,
        threads: int,
        use_gpu: bool,
        compile: bool | None,
    ):
        torch.set_num_threads(threads)
        device = "cuda" if use_gpu else "cpu"  # Ray set CUDA_VISIBLE_DEVICES to our share
        self.evaluator = Evaluator(prepared, val=val, train=train, compile=compile, device=device)
        self.node_id = ray.get_runtime_context().get_node_id()

    def evaluate(self, config: QuantConfig) -> tuple[EvalResult, str, int]:
        return self.evaluator.evaluate(config), self.node_id, os.getpid()

    def describe(self) -> tuple[int, str]:
        return os.getpid(), _code_version()


class EvaluatorPool:
    """A fixed set of evaluator actors; ``imap_unordered`` streams configs through them."""

    def __init__(
        self,
        prepared: Prepared,
        val: tuple[Tensor, Tensor],
        train: tuple[Tensor, Tensor] | None = None,
        spec: PoolSpec | None = None,
        compile: bool | None = None,
    ):
        if not ray.is_initialized():
            raise RuntimeError("call pool.connect() first")
        self.spec = spec or PoolSpec()
        self.size = plan_workers(self.spec)
        if prepared.experiment.eval.finetune_steps > 0 and train is None:
            raise ValueError("fine-tuning evaluators need the training split")
        # Put once; every actor (and every replacement) receives references, not copies.
        self._args = (ray.put(prepared), ray.put(val), ray.put(train) if train else None)
        self._compile = compile
        self._remote = ray.remote(_EvaluatorActor).options(
            num_cpus=self.spec.cpus_per_worker,
            num_gpus=self.spec.gpus_per_worker,
            scheduling_strategy="SPREAD",
            max_restarts=0,  # replaced by us, so that in-flight configs are re-queued knowingly
        )
        self.actors = [self._spawn() for _ in range(self.size)]
        self.replaced = 0

    def _spawn(self):
        threads = max(1, int(self.spec.cpus_per_worker))
        return self._remote.remote(
            *self._args, threads, self.spec.gpus_per_worker > 0, self._compile
        )

    def worker_pids(self, timeout_s: float = 900.0) -> list[int]:
        """The actors' process ids, once every actor is built; refuses a cluster whose nodes
        run another aqgan-ray than the driver (their accuracies would not be comparable)."""
        try:
            described = ray.get([a.describe.remote() for a in self.actors], timeout=timeout_s)
        except GetTimeoutError:
            raise UserError(
                f"evaluator actors were not ready after {timeout_s:.0f} s; is the cluster busy?"
            ) from None
        mine = _code_version()
        for _, theirs in described:
            if theirs != mine:
                raise UserError(
                    f"a cluster node runs aqgan-ray {theirs} but this driver runs {mine}; "
                    "install the same version on every node (see clusters/README.md)"
                )
        return [pid for pid, _ in described]

    def warm_up(self, config: QuantConfig, timeout_s: float = 900.0) -> float:
        """One evaluation on every actor (builds, and compiles if asked); returns seconds."""
        start = time.perf_counter()
        try:
            ray.get([a.evaluate.remote(config) for a in self.actors], timeout=timeout_s)
        except GetTimeoutError:
            raise UserError(
                f"evaluator actors were not ready after {timeout_s:.0f} s; is the cluster busy?"
            ) from None
        return time.perf_counter() - start

    def imap_unordered(self, configs: Iterable[QuantConfig]) -> Iterator[Evaluated]:
        """Evaluate ``configs`` and yield results as they complete.

        ``configs`` is pulled lazily, only when an actor has room, so a proposer may base its
        next config on the results yielded so far. Tasks still queued when the caller stops
        early are cancelled.
        """
        source = iter(configs)
        retry: deque[QuantConfig] = deque()
        pending: dict[ray.ObjectRef, tuple[object, QuantConfig]] = {}
        load = {id(a): 0 for a in self.actors}
        exhausted = False

        def next_config() -> QuantConfig | None:
            nonlocal exhausted
            if retry:
                return retry.popleft()
            if exhausted:
                return None
            config = next(source, None)
            exhausted = config is None
            return config

        try:
            while True:
                # Breadth first: every idle actor gets a task before any gets a second, so a
                # batch as small as the pool runs in parallel instead of queueing on one actor.
                for depth in range(1, TASKS_PER_ACTOR + 1):
                    for actor in self.actors:
                        if load[id(actor)] >= depth:
                            continue
                        config = next_config()
                        if config is None:
                            break
                        pending[actor.evaluate.remote(config)] = (actor, config)
                        load[id(actor)] += 1
                if not pending:
                    return
                ready, _ = ray.wait(list(pending), num_returns=1)
                actor, config = pending.pop(ready[0])
                load[id(actor)] -= 1
                try:
                    result, node_id, pid = ray.get(ready[0])
                except RayActorError as exc:
                    retry.append(config)
                    for ref, (other_actor, other) in list(pending.items()):
                        if other_actor is actor:
                            del pending[ref]
                            retry.append(other)
                    new = self._replace(actor, exc)
                    if new is not None:
                        load[id(new)] = 0
                    continue
                yield Evaluated(config, result, node_id, pid)
        finally:
            for ref in pending:  # queued behind a running task; the running one finishes
                ray.cancel(ref)

    def _replace(self, dead, exc: RayActorError):
        """A new actor in place of ``dead``, or none if the cluster has lost the room for it
        (a node went away): the pool shrinks rather than wait forever for resources."""
        self.replaced += 1
        if self.replaced > 3 * self.size + 3:
            raise RuntimeError(f"evaluator actors keep dying ({self.replaced} replaced): {exc}")
        ray.kill(dead, no_restart=True)
        slot = self.actors.index(dead)
        room = _capacity(self.spec) >= len(self.actors)
        what = "replacing it" if room else "the cluster has no room for another, continuing with"
        print(
            f"warning: an evaluator died ({type(exc).__name__}); {what}"
            + ("" if room else f" {len(self.actors) - 1}")
            + "; its configs are queued again",
            file=sys.stderr,
        )
        if room:
            self.actors[slot] = self._spawn()
            return self.actors[slot]
        del self.actors[slot]
        if not self.actors:
            raise UserError("every evaluator node is gone; the results so far are in the store")
        return None

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []

    def __enter__(self) -> EvaluatorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
