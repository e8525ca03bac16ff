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
from aqgan_ray.pool import EvaluatorPool
from aqgan_ray.store import EvaluationStore


@dataclass(frozen=True)
class Outcome:
    config: QuantConfig
    val_acc: float
    eval_s: float  # evaluator seconds; for a cache hit, what the stored evaluation took
    cached: bool
    node_id: str | None


class EvaluationService:
    def __init__(self, store: EvaluationStore, pool: EvaluatorPool):
        self.store = store
        self.pool = pool
        self.evaluated = 0  # evaluations run by this service (cache misses)
        self.requested = 0

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

        for done in self.pool.imap_unordered(misses()):
            yield from _drain(ready)
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
            yield Outcome(config, result.val_acc, result.eval_s, False, done.node_id)
            for _ in range(waiting.pop(config.hash, 0)):
                yield Outcome(config, result.val_acc, result.eval_s, True, done.node_id)
        yield from _drain(ready)

    def evaluate(self, configs: Iterable[QuantConfig], source: str) -> list[Outcome]:
        """Outcomes in the order of ``configs`` (for proposers that ask in batches)."""
        configs = list(configs)
        by_hash: dict[str, list[Outcome]] = defaultdict(list)
        for outcome in self.imap(configs, source):
            by_hash[outcome.config.hash].append(outcome)
        for outcomes in by_hash.values():
            outcomes.sort(key=lambda o: o.cached)  # the first request is the one evaluated
        return [by_hash[c.hash].pop(0) for c in configs]


def _drain(queue: deque[Outcome]) -> Iterator[Outcome]:
    while queue:
        yield queue.popleft()


def _from_row(config: QuantConfig, row: dict) -> Outcome:
    return Outcome(config, float(row["val_acc"]), float(row["eval_s"]), True, row["node_id"])
