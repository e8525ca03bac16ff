"""One interface for every search method, and the loop that drives it.

A search method is a ``Proposer``: ``ask(n)`` returns up to ``n`` configs, ``tell`` gives it
their validation accuracies (Optuna's ask/tell, Ray Tune's Searcher). It never owns an
evaluator or a cost model: ``run_search`` sends what it asks through the shared
``EvaluationService`` and prices it on the shared ``DesignPoint``, so every method is measured
the same way and charged for every evaluation it asks for, cache hits included.

Resuming. The checkpoint ``state.pt`` is the one source of truth: after every ``tell``,
``run_search`` writes it atomically (the proposer's whole ``state_dict``, tensors and plain
values only, with the trace of every evaluation told so far), then lets the proposer bring any
state of its own outside it in line (``Proposer.committed``: Optuna's journal), then rewrites
``trace.parquet`` from it; and on every start it rewrites ``trace.parquet`` from the checkpoint
before asking anything, so a kill between the files is healed by the next run. A search that is
stopped (Ctrl-C, a killed driver, a lost node) starts again from the last checkpoint: configs
it had asked for after that are asked again and answered from the evaluation store, and charged
once, because the trace restarts from the checkpoint too. A proposer whose ``state_dict`` holds
its random state (all of ours do) then continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from aqgan_ray.atomic import write_atomic
from aqgan_ray.config import QuantConfig, pin_first_last
from aqgan_ray.cost import Budget, CostModel, within_budget
from aqgan_ray.errors import UserError
from aqgan_ray.layers import Layer
from aqgan_ray.store import write_trace

if TYPE_CHECKING:  # the service brings Ray; generation and the proposers do not need it
    from aqgan_ray.service import EvaluationService

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class DesignPoint:
    """One hardware model and one budget on it: what a search optimises for."""

    layers: tuple[Layer, ...]
    bit_choices: tuple[int, ...]
    hw: CostModel
    budget: Budget
    # HAQ's search space (``config.pin_first_last``): every config built or priced here has its
    # first and last layers at 8 bits, whatever a method asked for. The experiment sets it from
    # ``[quant] keep_first_last``.
    keep_first_last: bool = False

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def costs(self, w_bits: np.ndarray, a_bits: np.ndarray) -> np.ndarray:
        """The budget metric of a batch of configs (``[n, layers]`` arrays), each priced as
        ``config`` would build it."""
        if self.keep_first_last:
            w_bits, a_bits = pin_first_last(w_bits, a_bits)
        return self.hw.batch(self.layers, w_bits, a_bits)[self.budget.metric]

    def cost(self, config: QuantConfig) -> float:
        return float(self.costs(np.array([config.w_bits]), np.array([config.a_bits]))[0])

    def fits(self, config: QuantConfig) -> bool:
        return bool(within_budget(np.array([self.cost(config)]), self.budget)[0])

    def best_fitting(self, rows: Sequence[dict[str, Any]]) -> tuple[QuantConfig, float] | None:
        """The most accurate of evaluated ``rows`` (``w_bits``, ``a_bits``, ``val_acc``,
        ``config_hash``) that fits, with its accuracy; ties go to the smallest hash, so the
        rows' order does not matter. None when none fits."""
        if not rows:
            return None
        rows = sorted(rows, key=lambda r: r["config_hash"])
        fits = within_budget(
            self.costs(
                np.array([r["w_bits"] for r in rows]), np.array([r["a_bits"] for r in rows])
            ),
            self.budget,
        )
        if not fits.any():
            return None
        acc = np.array([float(r["val_acc"]) for r in rows])
        best = int(np.flatnonzero(fits)[np.argmax(acc[fits])])
        return self.config(rows[best]["w_bits"], rows[best]["a_bits"]), float(acc[best])

    def config(self, w_bits: Sequence[int], a_bits: Sequence[int]) -> QuantConfig:
        config = QuantConfig(self.layer_names, tuple(w_bits), tuple(a_bits))
        return config.pinned() if self.keep_first_last else config

    def repair(self, config: QuantConfig) -> QuantConfig:
        """HAQ's budget enforcement: while the config is over budget, walk the layers from the
        last to the first, lowering each one's activation bits by one choice and then its weight
        bits by one choice, checking the budget after every change; never below the lowest
        choice. Every metric is monotone in every bitwidth (cost.py), and the all-lowest config
        (first and last layers pinned, as HAQ re-pins them after every change) fits any budget
        ``parse_budget`` accepts with the same ``keep_first_last``, so this ends within budget.

        Used by every method that proposes configs freely (HAQ, TPE, random search), so they
        all meet the budget the same way.
        """
        config = self.config(config.w_bits, config.a_bits)
        if self.fits(config):
            return config
        choices = list(self.bit_choices)
        w, a = list(config.w_bits), list(config.a_bits)
        lowest = [choices[0]] * len(w)
        while w != lowest or a != lowest:
            for i in reversed(range(len(w))):
                for bits in (a, w):
                    step = choices.index(bits[i])
                    if step > 0:
                        bits[i] = choices[step - 1]
                        candidate = self.config(w, a)
                        if self.fits(candidate):
                            return candidate
        return self.config(w, a)


