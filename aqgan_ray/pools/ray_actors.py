"""The distribution layer's evaluators: actors on Ray, the package's one ``Pool`` that imports
``ray`` (``pools.cluster`` starts or joins Ray; ``aqgan.tune`` is Ray Tune).

- ``EvaluatorPool`` reserves its CPUs/GPUs in a placement group (one bundle per evaluator), then
  starts evaluator actors in the bundles; each loads the model, calibration and validation
  images once, from Ray's object store (``ray.put`` once, by reference after that), so worker
  nodes need neither a shared filesystem nor a copy of the dataset. Tasks carry only configs.
  Results are consumed in completion order (``ray.wait``).
- An actor that dies (OOM killer, ``kill -9``, node lost) is replaced in its own reserved
  bundle and the configs it held are sent again; nothing is lost and, because a dead actor
  returns nothing, nothing is counted twice.
- Nothing waits forever: every wait has a deadline, and a lost node, evaluators that keep
  dying or stall end the run with one ``PoolFailure`` line; the store keeps what was evaluated.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import ray
import torch
from ray.exceptions import (
    LocalRayletDiedError,
    NodeDiedError,
    ObjectLostError,
    RayActorError,
    RayError,
    RaySystemError,
    RpcError,
    WorkerCrashedError,
)
from ray.util.placement_group import (
    PlacementGroup,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from torch import Tensor

from aqgan_ray.config import QuantConfig
from aqgan_ray.errors import PoolFailure, UserError
from aqgan_ray.evaluate import EvalResult, Evaluator
from aqgan_ray.pools.base import Evaluated
from aqgan_ray.pools.cluster import (  # re-exported: the pool's callers start here
    CONNECT_TIMEOUT_S,
    MIN_CPUS_PER_WORKER,
    ClusterWarning,
    PoolSpec,
    connect,
    disconnect,
    first_line,
    is_connected,
    plan_workers,
)
from aqgan_ray.prepare import Prepared

__all__ = [
    "MIN_CPUS_PER_WORKER",
    "ClusterWarning",
    "EvaluatorPool",
    "PoolSpec",
    "connect",
    "disconnect",
    "is_connected",
    "plan_workers",
]

# Two tasks in flight per actor: the next config is already waiting when one finishes, so an
# actor never idles for a driver round trip.
TASKS_PER_ACTOR = 2
# Reserving the pool's bundles takes well under a second when the CPUs are free; a minute
# lets another job's actors finish, then we say who holds the cluster instead of queueing.
RESERVE_TIMEOUT_S = 60.0
# Building the actors and the first evaluation (torch.compile included) on a busy node; the
# same allowance ``worker_pids`` and ``warm_up`` give.
BUILD_TIMEOUT_S = 900.0
# A replacement goes into its dead predecessor's reserved bundle, so this covers building the
# evaluator, or Ray moving a lost node's bundle elsewhere; after it the slot is given up.
REPLACE_TIMEOUT_S = 300.0
# Ray moves a lost node's bundle within a second or two when some node has room; a bundle
# still homeless after this, with no room anywhere, will not come up: its slot is given up.
STRANDED_GRACE_S = 10.0
# No result for this long while evaluations are in flight means a hang: the floor keeps fast
# models from tripping on a scheduling hiccup, the factor keeps slow ones from tripping at all.
MIN_STALL_S = 60.0
STALL_FACTOR = 20.0
# Every wait wakes this often to look at the driver's own node (a dead raylet takes Ray's
# object store with it, and Ray ends the process at its next use of it: we must be first).
TICK_S = 1.0
# Ray's errors for a lost node, raylet, object or control plane: the cluster failed, not our
# code (an exception inside an evaluation arrives as RayTaskError and keeps its traceback).
CLUSTER_ERRORS = (
    RayActorError,
    RaySystemError,
    NodeDiedError,
    LocalRayletDiedError,
    ObjectLostError,
    RpcError,
    WorkerCrashedError,
    ConnectionError,
)
_RERUN = "what was evaluated is kept; rerun to continue"


def _code_version() -> str:
    """The package version plus a digest of its sources: a node where `ray up` did not ship
    the latest edit differs even when the version number does not."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("aqgan-ray")
    except PackageNotFoundError:
        release = "unknown"
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + path.read_bytes())
    return f"{release}+{digest.hexdigest()[:8]}"


