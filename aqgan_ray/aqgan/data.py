"""AQGAN's training data: stored evaluations as choice indices, and the accuracy band users ask
targets in. Configs pass between the two forms with ``indices_of`` and ``configs_of``."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from aqgan_ray.config import QuantConfig
from aqgan_ray.errors import UserError

# Below this many stored configs there is nothing to learn a condition from.
MIN_STORE = 30
# Share of the store's accuracy range, from its bottom, where nobody asks for a target: near
# chance. Fidelity and refinement targets lie above it.
BAND_FLOOR = 0.15
# AQGAN learns only from evaluations it paid for (the store's ``source``): it trains on its
# collection and refinement, and its ranker is also told its own verifications (``aqgan``).
# Rows another method stored are never its evidence, even where AQGAN later asked for the same
# config (a cache hit it is charged for all the same).
TRAINING_SOURCES = ("collect", "refine")
EVIDENCE_SOURCES = (*TRAINING_SOURCES, "aqgan")


def collected_digest(rows: Sequence[dict]) -> str:
    """A fingerprint of the collected configs among ``rows``: a checkpoint trained on another
    collection (a larger one, a re-collected part) is not this store's."""
    hashes = sorted(row["config_hash"] for row in rows if row["source"] == "collect")
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:16]


def rows_by_source(rows: Sequence[dict]) -> dict[str, int]:
    """How many rows came from each source, in ``EVIDENCE_SOURCES`` order then the others."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["source"]] = counts.get(row["source"], 0) + 1
    order = {s: i for i, s in enumerate(EVIDENCE_SOURCES)}
    return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def band_start(lo: float, hi: float) -> float:
    return lo + BAND_FLOOR * (hi - lo)


def fidelity_targets(lo: float, hi: float, n: int) -> np.ndarray:
    """``n`` evenly spaced targets from the band's start to the store's best accuracy."""
    return np.linspace(band_start(lo, hi), hi, n)


@dataclass(frozen=True)
class TrainingData:
    idx: torch.Tensor  # [n, L, 2] choice indices
    acc: torch.Tensor  # [n] validation accuracy
    hashes: tuple[str, ...]


def training_data(
    rows: Sequence[dict], layer_names: Sequence[str], bit_choices: Sequence[int]
) -> TrainingData:
    if len(rows) < MIN_STORE:
        raise UserError(
            f"the evaluation store holds {len(rows)} configs; AQGAN needs at least {MIN_STORE}: "
            f"run `aqgan-ray collect --samples N` with N >= {MIN_STORE} (a few hundred is better)"
        )
    # One order for one content: the store's row order follows evaluation completion times,
    # and the held-out split and minibatches follow the row order.
    rows = sorted(rows, key=lambda r: r["config_hash"])
    return as_data(rows, layer_names, bit_choices)


def as_data(
    rows: Sequence[dict], layer_names: Sequence[str], bit_choices: Sequence[int]
) -> TrainingData:
    """Rows (``w_bits``, ``a_bits``, ``val_acc``, ``config_hash``) as tensors, in their order."""
    try:
        idx = torch.from_numpy(indices_of([(r["w_bits"], r["a_bits"]) for r in rows], bit_choices))
    except (KeyError, ValueError):
        idx = None
    if idx is None or idx.shape[1] != len(layer_names):
        raise UserError("the store's configs do not match this model's layer table")
    acc = torch.tensor([r["val_acc"] for r in rows], dtype=torch.float32)
    return TrainingData(idx, acc, tuple(r["config_hash"] for r in rows))


def indices_of(
    bits: Sequence[tuple[Sequence[int], Sequence[int]]], bit_choices: Sequence[int]
) -> np.ndarray:
    """(weight bits, activation bits) per config -> choice indices [n, L, 2], the inverse of
    ``configs_of``. Raises KeyError for a bitwidth not in ``bit_choices`` and ValueError for
    configs of different lengths."""
    lut = {int(b): i for i, b in enumerate(bit_choices)}
    out = [[[lut[w], lut[a]] for w, a in zip(wb, ab, strict=True)] for wb, ab in bits]
    return (
        np.array(out, dtype=np.int64).reshape(len(out), -1, 2)
        if out
        else np.empty((0, 0, 2), np.int64)
    )


def configs_of(
    idx: np.ndarray, layer_names: Sequence[str], bit_choices: Sequence[int]
) -> list[QuantConfig]:
    """Choice indices [n, L, 2] -> QuantConfigs."""
    bits = np.asarray(bit_choices)[idx]
    return [
        QuantConfig(
            tuple(layer_names), tuple(int(b) for b in row[:, 0]), tuple(int(b) for b in row[:, 1])
        )
        for row in bits
    ]
