"""The protocol every evaluator pool follows, so that the evaluation service does not care
whether configs are evaluated in this process or on a Ray cluster."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from aqgan_ray.config import QuantConfig
from aqgan_ray.evaluate import EvalResult


@dataclass(frozen=True)
class Evaluated:
    config: QuantConfig
    result: EvalResult
    node_id: str
    worker_pid: int


@runtime_checkable
class Pool(Protocol):
    """Evaluators that score configs on the validation split.

    ``imap_unordered`` pulls ``configs`` lazily, only when an evaluator has room (a proposer
    may base its next config on the results so far), and yields each result once, in
    completion order; stopping early abandons what was not started.
    """

    size: int  # evaluators it runs
    replaced: int  # evaluators replaced after dying

    def imap_unordered(self, configs: Iterable[QuantConfig]) -> Iterator[Evaluated]: ...

    def close(self) -> None: ...
