"""``collect``: grow the store's collected rows to N distinct configs, the data AQGAN trains on:
the uniform configs first (``uniform_configs``), then the collection sampler's draws.

Idempotent by construction: the target is a number of collected rows (``source`` = collect),
not of new evaluations, and the sampler is told every collected row first, so running it again
after Ctrl-C (or a killed driver) evaluates only what is missing, and running it with the same N
does nothing.

AQGAN learns only from what it paid for: rows other methods stored (a baseline run first) are
neither told to the sampler nor counted, and a drawn config already stored by another method is
drawn again rather than taken as a free row, so every collected row is an evaluation collection
ran and its one-time cost counts.

Reproducible by construction too: configs are drawn in rounds (``SamplerSpec.round_size``), each
round from the results of the earlier ones and a random stream seeded by the experiment seed and
the number of collected rows at the round's start. Results reach the driver in an order set by
timing (worker speed, a replaced actor, the cluster's size); draws interleaved with arrivals made
two collections of one preset differ, and the models trained on them with them
(docs/measurements.md). The same seed and size now give the same store on a laptop or a cluster.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from tqdm import tqdm

from aqgan_ray.config import QuantConfig
from aqgan_ray.errors import UserError
from aqgan_ray.sampling import CollectionSampler, SamplerSpec, space_size
from aqgan_ray.service import EvaluationService, Outcome

SOURCE = "collect"
# A sampler that proposes only known configs this many times in a row has run out of room.
MAX_REDRAWS = 10_000
# A long collection writes a part every few seconds; past this many parts they are merged.
COMPACT_OVER_PARTS = 32


@dataclass(frozen=True)
class CollectStats:
    requested: int  # the collected rows asked for
    evaluated_now: int
    total: int  # distinct configs collected afterwards (other methods' rows not counted)
    node_ids: tuple[str, ...]  # nodes that ran this call's evaluations
    wall_s: float
    eval_cpu_s: float  # sum of evaluator seconds (per evaluation, summed over actors)
    replaced_workers: int

    @property
    def evals_per_s(self) -> float:
        return self.evaluated_now / self.wall_s if self.wall_s > 0 else 0.0


def sampler_seed(experiment_seed: int, stored: int) -> int:
    """A fresh stream per round (and resume point), reproducible from the seed and the number
    of collected rows."""
    digest = hashlib.sha256(f"collect:{experiment_seed}:{stored}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def uniform_configs(
    layer_names: tuple[str, ...], bit_choices: tuple[int, ...], keep_first_last: bool = False
) -> list[QuantConfig]:
    """Every weight and activation at one bitwidth, one config per choice, widest first (the
    first and last layers at 8 bits under ``keep_first_last``)."""
    n = len(layer_names)
    configs = [QuantConfig(tuple(layer_names), (b,) * n, (b,) * n)
               for b in sorted(bit_choices, reverse=True)]  # fmt: skip
    configs = [c.pinned() for c in configs] if keep_first_last else configs
    return list({c.hash: c for c in configs}.values())


def collect(
    service: EvaluationService,
    layer_names: tuple[str, ...],
    bit_choices: tuple[int, ...],
    samples: int,
    seed: int,
    progress: bool = True,
    on_result: Callable[[Outcome], None] | None = None,
    spec: SamplerSpec | None = None,
    keep_first_last: bool = False,
) -> CollectStats:
    if samples < 0:
        raise UserError("--samples must be a non-negative number of configs")
    space = space_size(len(layer_names), len(bit_choices), keep_first_last)
    if samples > space:
        raise UserError(
            f"--samples {samples} exceeds the {space} distinct configs of {len(layer_names)} "
            f"layers with {len(bit_choices)} bit choices"
        )
    store = service.store
    start = time.perf_counter()
    spec = spec or SamplerSpec()
    sampler = CollectionSampler(layer_names, bit_choices, 0, spec, keep_first_last)
    collected: set[str] = set()
    for row in store.rows():
        if row["source"] == SOURCE:
            collected.add(row["config_hash"])
            sampler.tell(QuantConfig(layer_names, row["w_bits"], row["a_bits"]), row["val_acc"])
    need = max(0, samples - len(collected))
    labels: dict[str, str] = {}  # hash -> how it was drawn, for this call's rows

    # the uniform configs first, widest first: anchors at both ends of the accuracy range, and
    # AQGAN's floor at every budget (``aqgan.hw_tune``); one another method stored is skipped
    anchors = [
        config
        for config in uniform_configs(layer_names, bit_choices, keep_first_last)
        if config.hash not in collected and config.hash not in store
    ]

    def draw_round() -> list[QuantConfig]:
        """The next round, all drawn before any of its results is in."""
        stored = len(collected)
        if anchors:
            batch = anchors[: samples - stored]
            labels.update((config.hash, "uniform") for config in batch)
            anchors.clear()
            return batch
        sampler.reseed(sampler_seed(seed, stored))
        size = min(spec.round_size - stored % spec.round_size, samples - stored)
        batch: list[QuantConfig] = []
        for _ in range(size):
            for _ in range(MAX_REDRAWS):
                config, name = sampler.ask()
                if config.hash not in store and config.hash not in labels:
                    break
            else:
                raise UserError(
                    f"the sampler found no new config in {MAX_REDRAWS} draws; the store "
                    f"already holds {len(store)} configs of this space ({stored} collected)"
                )
            labels[config.hash] = name
            batch.append(config)
        return batch

    nodes: set[str] = set()
    cpu_s = 0.0
    done = 0
    bar = tqdm(total=need, desc="collect", unit="eval", disable=not progress or need == 0)
    try:
        with store:
            while len(collected) < samples:
                batch = draw_round()
                for outcome in service.imap(batch, SOURCE, lambda c: labels.get(c.hash)):
                    collected.add(outcome.config.hash)
                    sampler.tell(outcome.config, outcome.val_acc)
                    done += 1
                    cpu_s += outcome.eval_s
                    if outcome.node_id:
                        nodes.add(outcome.node_id)
                    bar.update()
                    bar.set_postfix(acc=f"{outcome.val_acc:.3f}", nodes=len(nodes))
                    if on_result is not None:
                        on_result(outcome)
    finally:
        bar.close()
    if store.part_count() > COMPACT_OVER_PARTS:
        store.compact()
    return CollectStats(
        requested=samples,
        evaluated_now=done,
        total=len(collected),
        node_ids=tuple(sorted(nodes)),
        wall_s=time.perf_counter() - start,
        eval_cpu_s=cpu_s,
        replaced_workers=service.replaced_workers,
    )
