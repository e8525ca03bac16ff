"""The evaluation service every search method goes through: store first, evaluators second.

A config already in the store is answered from it (``cached=True``); the others go to the
evaluator pool and are recorded in the store as they complete. The method that asked is
charged for both kinds: search-cost accounting counts requests, not cache misses, so a method
gains nothing from evaluations another method paid for (see shared/CONTRACT.md).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from aqgan_ray.config import QuantConfig
from aqgan_ray.pools.base import Evaluated, Pool
from aqgan_ray.store import EvaluationStore


@dataclass(frozen=True)
class Outcome:
    config: QuantConfig
    val_acc: float
    eval_s: float  # evaluator seconds; for a cache hit, what the stored evaluation took
    cached: bool
    node_id: str | None


class EvaluationService:
    """``pool`` is an evaluator pool (``pools.Pool``), or a function making one: then the
    evaluators start only when a config misses the store, and a run answered from the store
    starts none. ``owns_pool=False``: the function lends another service's pool, which
    ``close`` leaves running."""

    def __init__(
        self, store: EvaluationStore, pool: Pool | Callable[[], Pool], owns_pool: bool = True
    ):
        self.store = store
        given = isinstance(pool, Pool)
        self._pool: Pool | None = pool if given else None
        self._make_pool = None if given else pool
        self._owns_pool = owns_pool
        self.evaluated = 0  # evaluations run by this service (cache misses)
        self.requested = 0

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            self._pool = self._make_pool()
        return self._pool

    @property
    def workers(self) -> int:
        return self._pool.size if self._pool is not None else 0

    @property
    def replaced_workers(self) -> int:
        return self._pool.replaced if self._pool is not None else 0

    def close(self) -> None:
        """Stop the actors this service started (a pool passed in is the caller's to close)."""
        if self._make_pool is not None and self._pool is not None:
            if self._owns_pool:
                self._pool.close()
            self._pool = None

    def imap(
        self,
        configs: Iterable[QuantConfig],
        source: str,
        sampler_of: Callable[[QuantConfig], str | None] | None = None,
    ) -> Iterator[Outcome]:
        """Outcomes of ``configs`` in completion order; each requested config yields once.

        ``configs`` is consumed lazily, as evaluators free up. A config requested again while
        its first evaluation is still running waits for that result instead of running twice.
        """
        ready: deque[Outcome] = deque()
        waiting: dict[str, int] = {}  # in-flight hash -> extra requests for it

        def misses() -> Iterator[QuantConfig]:
            for config in configs:
                self.requested += 1
                key = config.hash
                row = self.store.get(key)
                if row is not None:
                    ready.append(_from_row(config, row))
                elif key in waiting:
                    waiting[key] += 1
                else:
                    waiting[key] = 0
                    yield config

        pending = _Lazy(misses())
        if not pending.empty():  # all answered from the store: no actor is started
            for done in self.pool.imap_unordered(pending):
                yield from _drain(ready)
                outcome = self._record(done, source, sampler_of)
                yield outcome
                for _ in range(waiting.pop(outcome.config.hash, 0)):
                    yield _as_hit(outcome)
        yield from _drain(ready)

    def _record(
        self,
        done: Evaluated,
        source: str,
        sampler_of: Callable[[QuantConfig], str | None] | None,
    ) -> Outcome:
        config, result = done.config, done.result
        self.store.add(
            config_hash=config.hash,
            w_bits=config.w_bits,
            a_bits=config.a_bits,
            val_acc=result.val_acc,
            source=source,
            sampler=sampler_of(config) if sampler_of else None,
            eval_s=result.eval_s,
            node_id=done.node_id,
            worker_pid=done.worker_pid,
        )
        self.evaluated += 1
        return Outcome(config, result.val_acc, result.eval_s, False, done.node_id)

    def evaluate(self, configs: Iterable[QuantConfig], source: str) -> list[Outcome]:
        """Outcomes in the order of ``configs`` (for proposers that ask in batches)."""
        configs = list(configs)
        by_hash: dict[str, list[Outcome]] = defaultdict(list)
        for outcome in self.imap(configs, source):
            by_hash[outcome.config.hash].append(outcome)
        for outcomes in by_hash.values():
            outcomes.sort(key=lambda o: o.cached)  # the first request is the one evaluated
        return [by_hash[c.hash].pop(0) for c in configs]


class _Lazy:
    """An iterator that can tell whether it has anything, without losing the first item."""

    def __init__(self, items: Iterator[QuantConfig]):
        self._items = items
        self._head: list[QuantConfig] = []

    def empty(self) -> bool:
        if not self._head:
            self._head = [next(self._items, None)]
        return self._head[0] is None

    def __iter__(self) -> Iterator[QuantConfig]:
        if self._head and self._head[0] is not None:
            yield self._head.pop()
        yield from self._items


def _drain(queue: deque[Outcome]) -> Iterator[Outcome]:
    while queue:
        yield queue.popleft()


def _from_row(config: QuantConfig, row: dict) -> Outcome:
    return Outcome(config, float(row["val_acc"]), float(row["eval_s"]), True, row["node_id"])


def _as_hit(outcome: Outcome) -> Outcome:
    return Outcome(outcome.config, outcome.val_acc, outcome.eval_s, True, outcome.node_id)
