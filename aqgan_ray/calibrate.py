"""Cost models against an accelerator's own simulator: fit Bit Fusion's free constants, and the
figures that say how well any model agrees with a table keyed by layer shape.

The figures, per metric and per split (fitted shapes, held-out shapes): Spearman rank
correlation over every (shape, bits) entry, the median over shapes of the Spearman across one
shape's bit widths, the median ratio ours / theirs, and the median over shapes of the W4A4/W8A8
and W4A8/W8A4 ratios, ours and theirs (how a model prices bits is what a search optimises, more
than its absolute scale).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from aqgan_ray.cost import BitFusionHardware, CostModel, _Geometry, bitfusion_cost
from aqgan_ray.cost_table import SHAPE_COLUMNS, TableModel
from aqgan_ray.errors import UserError
from aqgan_ray.layers import Layer

# What the calibration is fitted on: the Bit Fusion table APQ made with the simulator (its
# README in this folder says where from and under which licence).
BITFUSION_TABLE = Path(__file__).parent / "hwdata" / "apq-bitfusion-lut-b1.json"
HOLDOUT_FRACTION = 0.25
HOLDOUT_SEED = 0
_LATENCY_FIELDS = (
    "dense_compute_scale", "depthwise_macs_per_cycle", "overlap_loss", "dram_bits_per_cycle",
    "weight_preload", "layer_overhead_cycles",
)  # fmt: skip
_ENERGY_FIELDS = (
    "dense_energy_pj_per_cycle", "depthwise_energy_pj_per_cycle", "depthwise_energy_pj_per_mac",
    "dram_energy_pj_per_bit",
)  # fmt: skip


def load_shape_table(path: Path | str) -> TableModel:
    """A table keyed by layer shape (CSV/Parquet with the shape columns, or APQ's JSON)."""
    table = TableModel.load(str(path))
    if not table.by_shape:
        raise UserError(
            f"cost table {path} is keyed by layer; calibration needs one keyed by shape "
            f"({', '.join(SHAPE_COLUMNS)})"
        )
    return table


def shape_layer(shape: tuple[int, ...]) -> Layer:
    """A one-layer table for a (in, out, input_size, kernel, stride, padding, groups) key."""
    ci, co, size, k, stride, pad, groups = (int(v) for v in shape)
    out = (size + 2 * pad - k) // stride + 1
    if out < 1 or groups < 1 or ci % groups or co % groups:
        raise UserError(f"cost table shape {shape} is not a valid convolution")
    params = co * (ci // groups) * k * k
    kind = "dwconv" if groups > 1 and groups == ci else "conv"
    return Layer(
        name=str(shape), kind=kind, in_channels=ci, out_channels=co, kernel=k, kernel_w=k,
        stride=stride, groups=groups, in_h=size, in_w=size, out_h=out, out_w=out,
        params=params, macs=params * out * out,
    )  # fmt: skip


def _shape_keys(frame: pd.DataFrame) -> pd.Series:
    return pd.Series(list(zip(*(frame[c] for c in SHAPE_COLUMNS), strict=True)), index=frame.index)


def held_out(
    frame: pd.DataFrame,
    family: str | None = None,
    fraction: float = HOLDOUT_FRACTION,
    seed: int = HOLDOUT_SEED,
) -> np.ndarray:
    """Boolean mask of the rows held out of the fit: a seeded share of the shapes, or a whole
    ``family`` such as ``"input_size=28"`` or ``"kernel=5"`` (extrapolation, not interpolation
    between neighbouring channel counts)."""
    if family is not None:
        column, sep, value = family.partition("=")
        if not sep or column not in SHAPE_COLUMNS or not value.strip().isdigit():
            raise UserError(
                f"--hold-out {family!r} is not COLUMN=INTEGER with COLUMN one of "
                f"{', '.join(SHAPE_COLUMNS)}"
            )
        mask = (frame[column] == int(value)).to_numpy()
        if not mask.any() or mask.all():
            raise UserError(f"--hold-out {family}: no shape or every shape matches; pick another")
        return mask
    keys = _shape_keys(frame)
    shapes = sorted(set(keys))
    order = np.random.default_rng(seed).permutation(len(shapes))
    held = {shapes[i] for i in order[: round(fraction * len(shapes))]}
    return keys.isin(held).to_numpy()


def predict(model: CostModel, frame: pd.DataFrame) -> pd.DataFrame:
    """Our model's per-layer cost for every table row, as columns ``ours_<metric>``."""
    keys = _shape_keys(frame)
    out = pd.DataFrame(index=frame.index)
    for metric in model.metrics:
        out[f"ours_{metric}"] = np.nan
    for shape, rows in keys.groupby(keys).groups.items():
        layer = [shape_layer(shape)]
        w = frame.loc[rows, "w_bits"].to_numpy()[:, None]
        a = frame.loc[rows, "a_bits"].to_numpy()[:, None]
        for metric, values in model.batch(layer, w, a).items():
            out.loc[rows, f"ours_{metric}"] = values
    return out


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    return float(np.corrcoef(rx, ry)[0, 1])


def figures(frame: pd.DataFrame, ours: pd.DataFrame, held: np.ndarray) -> pd.DataFrame:
    """One row per (metric, split) the table and the model share; see the module docstring."""
    rows = []
    keys = _shape_keys(frame)
    for metric in (m for m in ("latency_ms", "energy_mj") if m in frame and f"ours_{m}" in ours):
        for split, mask in (("fitted", ~held), ("held-out", held)):
            if not mask.any():
                continue
            theirs, mine = frame.loc[mask, metric].to_numpy(), ours.loc[mask, f"ours_{metric}"]
            row = {
                "metric": metric, "split": split, "entries": int(mask.sum()),
                "shapes": int(keys[mask].nunique()),
                "spearman": _spearman(mine.to_numpy(), theirs),
                "median_ratio": float(np.median(mine.to_numpy() / theirs)),
            }  # fmt: skip
            table = pd.DataFrame({
                "shape": keys[mask], "w": frame.loc[mask, "w_bits"],
                "a": frame.loc[mask, "a_bits"], "theirs": theirs, "ours": mine,
            })  # fmt: skip
            row["per_shape_spearman"] = _per_shape_spearman(table)
            wide = table.pivot_table(index="shape", columns=["w", "a"], values=["ours", "theirs"])
            for label, num, den in (("w4a4_w8a8", (4, 4), (8, 8)), ("w4a8_w8a4", (4, 8), (8, 4))):
                for side in ("ours", "theirs"):
                    try:
                        ratio = (wide[side][num] / wide[side][den]).dropna()
                    except KeyError:  # the table lacks one of the two bit pairs
                        ratio = pd.Series(dtype=float)
                    row[f"{label}_{side}"] = float(ratio.median()) if len(ratio) else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def _per_shape_spearman(table: pd.DataFrame) -> float:
    """Median over shapes of the rank correlation across their bit widths: how well a model
    orders the bits of one layer, which is what a search trades (pooled Spearman is dominated
    by layer size). Shapes where either side is constant are skipped."""
    values = [
        _spearman(group["ours"].to_numpy(), group["theirs"].to_numpy())
        for _, group in table.groupby("shape")
        if len(group) >= 3 and group["ours"].nunique() > 1 and group["theirs"].nunique() > 1
    ]
    return float(np.median(values)) if values else np.nan


def _fit_arrays(frame: pd.DataFrame) -> tuple[_Geometry, np.ndarray, np.ndarray]:
    layers = [shape_layer(s) for s in _shape_keys(frame)]
    g = _Geometry.of(layers)
    w = frame["w_bits"].to_numpy(dtype=np.int64)
    a = frame["a_bits"].to_numpy(dtype=np.int64)
    return g, w, a


def fit_bitfusion(frame: pd.DataFrame, held: np.ndarray) -> BitFusionHardware:
    """Bit Fusion's free constants fitted to the rows not ``held`` out, in log error.

    Latency first (six constants, bounded least squares on log(ours / theirs)); then energy, four
    non-negative coefficients on the fitted model's cycles, DRAM bits and depthwise MACs, in the
    same log error. The structural constants (array, clock, interface) stay the simulator's.
    """
    from scipy.optimize import least_squares

    g, w, a = _fit_arrays(frame)
    fit = ~held
    base = BitFusionHardware()
    latency = frame["latency_ms"].to_numpy()
    energy = frame["energy_mj"].to_numpy()

    def hardware(values) -> BitFusionHardware:
        return dataclasses.replace(base, **dict(zip(_LATENCY_FIELDS, values, strict=True)))

    def latency_error(values) -> np.ndarray:
        cycles, _ = bitfusion_cost(g, w[None, :], a[None, :], 1, hardware(values))
        ms = cycles[0] / base.clock_hz * 1e3
        return np.log(ms[fit] / latency[fit])

    start = [getattr(base, f) for f in _LATENCY_FIELDS]
    lower, upper = [0.1, 1.0, 0.0, 16.0, 0.0, 0.0], [10.0, 64.0, 2.0, 2048.0, 10.0, 1e5]
    start = np.clip(start, lower, upper)
    lat = least_squares(latency_error, start, bounds=(lower, upper), x_scale="jac")
    hw = hardware(lat.x)

    # Energy terms, each as the model computes it with unit coefficients.
    zero = dict.fromkeys(_ENERGY_FIELDS, 0.0)
    terms = []
    for field in _ENERGY_FIELDS:
        unit = dataclasses.replace(hw, **{**zero, field: 1.0})
        terms.append(bitfusion_cost(g, w[None, :], a[None, :], 1, unit)[1][0])
    X = np.stack(terms, axis=1) / 1e9  # pJ -> mJ
    scale = X[fit].mean(axis=0) / energy[fit].mean()
    Xn = X / scale

    def energy_error(coef) -> np.ndarray:
        return np.log((Xn[fit] @ coef) / energy[fit])

    en = least_squares(energy_error, np.full(len(terms), 1.0 / len(terms)), bounds=(0, np.inf))
    return dataclasses.replace(hw, **dict(zip(_ENERGY_FIELDS, en.x / scale, strict=True)))


def rounded(hw: BitFusionHardware, digits: int = 4) -> BitFusionHardware:
    """The fitted constants at ``digits`` significant digits, as written in cost.py."""
    fields = {f: float(f"{getattr(hw, f):.{digits}g}") for f in _LATENCY_FIELDS + _ENERGY_FIELDS}
    return dataclasses.replace(hw, **fields)
