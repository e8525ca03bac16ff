"""An in-process pool: the same ``Evaluator`` the Ray actors run, called in this process.

For a notebook, a unit test or a machine without Ray: nothing here imports ``ray``. One
evaluator, which uses every torch thread of the process; results come in request order.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator

from torch import Tensor

from aqgan_ray.config import QuantConfig
from aqgan_ray.evaluate import Evaluator
from aqgan_ray.pools.base import Evaluated
from aqgan_ray.prepare import Prepared


class LocalPool:
    size = 1
    replaced = 0

    def __init__(
        self,
        prepared: Prepared,
        val: tuple[Tensor, Tensor],
        train: tuple[Tensor, Tensor] | None = None,
        compile: bool | None = None,
    ):
        self.evaluator = Evaluator(prepared, val=val, train=train, compile=compile)
        self.node_id = f"local:{socket.gethostname()}"

    def imap_unordered(self, configs: Iterable[QuantConfig]) -> Iterator[Evaluated]:
        for config in configs:
            yield Evaluated(config, self.evaluator.evaluate(config), self.node_id, os.getpid())

    def close(self) -> None:
        """Nothing to stop: the evaluator goes with this object."""

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