def _local_raylet() -> tuple[str, int] | None:
    """The address of the raylet this driver is attached to; None for a Ray Client driver,
    which has none (its process does not die with a cluster node)."""
    if ray.util.client.ray.is_connected():
        return None
    me = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node["NodeID"] == me and node.get("NodeManagerPort"):
            return node["NodeManagerAddress"], int(node["NodeManagerPort"])
    return None


def _failed_to_build(exc: BaseException) -> bool:
    """An exception raised while building an evaluator is our bug (or a bad model), not the
    cluster's: it keeps Ray's error, with the actor's traceback, and is never retried."""
    return isinstance(exc, RayActorError) and exc.actor_init_failed


def _nodes_alive() -> tuple[int, int]:
    """(alive, known) Ray nodes; (0, 0) when the control plane does not answer either."""
    try:
        nodes = ray.nodes()
    except Exception:  # the GCS is gone too: no node can be vouched for
        return 0, 0
    return sum(1 for n in nodes if n["Alive"]), len(nodes)


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
    """A fixed set of evaluator actors in reserved bundles; ``imap_unordered`` streams configs
    through them. Every Ray failure leaves it as ``PoolFailure``, one line."""

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
        self.actors: list = []
        self._bundles: list[int] = []  # the placement-group bundle of each actor in `actors`
        self._group: PlacementGroup | None = None
        self._failed = False  # the cluster is gone: close() makes no Ray calls
        self._slowest_s = 0.0  # slowest evaluation seen; sets the stall deadline
        # Replacements being built: their readiness probe -> (actor, when spawned). Kept across
        # streams, so an actor gets tasks only once it is up.
        self._starting: dict[ray.ObjectRef, tuple[object, float]] = {}
        self._checked_at = 0.0
        self.replaced = 0
        self._raylet = _local_raylet()
        self._compile = compile
        try:
            with self._cluster_failures("starting the evaluators"):
                self._check_node()
                # Put once; every actor (and every replacement) receives references, not copies.
                self._args = (ray.put(prepared), ray.put(val), ray.put(train) if train else None)
                self._group = self._reserve()
                for bundle in range(self.size):
                    self.actors.append(self._spawn(bundle))
                    self._bundles.append(bundle)
        except BaseException:
            self.close()  # nobody else holds this half-built pool to release it
            raise

    def _reserve(self) -> PlacementGroup:
        """One bundle per evaluator, spread over the nodes: the CPUs are ours until close(),
        so a replacement never waits for room another job took."""
        cpu, gpu = self.spec.cpus_per_worker, self.spec.gpus_per_worker
        bundle = {"CPU": cpu, **({"GPU": gpu} if gpu else {})}
        group = placement_group([dict(bundle) for _ in range(self.size)], strategy="SPREAD")
        if not self._await([group.ready()], RESERVE_TIMEOUT_S):
            remove_placement_group(group)
            free, total = ray.available_resources(), ray.cluster_resources()
            raise PoolFailure(
                f"the cluster cannot hold {self.size} evaluators of {cpu:g} CPU"
                + (f" and {gpu:g} GPU" if gpu else "")
                + f": after {RESERVE_TIMEOUT_S:.0f} s {free.get('CPU', 0):g} of "
                f"{total.get('CPU', 0):g} CPU are free (other Ray jobs hold the rest, or a "
                "node is gone); lower --workers or wait for them"
            )
        return group

    def _spawn(self, bundle: int):
        threads = max(1, int(self.spec.cpus_per_worker))
        strategy = PlacementGroupSchedulingStrategy(
            placement_group=self._group, placement_group_bundle_index=bundle
        )
        return (
            ray.remote(_EvaluatorActor)
            .options(
                num_cpus=self.spec.cpus_per_worker,
                num_gpus=self.spec.gpus_per_worker,
                scheduling_strategy=strategy,
                max_restarts=0,  # replaced by us, so that in-flight configs are re-queued knowingly
            )
            .remote(*self._args, threads, self.spec.gpus_per_worker > 0, self._compile)
        )

    # -- waiting without hanging --------------------------------------------------------------
    def _check_node(self, every_s: float = 0.0) -> None:
        """Fail now if this driver's raylet is gone: with it went the object store, and Ray
        ends the process at its next use of it, with no word from us."""
        now = time.monotonic()
        if self._raylet is None or now - self._checked_at < every_s:
            return
        self._checked_at = now
        try:
            with socket.create_connection(self._raylet, timeout=CONNECT_TIMEOUT_S):
                return
        except OSError:
            pass
        self._failed = True
        host, port = self._raylet
        raise PoolFailure(
            f"the Ray node running this driver died (its raylet at {host}:{port} is gone: the "
            f"OOM killer, or a killed Ray process?); {_RERUN}"
        )

    def _await(self, refs: list, timeout_s: float) -> bool:
        """Whether every ref is ready within ``timeout_s``, looking at our node every tick."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=max(0.0, min(TICK_S, left)))
            if len(ready) == len(refs):
                return True
            self._check_node()
            if left <= 0:
                return False

    @contextmanager
    def _cluster_failures(self, doing: str):
        """Ray's own errors for a lost node or control plane become one ``PoolFailure``
        line, diagnosed from the nodes Ray still knows."""
        try:
            yield
        except CLUSTER_ERRORS as exc:
            if _failed_to_build(exc):
                raise
            raise self._failure(doing, exc) from None

    def _failure(self, doing: str, exc: BaseException) -> PoolFailure:
        self._check_node()  # this driver's node died: the sharpest diagnosis
        alive, known = _nodes_alive()
        if alive == 0:
            self._failed = True
            return PoolFailure(
                f"the Ray node(s) running the evaluators died while {doing} ({known} known, "
                f"none alive: {type(exc).__name__}); {_RERUN}"
            )
        return PoolFailure(
            f"the Ray cluster failed while {doing} ({type(exc).__name__}: {first_line(exc)}; "
            f"{alive} of {known} nodes alive); {_RERUN}"
        )

    def worker_pids(self, timeout_s: float = BUILD_TIMEOUT_S) -> list[int]:
        """The actors' process ids, once every actor is built; refuses a cluster whose nodes
        run another aqgan-ray than the driver (their accuracies would not be comparable)."""
        with self._cluster_failures("building the evaluators"):
            refs = [a.describe.remote() for a in self.actors]
            if not self._await(refs, timeout_s):
                raise PoolFailure(
                    f"evaluator actors were not ready after {timeout_s:.0f} s; is the cluster busy?"
                )
            described = ray.get(refs)
        for _, theirs in described:
            self._check_version(theirs)
        return [pid for pid, _ in described]

    @staticmethod
    def _check_version(theirs: str) -> None:
        mine = _code_version()
        if theirs != mine:
            raise UserError(
                f"a cluster node runs aqgan-ray {theirs} but this driver runs {mine}; "
                "install the same version on every node (see clusters/README.md)"
            )

    def warm_up(self, config: QuantConfig, timeout_s: float = BUILD_TIMEOUT_S) -> float:
        """One evaluation on every actor (builds, and compiles if asked); returns seconds."""
        start = time.perf_counter()
        with self._cluster_failures("warming up the evaluators"):
            refs = [a.evaluate.remote(config) for a in self.actors]
            if not self._await(refs, timeout_s):
                raise PoolFailure(
                    f"evaluator actors were not ready after {timeout_s:.0f} s; is the cluster busy?"
                )
            for result, _, _ in ray.get(refs):
                self._slowest_s = max(self._slowest_s, result.eval_s)
        return time.perf_counter() - start

    def stall_limit_s(self) -> float:
        """How long in-flight evaluations may go without a result before the pool gives up:
        the first ones may build and compile; later ones are judged by the slowest seen."""
        if self._slowest_s <= 0:
            return BUILD_TIMEOUT_S
        return max(MIN_STALL_S, STALL_FACTOR * self._slowest_s)

    # -- the stream ---------------------------------------------------------------------------
    def imap_unordered(self, configs: Iterable[QuantConfig]) -> Iterator[Evaluated]:
        """Evaluate ``configs`` and yield results as they complete.

        ``configs`` is pulled lazily, only when an actor has room, so a proposer may base its
        next config on the results yielded so far. Tasks still queued when the caller stops
        early are cancelled. Every wait is bounded (``stall_limit_s``, ``REPLACE_TIMEOUT_S``);
        only time spent waiting here counts, not time the caller spends between results.
        """
        source = iter(configs)
        retry: deque[QuantConfig] = deque()
        pending: dict[ray.ObjectRef, tuple[object, QuantConfig]] = {}
        starting = self._starting
        load = {id(a): 0 for a in self.actors}
        exhausted = False
        waited = 0.0  # seconds waited here since the last result

        def next_config() -> QuantConfig | None:
            nonlocal exhausted
            if retry:
                return retry.popleft()
            if exhausted:
                return None
            config = next(source, None)
            exhausted = config is None
            return config

        def requeue(actor) -> None:
            for ref, (owner, other) in list(pending.items()):
                if owner is actor:
                    del pending[ref]
                    retry.append(other)
            load.pop(id(actor), None)

        def replace(actor, exc: BaseException) -> None:
            requeue(actor)
            new = self._replace(actor, exc)
            starting[new.describe.remote()] = (new, time.monotonic())

        try:
            while True:
                # Breadth first: every idle actor gets a task before any gets a second, so a
                # batch as small as the pool runs in parallel instead of queueing on one actor.
                # A replacement gets tasks once built, so a slot that never comes up holds none.
                building = {id(a) for a, _ in starting.values()}
                for depth in range(1, TASKS_PER_ACTOR + 1):
                    for actor in self.actors:
                        if id(actor) in building or load.get(id(actor), 0) >= depth:
                            continue
                        config = next_config()
                        if config is None:
                            break
                        pending[actor.evaluate.remote(config)] = (actor, config)
                        load[id(actor)] = load.get(id(actor), 0) + 1
                if not pending and (not starting or (exhausted and not retry)):
                    return  # a replacement still starting is of use to the next stream only
                began = time.monotonic()
                with self._cluster_failures("evaluating"):
                    done, _ = ray.wait(
                        list(pending) + list(starting), num_returns=1, timeout=TICK_S
                    )
                self._check_node(every_s=TICK_S)
                if not done:
                    if pending:  # only in-flight evaluations can stall
                        waited += time.monotonic() - began
                    for ref, (actor, since) in list(starting.items()):
                        if self._hopeless(actor, time.monotonic() - since):
                            del starting[ref]
                            self._give_up(actor)
                    if pending and waited > self.stall_limit_s():
                        raise self._stalled(waited)
                    continue
                ref = done[0]
                if ref in starting:
                    actor, _ = starting.pop(ref)
                    try:
                        _, theirs = ray.get(ref)
                    except RayActorError as exc:
                        if _failed_to_build(exc):
                            raise
                        replace(actor, exc)
                        continue
                    except CLUSTER_ERRORS as exc:
                        raise self._failure("replacing an evaluator", exc) from None
                    self._check_version(theirs)
                    load[id(actor)] = 0
                    waited = 0.0  # its first evaluation starts the clock anew
                    continue
                actor, config = pending.pop(ref)
                load[id(actor)] -= 1
                try:
                    result, node_id, pid = ray.get(ref)
                except RayActorError as exc:
                    if _failed_to_build(exc):
                        raise
                    retry.append(config)
                    replace(actor, exc)
                    continue
                except CLUSTER_ERRORS as exc:
                    raise self._failure("evaluating", exc) from None
                waited = 0.0
                self._slowest_s = max(self._slowest_s, result.eval_s)
                yield Evaluated(config, result, node_id, pid)
        finally:
            if not self._failed:
                for ref in pending:  # queued behind a running task; the running one finishes
                    try:
                        ray.cancel(ref)
                    except Exception:  # the actor is gone already: nothing to cancel
                        pass

    def _replace(self, dead, exc: BaseException):
        """A new actor in ``dead``'s own bundle, which stays reserved for us, so it never waits
        for room; a node that died is the one thing a replacement cannot fix."""
        self.replaced += 1
        self._check_node()
        alive, known = _nodes_alive()
        if alive == 0:
            self._failed = True
            raise PoolFailure(
                f"the Ray node(s) running the evaluators died ({known} known, none alive); {_RERUN}"
            )
        if self.replaced > 3 * self.size + 3:
            raise PoolFailure(
                f"evaluator actors keep dying ({self.replaced} replaced, the last: "
                f"{type(exc).__name__}: {first_line(exc)}); {_RERUN}"
            )
        try:
            ray.kill(dead, no_restart=True)
        except RayError:
            pass  # dead already
        slot = self.actors.index(dead)
        print(
            f"warning: an evaluator died ({type(exc).__name__}); replacing it in its reserved "
            "slot; its configs are queued again",
            file=sys.stderr,
        )
        with self._cluster_failures("replacing an evaluator"):
            self.actors[slot] = self._spawn(self._bundles[slot])
        return self.actors[slot]

    def _hopeless(self, actor, waited: float) -> bool:
        """Whether a replacement will not come up: past the deadline, or its bundle has no
        live node and no room is free anywhere for Ray to move it."""
        if waited > REPLACE_TIMEOUT_S:
            return True
        if waited < STRANDED_GRACE_S:
            return False
        bundle = self._bundles[self.actors.index(actor)]
        with self._cluster_failures("replacing an evaluator"):
            table = placement_group_table(self._group)
            home = table.get("bundles_to_node_id", {}).get(bundle, "")
            if home in {n["NodeID"] for n in ray.nodes() if n["Alive"]}:
                return False
            free = ray.available_resources()
        need = table.get("bundles", {}).get(bundle, {})
        return any(free.get(name, 0) + 1e-9 < amount for name, amount in need.items())

    def _give_up(self, actor) -> None:
        """A replacement that was not built in time (its bundle's node is gone and no other
        node has room): the pool goes on with the others, or fails if none is left."""
        slot = self.actors.index(actor)
        del self.actors[slot], self._bundles[slot]
        try:
            ray.kill(actor, no_restart=True)
        except RayError:
            pass
        if not self.actors:
            alive, known = _nodes_alive()
            raise PoolFailure(
                f"no evaluator could be restarted (their nodes are gone and no other has room; "
                f"{alive} of {known} Ray nodes alive); {_RERUN}"
            )
        print(
            "warning: a replacement evaluator cannot start (its node is gone and no other has "
            f"room); continuing with {len(self.actors)}",
            file=sys.stderr,
        )

    def _stalled(self, waited: float) -> PoolFailure:
        alive, known = _nodes_alive()
        seen = f"the slowest so far took {self._slowest_s:.1f} s" if self._slowest_s else "none yet"
        return PoolFailure(
            f"no evaluation finished in {waited:.0f} s ({seen}; {len(self.actors)} evaluators, "
            f"{alive} of {known} Ray nodes alive): the evaluators hang or the cluster is "
            f"overloaded; {_RERUN}"
        )

    def close(self) -> None:
        """Stop the actors and release the reservation; after a lost cluster, nothing to ask."""
        actors, self.actors = self.actors, []
        self._starting.clear()
        group, self._group = self._group, None
        if self._failed:
            return
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except RayError:
                pass
        if group is not None:
            try:
                remove_placement_group(group)
            except RayError:
                pass

    def __enter__(self) -> EvaluatorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
