"""Measured per-layer costs (``--hw table:PATH``), keyed by layer or by layer shape.

HAQ priced configs with per-layer tables from a simulator or a board; this is how a user brings
theirs. Two kinds of key:

* **By layer** (one model only): CSV or Parquet with columns ``layer`` (name, or integer index in
  layer-table order), ``w_bits``, ``a_bits`` and one column per metric (any of ``METRICS``).
* **By shape** (any model whose layer shapes the table covers): columns ``in_channels``,
  ``out_channels``, ``input_size``, ``kernel``, ``stride``, ``padding``, ``groups`` instead of
  ``layer``; or APQ's JSON as it is, keys ``"(in, out, input_size, kernel, stride, padding,
  groups)-W{w}A{a}"`` and values ``{"latency": ms, "energy": mJ}`` (its ``head``/``tail`` entries
  are whole blocks, not layers, and are skipped). Square inputs and kernels; a linear layer is
  ``(in, out, 1, 1, 1, 0, 1)``.

Values are taken as measured: no monotonicity is imposed. A config needing a missing entry is
refused before any search starts, naming what is missing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd

from aqgan_ray.config import MAX_BITS
from aqgan_ray.cost import METRICS, CostModel, _bit_arrays
from aqgan_ray.errors import UserError
from aqgan_ray.layers import Layer

SHAPE_COLUMNS: tuple[str, ...] = (
    "in_channels", "out_channels", "input_size", "kernel", "stride", "padding", "groups",
)  # fmt: skip
_APQ_KEY = re.compile(r"^\((\d+), ?(\d+), ?(\d+), ?(\d+), ?(\d+), ?(\d+), ?(\d+)\)-W(\d+)A(\d+)$")
_APQ_BLOCKS = ("head", "tail")
_MAX_DIMENSION = 1 << 24  # channels and sizes beyond this are a corrupt file
# The integers each column may hold, checked before anything is allocated: the dense lookup
# array is sized by the largest bitwidth, so a corrupt one must not reach it.
_INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "w_bits": (1, MAX_BITS),
    "a_bits": (1, MAX_BITS),
    **{column: (0, _MAX_DIMENSION) for column in SHAPE_COLUMNS},
}


def layer_shape(layer: Layer) -> tuple[int, ...] | None:
    """The shape key of a layer, or None when it is not square (a shape table cannot hold it).

    The layer table records no dilation: a dilated convolution is keyed as the undilated one
    with the same output size (none of the shipped models has one)."""
    if layer.kind == "linear":
        return (layer.in_channels, layer.out_channels, 1, 1, 1, 0, 1)
    if layer.in_h != layer.in_w or layer.kernel != layer.kernel_w or layer.out_h != layer.out_w:
        return None
    # The smallest padding that gives the traced output size (padding is not in the layer table).
    k, s, size = layer.kernel, layer.stride, layer.in_h
    pad = next((p for p in range(k + 1) if (size + 2 * p - k) // s + 1 == layer.out_h), None)
    if pad is None:
        return None
    return (layer.in_channels, layer.out_channels, size, k, s, pad, layer.groups)


def read_table(path: Path) -> pd.DataFrame:
    """The file as a frame with ``w_bits``, ``a_bits``, metric columns and ``layer`` or the shape
    columns; any malformed content is a one-line UserError."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix == ".json":
            return _read_apq_json(path)
    except UserError:
        raise
    except Exception as exc:  # pandas/pyarrow/json raise many types for a corrupt file
        raise UserError(f"cannot read cost table {path}: {str(exc).splitlines()[0]}") from None
    raise UserError(f"cost table {path} must end in .csv, .parquet or .json, not {suffix!r}")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    repeated = next((k for k in keys if keys.count(k) > 1), None)
    if repeated is not None:
        raise UserError(f"key {repeated!r} appears more than once; keep one entry per key")
    return dict(pairs)