class Proposer(ABC):
    """A search method. ``ask`` may return fewer configs than asked for, and none once the
    method has nothing more to try (the uniform sweep ends early)."""

    name: ClassVar[str]

    @abstractmethod
    def ask(self, n: int) -> list[QuantConfig]: ...

    @abstractmethod
    def tell(self, configs: Sequence[QuantConfig], val_accs: Sequence[float]) -> None:
        """Results of the configs from the last ``ask``, in the order they were asked."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (``torch.load(weights_only=True)``-safe)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def committed(self) -> None:  # noqa: B027 - a no-op for the methods whose state is all in it
        """Called whenever the proposer's state is the checkpoint's: at the start (loaded, or
        fresh with none) and after every checkpoint. A method with state outside the checkpoint
        (Optuna's journal) brings it in line here, so that state never runs ahead of it."""

    def summary(self) -> dict[str, Any]:
        """Method-specific figures for the report (episodes run, trials, ...)."""
        return {}

    def origin(self, config: QuantConfig) -> str:
        """Where a config this method asked for came from (AQGAN: generator, store, bred, ...)."""
        del config
        return self.name


@dataclass(frozen=True)
class SearchResult:
    trace: list[dict[str, Any]]
    resumed_from: int  # evaluations already in the trace when this run started
    evaluated_now: int  # evaluator runs started by this search (cache misses)
    search_s: float  # driver wall seconds of this run (a resumed run counts only itself)
    summary: dict[str, Any] = field(default_factory=dict)  # the proposer's, when it stopped

    @property
    def best(self) -> dict[str, Any] | None:
        """The most accurate evaluation within budget; the earliest on ties."""
        fitting = [row for row in self.trace if row["within_budget"]]
        return max(fitting, key=lambda r: (r["val_acc"], -r["index"])) if fitting else None


def run_search(
    proposer: Proposer,
    service: EvaluationService,
    point: DesignPoint,
    evaluations: int,
    run_dir: Path,
    identity: dict[str, Any],
    batch: int = 1,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> SearchResult:
    """Ask, evaluate, tell until the trace holds ``evaluations`` results or the method stops.

    ``identity`` names the search (method, hardware, budget, seed, evaluation key, ...); a
    checkpoint in ``run_dir`` with another identity is refused rather than continued.
    """
    if evaluations < 1 or batch < 1:
        raise UserError("the number of evaluations and the batch size must be at least 1")
    checkpoint, trace_file = run_dir / "state.pt", run_dir / "trace.parquet"
    trace: list[dict[str, Any]] = []
    if checkpoint.exists():
        state = _load_checkpoint(checkpoint, identity)
        trace = state["trace"]
        proposer.load_state_dict(state["proposer"])
    proposer.committed()
    write_trace(trace, identity, trace_file)  # from the checkpoint: heals one a kill left stale
    resumed_from, evaluated_before = len(trace), service.evaluated
    start = time.perf_counter()
    offset = trace[-1]["elapsed_s"] if trace else 0.0
    best = max((r["val_acc"] for r in trace if r["within_budget"]), default=float("nan"))
    while len(trace) < evaluations:
        configs = proposer.ask(min(batch, evaluations - len(trace)))
        if not configs:
            break
        outcomes = service.evaluate(configs, source=proposer.name)
        elapsed = offset + time.perf_counter() - start
        for config, outcome in zip(configs, outcomes, strict=True):
            cost = point.cost(config)
            fits = point.fits(config)
            if fits and (math.isnan(best) or outcome.val_acc > best):
                best = outcome.val_acc
            row = {
                "index": len(trace),
                "config_hash": config.hash,
                "w_bits": list(config.w_bits),
                "a_bits": list(config.a_bits),
                "val_acc": float(outcome.val_acc),
                "cost": cost,
                "within_budget": fits,
                "cached": outcome.cached,
                "eval_s": outcome.eval_s,
                "elapsed_s": elapsed,
                "best_so_far_val_acc": best,
                "origin": proposer.origin(config),
            }
            trace.append(row)
            if on_result is not None:
                on_result(row)
        proposer.tell(configs, [o.val_acc for o in outcomes])
        # The batch's rows on disk before the checkpoint that charges them: a kill after the
        # checkpoint then loses no evaluation from the store (``compact`` merges the parts).
        service.store.flush()
        _commit(checkpoint, trace_file, identity, trace, proposer)
    if not checkpoint.exists():  # nothing was asked (AQGAN found nothing that fits): say so
        _commit(checkpoint, trace_file, identity, trace, proposer)
    return SearchResult(trace, resumed_from, service.evaluated - evaluated_before,
                        time.perf_counter() - start, proposer.summary())  # fmt: skip


def _commit(
    checkpoint: Path,
    trace_file: Path,
    identity: dict[str, Any],
    trace: list[dict[str, Any]],
    proposer: Proposer,
) -> None:
    """The checkpoint first, then what follows from it: a kill in between loses nothing the
    next run does not rebuild from the checkpoint."""
    _save_checkpoint(checkpoint, identity, trace, proposer)
    proposer.committed()
    write_trace(trace, identity, trace_file)


def _save_checkpoint(
    path: Path, identity: dict[str, Any], trace: list[dict[str, Any]], proposer: Proposer
) -> None:
    """One file, written atomically: an interrupted save leaves the previous checkpoint whole."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "identity": identity,
        "trace": trace,
        "proposer": proposer.state_dict(),
    }
    write_atomic(path, lambda fh: torch.save(state, fh))


def read_identity(run_dir: Path) -> dict[str, Any] | None:
    """The identity of the search checkpointed in ``run_dir``, or None (none, or unreadable)."""
    try:
        state = torch.load(Path(run_dir) / "state.pt", weights_only=True)
        return state["identity"]
    except Exception:  # missing or damaged: run_search reports a damaged one when it opens it
        return None


def _load_checkpoint(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which, do not guess
        raise UserError(
            f"the search checkpoint {path} cannot be read ({type(exc).__name__}); "
            "delete its folder to start this search over"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"{path} is not a search checkpoint of this aqgan-ray version; delete its folder "
            "to start this search over"
        )
    stored = state["identity"]
    differs = sorted(k for k in identity.keys() | stored.keys() if identity.get(k) != stored.get(k))
    if differs:
        raise UserError(
            f"{path.parent} holds a search with another {differs[0]} "
            f"({stored.get(differs[0])!r}, now {identity.get(differs[0])!r}); "
            "delete that folder or pass another --results directory"
        )
    return state


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """numpy's generator state with its 128-bit integers as text (checkpoint-safe values)."""
    state = rng.bit_generator.state
    return {**state, "state": {k: str(v) for k, v in state["state"].items()}}


def rng_restore(rng: np.random.Generator, saved: dict[str, Any]) -> None:
    rng.bit_generator.state = {**saved, "state": {k: int(v) for k, v in saved["state"].items()}}
