"""Evaluator pools: where configs are evaluated. One protocol (``Pool``), two implementations:
``local.LocalPool`` in this process (no Ray imported), ``ray_actors.EvaluatorPool`` on Ray
evaluator actors, the only module of the package that imports ``ray``."""

from aqgan_ray.pools.base import Evaluated, Pool

__all__ = ["Evaluated", "Pool"]