def _read_apq_json(path: Path) -> pd.DataFrame:
    try:
        data = json.loads(path.read_bytes(), object_pairs_hook=_unique_keys)
    except UserError as exc:
        raise UserError(f"cost table {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"cost table {path}: expected a JSON object of APQ-style entries")
    rows = []
    for key, value in data.items():
        if key in _APQ_BLOCKS:
            continue
        match = _APQ_KEY.match(key)
        if not match:
            raise UserError(
                f"cost table {path}: key {key!r} is not '(in, out, input_size, kernel, stride, "
                f"padding, groups)-W<bits>A<bits>'"
            )
        if not isinstance(value, dict) or not {"latency", "energy"} & value.keys():
            raise UserError(f"cost table {path}: entry {key!r} needs 'latency' and/or 'energy'")
        *shape, w, a = (int(v) for v in match.groups())
        row = dict(zip(SHAPE_COLUMNS, shape, strict=True), w_bits=w, a_bits=a)
        for src, metric in (("latency", "latency_ms"), ("energy", "energy_mj")):
            if src in value:
                if isinstance(value[src], bool) or not isinstance(value[src], (int, float)):
                    raise UserError(f"cost table {path}: entry {key!r} has {src} {value[src]!r}")
                row[metric] = value[src]
        rows.append(row)
    if not rows:
        raise UserError(f"cost table {path} holds no layer entries")
    return pd.DataFrame(rows)


def _checked_frame(path: Path, frame: pd.DataFrame) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Validate columns, bits and values; returns the frame and its key columns."""
    if "layer" in frame.columns:
        keys: tuple[str, ...] = ("layer",)
    elif all(c in frame.columns for c in SHAPE_COLUMNS):
        keys = SHAPE_COLUMNS
    else:
        raise UserError(
            f"cost table {path} needs a 'layer' column or the shape columns "
            f"{', '.join(SHAPE_COLUMNS)} (has {', '.join(map(str, frame.columns))})"
        )
    missing = [c for c in ("w_bits", "a_bits") if c not in frame.columns]
    if missing:
        raise UserError(
            f"cost table {path} lacks column(s) {', '.join(missing)}; it needs w_bits, a_bits "
            f"and one or more of {', '.join(METRICS)}"
        )
    metrics = [m for m in METRICS if m in frame.columns]
    if not metrics:
        raise UserError(
            f"cost table {path} has no metric column; add one or more of {', '.join(METRICS)}"
        )
    frame = frame.copy()
    for col in ("w_bits", "a_bits", *(keys if keys == SHAPE_COLUMNS else ())):
        frame[col] = _integers(path, frame[col])
    if keys == SHAPE_COLUMNS:
        _check_shapes(path, frame)
    for metric in metrics:
        values = pd.to_numeric(frame[metric], errors="coerce")
        if _is_bool(frame[metric]) or not np.isfinite(values).all() or (values < 0).any():
            raise UserError(
                f"cost table {path}: column {metric} has empty, non-numeric, non-finite or "
                f"negative cells"
            )
        frame[metric] = values.astype(np.float64)
    dup = frame.duplicated([*keys, "w_bits", "a_bits"])
    if dup.any():
        row = frame[dup].iloc[0]
        where = ", ".join(f"{k}={row[k]!r}" for k in keys)
        raise UserError(
            f"cost table {path} lists {where}, w_bits={row['w_bits']}, a_bits={row['a_bits']} "
            f"more than once; keep one row per combination"
        )
    return frame, keys


def _is_bool(column: pd.Series) -> bool:
    """A true/false column (a Parquet bool, JSON true): never a count or a measurement."""
    if pd.api.types.is_bool_dtype(column):
        return True
    return column.dtype == object and column.map(lambda v: isinstance(v, (bool, np.bool_))).any()


def _integers(path: Path, column: pd.Series) -> pd.Series:
    """``column`` as int64, refused unless whole numbers within ``_INTEGER_RANGES``."""
    low, high = _INTEGER_RANGES[str(column.name)]
    what = "bit widths" if column.name in ("w_bits", "a_bits") else "channels and sizes"
    values = pd.to_numeric(column, errors="coerce").astype(np.float64)
    if _is_bool(column) or not np.isfinite(values).all() or (values != values.round()).any():
        found = "empty, non-numeric, fractional, true/false or non-finite cells"
    elif values.min() < low or values.max() > high:
        found = f"{values.min():.0f}..{values.max():.0f}"
    else:
        return values.astype(np.int64)
    raise UserError(
        f"cost table {path}: column {column.name} must hold integers within {low}..{high} "
        f"({what}), but it holds {found}; fix or remove those rows"
    )


def _check_shapes(path: Path, frame: pd.DataFrame) -> None:
    """Every shape row must be a convolution that exists (a linear layer is kernel 1, stride 1)."""
    positive = ("in_channels", "out_channels", "input_size", "kernel", "stride", "groups")
    bad = (frame[list(positive)] < 1).any(axis=1)
    bad |= (frame["in_channels"] % frame["groups"] != 0) | (
        frame["out_channels"] % frame["groups"] != 0
    )
    bad |= frame["input_size"] + 2 * frame["padding"] < frame["kernel"]
    if bad.any():
        row = frame[bad].iloc[0]
        shape = tuple(int(row[c]) for c in SHAPE_COLUMNS)
        raise UserError(
            f"cost table {path}: shape {shape} is not a convolution (channels, size, kernel, "
            f"stride and groups at least 1, channels divisible by groups, kernel within the "
            f"padded input)"
        )


class TableModel(CostModel):
    """Per-layer costs looked up by (layer or shape, w_bits, a_bits) and summed over layers."""

    def __init__(self, path: Path, frame: pd.DataFrame, keys: tuple[str, ...]) -> None:
        self.path = path
        self.name = f"table:{path}"
        self.frame = frame
        self.keys = keys
        self.metrics = tuple(m for m in METRICS if m in frame.columns)
        self._dense: dict[tuple[Layer, ...], np.ndarray] = {}

    @property
    def by_shape(self) -> bool:
        return self.keys == SHAPE_COLUMNS

    @classmethod
    def load(cls, path_text: str) -> TableModel:
        if not path_text:
            raise UserError("--hw table: needs a path, e.g. --hw table:measured/latency.csv")
        path = Path(path_text)
        if not path.is_file():
            raise UserError(
                f"cost table {path} does not exist; give a CSV, Parquet or APQ JSON file path"
            )
        frame, keys = _checked_frame(path, read_table(path))
        return cls(path, frame, keys)

    def _rows_per_layer(self, layers: Sequence[Layer]) -> list[np.ndarray]:
        """Row indices of the table for each layer; an unknown layer name/index is an error."""
        if self.by_shape:
            groups = self.frame.groupby(list(SHAPE_COLUMNS)).indices
            odd = [ly.name for ly in layers if layer_shape(ly) is None]
            if odd:
                raise UserError(
                    f"cost table {self.path} is keyed by shape, but layer(s) {odd[:3]} have "
                    f"non-square inputs or kernels; use a table keyed by layer"
                )
            empty = np.zeros(0, dtype=np.int64)
            return [np.asarray(groups.get(layer_shape(ly), empty)) for ly in layers]
        col, n = self.frame["layer"], len(layers)
        if pd.api.types.is_integer_dtype(col):
            idx = col.to_numpy(dtype=np.int64)
            bad = sorted({int(i) for i in idx if not 0 <= i < n})
            if bad:
                raise UserError(
                    f"cost table {self.path} uses layer indices {bad[:5]} but the model has "
                    f"{n} quantizable layers (indices 0..{n - 1})"
                )
        else:
            position = {ly.name: i for i, ly in enumerate(layers)}
            names = col.astype(str)
            unknown = sorted(set(names) - position.keys())
            if unknown:
                raise UserError(
                    f"cost table {self.path} names layers {unknown[:3]} that this model does not "
                    f"have; its layers are named like {[ly.name for ly in layers[:3]]} (or use "
                    f"indices)"
                )
            idx = names.map(position).to_numpy(dtype=np.int64)
        return [np.flatnonzero(idx == i) for i in range(n)]

    def _lookup(self, layers: Sequence[Layer]) -> np.ndarray:
        """Dense [n_metrics, n_layers, MAX_BITS+1, MAX_BITS+1] array, NaN where no row exists."""
        key = tuple(layers)  # frozen dataclasses: the table itself is the key
        if key not in self._dense:
            w = self.frame["w_bits"].to_numpy()
            a = self.frame["a_bits"].to_numpy()
            values = self.frame[list(self.metrics)].to_numpy().T  # [n_metrics, n_rows]
            dense = np.full((len(self.metrics), len(layers), MAX_BITS + 1, MAX_BITS + 1), np.nan)
            for li, rows in enumerate(self._rows_per_layer(layers)):
                dense[:, li, w[rows], a[rows]] = values[:, rows]
            self._dense[key] = dense
        return self._dense[key]

    def _where(self, layer: Layer, index: int) -> str:
        if self.by_shape:
            return f"shape {layer_shape(layer)} (layer {layer.name!r}, index {index})"
        return f"layer {layer.name!r} (index {index})"

    def _covered_bits(self) -> list[int]:
        return sorted(set(self.frame["w_bits"]) | set(self.frame["a_bits"]))

    def _raise_missing(
        self, layers: Sequence[Layer], entries: list[tuple[int, int, int]]
    ) -> NoReturn:
        """``entries``: the (layer index, w_bits, a_bits) the table lacks, listed (up to 8)."""
        shown = [
            f"{layer_shape(layers[li]) if self.by_shape else layers[li].name} W{w}A{a}"
            for li, w, a in entries[:8]
        ]
        more = f" and {len(entries) - 8} more" if len(entries) > 8 else ""
        raise UserError(
            f"cost table {self.path} lacks {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
            f" this needs: {'; '.join(shown)}{more}; it covers bits {self._covered_bits()}: "
            f"measure the rest or restrict the bit choices to those"
        )

    def _raise_absent(self, layers: Sequence[Layer], dense: np.ndarray) -> None:
        """Refuse a model with layers the table has no entry for at all, naming every shape."""
        absent = [li for li in range(len(layers)) if np.isnan(dense[:, li]).all()]
        if not absent:
            return
        first = self._where(layers[absent[0]], absent[0])
        if self.by_shape:
            shapes = sorted({layer_shape(layers[li]) for li in absent})
            what = f"missing {len(shapes)} shape(s): {'; '.join(map(str, shapes))}"
        else:
            what = f"missing layers {[layers[li].name for li in absent]}"
        raise UserError(
            f"cost table {self.path} covers no entry for {len(absent)} of the model's "
            f"{len(layers)} layers, first {first}; {what}"
        )

    def check(self, layers: Sequence[Layer], bit_choices: Sequence[int]) -> None:
        dense = self._lookup(layers)
        bits = np.asarray(sorted(set(bit_choices)), dtype=np.int64)
        if bits.size == 0 or bits[0] < 1 or bits[-1] > MAX_BITS:
            raise UserError(f"bit choices {list(bit_choices)} must lie within 1..{MAX_BITS}")
        self._raise_absent(layers, dense)
        present = ~np.isnan(dense[:, :, bits[:, None], bits[None, :]]).any(axis=0)
        if not present.all():
            lacking = np.argwhere(~present)  # rows (layer, w index, a index), layer-major
            self._raise_missing(
                layers, [(int(li), int(bits[wi]), int(bits[ai])) for li, wi, ai in lacking]
            )

    def batch(
        self, layers: Sequence[Layer], w_bits: np.ndarray, a_bits: np.ndarray
    ) -> dict[str, np.ndarray]:
        w, a = _bit_arrays(layers, w_bits, a_bits)
        dense = self._lookup(layers)
        self._raise_absent(layers, dense)
        cols = np.arange(len(layers))[None, :]
        values = dense[:, cols, w, a]  # [n_metrics, n_configs, n_layers]
        missing = np.isnan(values).any(axis=0)
        if missing.any():
            lacking = sorted(
                {(int(li), int(w[ci, li]), int(a[ci, li])) for ci, li in np.argwhere(missing)}
            )
            self._raise_missing(layers, lacking)
        return {metric: values[m].sum(axis=1) for m, metric in enumerate(self.metrics)}
