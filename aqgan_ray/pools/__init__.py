"""Evaluator pools: where configs are evaluated. One protocol (``Pool``), two implementations:
``local.LocalPool`` in this process (no Ray imported), ``ray_actors.EvaluatorPool`` on Ray
evaluator actors; ``cluster`` starts or joins Ray. Those two are the pools' only modules that
import ``ray``."""

from aqgan_ray.pools.base import Evaluated, Pool

__all__ = ["Evaluated", "Pool"]
