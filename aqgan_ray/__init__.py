"""aqgan-ray: hardware-aware mixed-precision quantization, AQGAN and its baselines, on Ray.

```python
import aqgan_ray as aq

exp = aq.load_experiment("smoke")
with aq.Session(exp, results="results", pool="local") as s:   # pool="ray" (default)
    s.collect(samples=40)
    gen = s.train_aqgan()
    proposals = gen.propose(target_acc=0.8, hw="bismo-edge", budget="latency_ms=0.5x")
    best = s.search("random", hw="bismo-edge", budget="latency_ms=0.5x", evaluations=8)

result = aq.run(exp, results="results")   # the whole experiment, as `aqgan-ray run`
result.search_cost                        # a pandas DataFrame
```

Names load on first use, so ``import aqgan_ray`` stays cheap and the command line starts fast;
nothing here imports ``ray`` until a Ray pool is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_EXPORTS = {
    "UserError": "aqgan_ray.errors",
    "QuantConfig": "aqgan_ray.config",
    "Layer": "aqgan_ray.layers",
    "Experiment": "aqgan_ray.settings",
    "load_experiment": "aqgan_ray.settings",
    "preset_names": "aqgan_ray.settings",
    "Budget": "aqgan_ray.cost",
    "CostModel": "aqgan_ray.cost",
    "get_hw_model": "aqgan_ray.cost",
    "parse_budget": "aqgan_ray.cost",
    "Session": "aqgan_ray.session",
    "SearchOutcome": "aqgan_ray.session",
    "Verification": "aqgan_ray.session",
    "TrainedGenerator": "aqgan_ray.aqgan.trained",
    "load_generator": "aqgan_ray.aqgan.trained",
    "Proposal": "aqgan_ray.aqgan.generate",
    "Query": "aqgan_ray.aqgan.generate",
    "Proposer": "aqgan_ray.search",
    "DesignPoint": "aqgan_ray.search",
    "run": "aqgan_ray.experiment.runner",
    "plan": "aqgan_ray.experiment.plan",
    "Plan": "aqgan_ray.experiment.plan",
    "RunResult": "aqgan_ray.experiment.runner",
}

__all__ = [
    "Budget",
    "CostModel",
    "DesignPoint",
    "Experiment",
    "Layer",
    "Plan",
    "Proposal",
    "Proposer",
    "QuantConfig",
    "Query",
    "RunResult",
    "SearchOutcome",
    "Session",
    "TrainedGenerator",
    "UserError",
    "Verification",
    "get_hw_model",
    "load_experiment",
    "load_generator",
    "parse_budget",
    "plan",
    "preset_names",
    "run",
]

if TYPE_CHECKING:
    from aqgan_ray.aqgan.generate import Proposal, Query
    from aqgan_ray.aqgan.trained import TrainedGenerator, load_generator
    from aqgan_ray.config import QuantConfig
    from aqgan_ray.cost import Budget, CostModel, get_hw_model, parse_budget
    from aqgan_ray.errors import UserError
    from aqgan_ray.experiment.plan import Plan, plan
    from aqgan_ray.experiment.runner import RunResult, run
    from aqgan_ray.layers import Layer
    from aqgan_ray.search import DesignPoint, Proposer
    from aqgan_ray.session import SearchOutcome, Session, Verification
    from aqgan_ray.settings import Experiment, load_experiment, preset_names


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'aqgan_ray' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
