"""Hardware cost models and budgets: pure functions of the layer table and the bitwidths.

Every model prices a whole batch of configs at once: ``w_bits`` and ``a_bits`` are int arrays of
shape ``[n_configs, n_layers]`` (a 1-D array is one config), and ``batch`` returns one float array
of length ``n_configs`` per metric. The generator prices thousands of proposals per request, so the
core is a handful of numpy broadcasts over per-layer constants, never a Python loop over configs.

Shared conventions (every analytic model):

* **Layer as GEMM.** A convolution is ``groups`` independent GEMMs, each with
  ``M = out_h * out_w`` output pixels, reduction ``K = kernel * kernel_w * in_channels / groups``
  (``Layer.reduction``, i.e. im2col) and ``N = out_channels / groups`` output channels. A linear
  layer is ``M = 1``, ``K = in``, ``N = out``. Depthwise layers (``K = 9``, ``N = 1``, ``groups =
  channels``) fill only a sliver of a wide array; HAQ observed exactly this (depthwise layers are
  memory/utilization bound) and the ceil() tiling terms below reproduce it.
* **Batch 1.** Latency and energy are per image. (HAQ ran its cloud target at batch 16; batching
  would amortise weight traffic, which we leave out to keep one formula for all targets.)
* **Roofline per layer.** ``latency = max(compute_s, memory_s)``, summed over layers (layers run
  one after another; compute and DRAM transfers of one layer overlap).
  ``memory_s = bytes_moved / dram_bytes_per_s`` with
  ``bytes_moved = params * w / 8 + in_elems * a / 8 + out_elems * a / 8``: weights and the input
  activation are read once, the output activation is written once (Bit Fusion counts the padded
  widths it stores, BISMO the exact ones). *Simplification:* the output is
  written at this layer's ``a_bits[i]`` (the next layer's input precision is not used), so each
  layer's cost depends only on its own two bitwidths. On-chip reuse is assumed perfect (every
  tensor crosses DRAM exactly once), which is optimistic for large layers.
* **Energy** = compute energy + ``bytes_moved * dram_energy_pj_per_byte``. SRAM and static energy
  are not modelled.
* **Biases** stay 32-bit after BN folding and cost the same under every config, so they are
  excluded from ``size_bytes`` and from traffic: budgets compare only what the search controls.

Every metric is monotone non-decreasing in every layer's ``w_bits`` and ``a_bits`` (padding,
ceil() and max() are all monotone), which the budget-repair loop of HAQ and our selectors rely on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd

from aqgan_ray.config import DEFAULT_BIT_CHOICES, MAX_BITS, QuantConfig
from aqgan_ray.errors import UserError
from aqgan_ray.layers import Layer

METRICS: tuple[str, ...] = ("size_bytes", "bitops", "latency_ms", "energy_mj")
"""Every budget metric a model may provide (``--budget METRIC=VALUE``)."""

HW_METRICS: tuple[str, ...] = ("latency_ms", "energy_mj")

PJ_PER_MJ = 1e9  # 1 mJ = 1e9 pJ

# DRAM access energy, used by every analytic model: 640 pJ per 32-bit DRAM read at 45 nm
# (Horowitz, "Computing's energy problem", ISSCC 2014; the table reproduced by Han et al. 2015/16,
# where a DRAM access is 6400x a 0.1 pJ 32-bit add) = 160 pJ/byte. *Assumption:* the same figure
# is used for the FPGA boards' DDR3/DDR4, for which no per-byte number is published with BISMO.
DRAM_ENERGY_PJ_PER_BYTE = 640.0 / 4


# --------------------------------------------------------------------------------------------
# Layer geometry and bit arrays
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    """Per-layer constants as int64 arrays of shape [n_layers] (the GEMM view described above)."""

    groups: np.ndarray
    m: np.ndarray  # output pixels per group
    k: np.ndarray  # reduction length per output
    n: np.ndarray  # output channels per group
    params: np.ndarray
    macs: np.ndarray
    in_elems: np.ndarray
    out_elems: np.ndarray

    @classmethod
    def of(cls, layers: Sequence[Layer]) -> _Geometry:
        def col(values: list[int]) -> np.ndarray:
            return np.asarray(values, dtype=np.int64)

        return cls(
            groups=col([ly.groups for ly in layers]),
            m=col([ly.out_h * ly.out_w for ly in layers]),
            k=col([ly.reduction for ly in layers]),
            n=col([ly.out_channels // ly.groups for ly in layers]),
            params=col([ly.params for ly in layers]),
            macs=col([ly.macs for ly in layers]),
            in_elems=col([ly.in_elems for ly in layers]),
            out_elems=col([ly.out_elems for ly in layers]),
        )

    def bytes_moved(self, w_bits: np.ndarray, a_bits: np.ndarray) -> np.ndarray:
        """DRAM bytes per layer, [n_configs, n_layers]: weights + input + output activations."""
        return (self.params * w_bits + (self.in_elems + self.out_elems) * a_bits) / 8.0


def _bit_arrays(
    layers: Sequence[Layer], w_bits: np.ndarray, a_bits: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and promote bits to int64 [n_configs, n_layers]; a 1-D array is one config."""
    w = np.atleast_2d(np.asarray(w_bits))
    a = np.atleast_2d(np.asarray(a_bits))
    n = len(layers)
    if w.ndim != 2 or w.shape != a.shape or w.shape[1] != n:
        raise UserError(
            f"bitwidth arrays have shapes {np.shape(w_bits)} and {np.shape(a_bits)}; expected two "
            f"arrays of shape [n_configs, {n}] (one column per quantizable layer)"
        )
    if not (np.issubdtype(w.dtype, np.integer) and np.issubdtype(a.dtype, np.integer)):
        raise UserError(f"bitwidths must be integers, got {w.dtype} and {a.dtype} arrays")
    for kind, bits in (("w_bits", w), ("a_bits", a)):
        if bits.size and (bits.min() < 1 or bits.max() > MAX_BITS):
            raise UserError(
                f"{kind} holds {int(bits.min())}..{int(bits.max())}; cost models accept "
                f"1..{MAX_BITS} bits"
            )
    return w.astype(np.int64), a.astype(np.int64)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class CostModel:
    """A hardware cost model: prices batches of configs on one layer table.

    Subclasses set ``name`` and ``metrics`` and implement ``batch``. ``check`` lets a model refuse
    a layer table or bit choices up front (a lookup table with missing rows), so a user learns it
    when the run starts rather than mid-search.
    """

    name: str
    metrics: tuple[str, ...]

    def batch(
        self, layers: Sequence[Layer], w_bits: np.ndarray, a_bits: np.ndarray
    ) -> dict[str, np.ndarray]:
        """One float64 (int64 for ``bitops``) array of length n_configs per metric."""
        raise NotImplementedError

    def check(self, layers: Sequence[Layer], bit_choices: Sequence[int]) -> None:
        """Raise a UserError if some config over ``bit_choices`` cannot be priced."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class SizeModel(CostModel):
    """``size_bytes = sum_l params_l * w_bits_l / 8`` (weights only; biases excluded, see top)."""

    name = "size"
    metrics = ("size_bytes",)

    def batch(
        self, layers: Sequence[Layer], w_bits: np.ndarray, a_bits: np.ndarray
    ) -> dict[str, np.ndarray]:
        w, _ = _bit_arrays(layers, w_bits, a_bits)
        params = _Geometry.of(layers).params
        return {"size_bytes": (w * params).sum(axis=1) / 8.0}


class BitOpsModel(CostModel):
    """``bitops = sum_l macs_l * w_bits_l * a_bits_l`` (the HAWQ-V3 / NNCF BitOps proxy)."""

    name = "bitops"
    metrics = ("bitops",)

    def batch(
        self, layers: Sequence[Layer], w_bits: np.ndarray, a_bits: np.ndarray
    ) -> dict[str, np.ndarray]:
        w, a = _bit_arrays(layers, w_bits, a_bits)
        macs = _Geometry.of(layers).macs
        return {"bitops": (w * a * macs).sum(axis=1)}


@dataclass(frozen=True)
class BitFusionHardware:
    """Bit Fusion (Sharma et al., ISCA 2018), the 45 nm instance the paper compares to Eyeriss.

    Sizes and clock are the authors' simulator config ``bf_e_conf.ini`` (github.com/hsharma35/
    bitfusion): a 16 x 32 systolic array of Fusion Units (512 FUs), 500 MHz, a 192-bit memory
    interface per cycle. Its ``simulator.py`` puts the reduction on the 16 rows ("inputs") and
    output channels on the 32 columns ("outputs"), streaming output pixels through in time; so do
    we.
    """

    rows: int = 16  # reduction lanes (Fusion Units along K)
    cols: int = 32  # output-channel lanes (Fusion Units along N)
    clock_hz: float = 500e6
    # 192 bits/cycle x 500 MHz = 12 GB/s (bf_e_conf.ini ``if_width = 192``).
    dram_bytes_per_s: float = 192 / 8 * 500e6
    # One 8x8-bit MAC at 45 nm: 8-bit multiply 0.2 pJ + 8-bit add 0.03 pJ (Horowitz, ISSCC 2014).
    # A Fusion Unit does it with all 16 BitBricks, so one BitBrick op costs 0.23 / 16 pJ.
    # *Simplification:* the whole MAC energy (accumulator included) scales with bricks used.
    mac8_energy_pj: float = 0.2 + 0.03
    bricks_per_fusion_unit: int = 16
    dram_energy_pj_per_byte: float = DRAM_ENERGY_PJ_PER_BYTE


def _bitfusion_pad(bits: np.ndarray) -> np.ndarray:
    """Operand widths Bit Fusion supports: 2, 4, 8 spatially, 16 as four temporal 8-bit passes."""
    return np.select([bits <= 2, bits <= 4, bits <= 8], [2, 4, 8], default=16)


class BitFusionModel(CostModel):
    """Spatial bit-level composable accelerator; latency moves in steps of 2/4/8/16 bits.

    Padding: a b-bit operand is computed (and stored, since the bricks read 2/4/8-bit lanes) as
    ``pad(b)`` in {2, 4, 8, 16} bits. A ``pw x pa`` multiply fuses ``(pw/2) * (pa/2)`` 2-bit
    BitBricks; a Fusion Unit (16 bricks) therefore holds ``(8/pw) * (8/pa)`` parallel MACs for
    ``pw, pa <= 8``; 16-bit operands take 2 (or 4 for 16 x 16) temporal 8-bit passes.

    ``cycles_l = groups * M * ceil(K / (rows * macs_per_fu)) * ceil(N / cols) * passes``
    (one output pixel's K-slice enters the array per cycle; fill/drain is ignored), then the
    roofline above with ``bytes_moved`` at the padded widths.
    ``energy_l = macs * (pw/2) * (pa/2) * mac8_energy / 16 + bytes_moved * dram_energy``.
    """

    metrics = HW_METRICS

    def __init__(self, hw: BitFusionHardware | None = None, name: str = "bitfusion") -> None:
        self.hw = hw or BitFusionHardware()
        self.name = name

    def batch(
        self, layers: Sequence[Layer], w_bits: np.ndarray, a_bits: np.ndarray
    ) -> dict[str, np.ndarray]:
        w, a = _bit_arrays(layers, w_bits, a_bits)
        g, hw = _Geometry.of(layers), self.hw
        pw, pa = _bitfusion_pad(w), _bitfusion_pad(a)
        macs_per_fu = (8 // np.minimum(pw, 8)) * (8 // np.minimum(pa, 8))
        passes = np.maximum(pw // 8, 1) * np.maximum(pa // 8, 1)
        k_tiles = -(-g.k // (hw.rows * macs_per_fu))  # ceil division on int arrays
        n_tiles = -(-g.n // hw.cols)
        cycles = g.groups * g.m * k_tiles * n_tiles * passes
        moved = g.bytes_moved(pw, pa)
        seconds = np.maximum(cycles / hw.clock_hz, moved / hw.dram_bytes_per_s)
        brick_pj = hw.mac8_energy_pj / hw.bricks_per_fusion_unit
        energy_pj = g.macs * (pw // 2) * (pa // 2) * brick_pj + moved * hw.dram_energy_pj_per_byte
        return {
            "latency_ms": seconds.sum(axis=1) * 1e3,
            "energy_mj": energy_pj.sum(axis=1) / PJ_PER_MJ,
        }


# BISMO binary-MAC energy: the BISMO README reports 15.4 binary TOPS on the Avnet Ultra96 while
# drawing under 8 W (whole board, 16 nm Zynq UltraScale+), i.e. 8 / 15.4e12 J per op and two ops
# (AND + popcount-add) per binary MAC: 2 * 8 / 15.4 = 1.04 pJ. *Assumption:* used for both BISMO
# targets (the VU9P is also 16 nm; the 28 nm Zynq-7020 is likely worse). Board power includes
# static power, so this is an upper bound on the dynamic cost.
BISMO_BINARY_MAC_ENERGY_PJ = 1.04


@dataclass(frozen=True)
class BismoHardware:
    """One BISMO overlay instance (Umuroglu, Rasnayake, Sjalander, FPL 2018).

    A ``dm x dn`` array of dot-product units, each ``dk`` bits wide: per cycle it multiplies
    ``dm`` rows of the left matrix (weights) by ``dn`` rows of the right matrix (activations), one
    ``dk``-long bit-plane slice at a time.
    """

    dm: int  # weight rows (output channels)
    dn: int  # activation rows (output pixels)
    dk: int  # bits of the dot product per cycle
    clock_hz: float
    dram_bytes_per_s: float
    binary_mac_energy_pj: float = BISMO_BINARY_MAC_ENERGY_PJ
    dram_energy_pj_per_byte: float = DRAM_ENERGY_PJ_PER_BYTE


# Edge: Zynq-7020 on the PYNQ-Z1. The BISMO docs (doc/platforms.md) list the largest PYNQZ1 build
# as 8x256x8 @ 200 MHz (6.5 binary TOPS) on one 64-bit AXI HP0 port: 8 B x 200 MHz = 1.6 GB/s,
# below the board's DDR3 peak (16-bit @ 1050 MT/s = 2.1 GB/s, Digilent PYNQ-Z1 reference manual).
BISMO_EDGE = BismoHardware(dm=8, dn=8, dk=256, clock_hz=200e6, dram_bytes_per_s=64 / 8 * 200e6)

# Cloud: Virtex UltraScale+ VU9P (AWS F1). HAQ's accelerator table gives the cloud BISMO a 16x16
# PE array with 4 x 256-bit AXI ports (recalled from the HAQ paper; not confirmed in our reference
# corpus). *Assumptions:* dk = 256 and 200 MHz as in the PYNQ-Z1 build; bandwidth = the AXI ports,
# 4 x 32 B x 200 MHz = 25.6 GB/s (the F1 card's four DDR4 channels could feed more).
BISMO_CLOUD = BismoHardware(dm=16, dn=16, dk=256, clock_hz=200e6, dram_bytes_per_s=4 * 32 * 200e6)


class BismoModel(CostModel):
    """Bit-serial matrix multiplication overlay; latency scales with ``w_bits * a_bits``.

    A ``w x a``-bit product is ``w * a`` binary (bit-plane) passes, with no padding, so
    ``cycles_l = groups * ceil(N / dm) * ceil(M / dn) * ceil(K / dk) * w * a``
    (weights, N output channels, on the dm side as BISMO's left-hand matrix; activations, M pixels,
    on the dn side). Then the shared roofline with unpadded ``bytes_moved`` (BISMO stores operands
    as packed bit-planes, so a b-bit tensor is exactly b bits per element).
    ``energy_l = macs * w * a * binary_mac_energy + bytes_moved * dram_energy``.
    """

    metrics = HW_METRICS

    def __init__(self, name: str, hw: BismoHardware) -> None:
        self.name = name
        self.hw = hw

    def batch(
        self, layers: Sequence[Layer], w_bits: np.ndarray, a_bits: np.ndarray
    ) -> dict[str, np.ndarray]:
        w, a = _bit_arrays(layers, w_bits, a_bits)
        g, hw = _Geometry.of(layers), self.hw
        tiles = g.groups * -(-g.n // hw.dm) * -(-g.m // hw.dn) * -(-g.k // hw.dk)
        cycles = tiles * w * a
        moved = g.bytes_moved(w, a)
        seconds = np.maximum(cycles / hw.clock_hz, moved / hw.dram_bytes_per_s)
        energy_pj = g.macs * w * a * hw.binary_mac_energy_pj + moved * hw.dram_energy_pj_per_byte
        return {
            "latency_ms": seconds.sum(axis=1) * 1e3,
            "energy_mj": energy_pj.sum(axis=1) / PJ_PER_MJ,
        }


class TableModel(CostModel):
    """Measured per-layer costs looked up by (layer, w_bits, a_bits) and summed over layers.

    The file (CSV or Parquet) has columns ``layer`` (layer name, or integer index in layer-table
    order), ``w_bits``, ``a_bits`` and one column per metric it provides (any of ``METRICS``).
    This is how HAQ priced configs (per-layer latency/energy tables from a simulator or a board),
    and how a user brings real measurements. Values are taken as measured: no monotonicity is
    imposed.
    """

    def __init__(self, path: Path, frame: pd.DataFrame) -> None:
        self.path = path
        self.name = f"table:{path}"
        self.frame = frame
        self.metrics = tuple(m for m in METRICS if m in frame.columns)
        self._dense: dict[tuple[str, ...], np.ndarray] = {}

    @classmethod
    def load(cls, path_text: str) -> TableModel:
        if not path_text:
            raise UserError("--hw table: needs a path, e.g. --hw table:measured/latency.csv")
        path = Path(path_text)
        if not path.is_file():
            raise UserError(f"cost table {path} does not exist; give a CSV or Parquet file path")
        suffix = path.suffix.lower()
        try:
            if suffix == ".csv":
                frame = pd.read_csv(path)
            elif suffix in (".parquet", ".pq"):
                frame = pd.read_parquet(path)
            else:
                raise UserError(f"cost table {path} must end in .csv or .parquet, not {suffix!r}")
        except UserError:
            raise
        except Exception as exc:  # pandas/pyarrow raise many types for a corrupt file
            raise UserError(f"cannot read cost table {path}: {exc}") from None
        missing = [c for c in ("layer", "w_bits", "a_bits") if c not in frame.columns]
        if missing:
            raise UserError(
                f"cost table {path} lacks column(s) {', '.join(missing)}; it needs layer, w_bits, "
                f"a_bits and one or more of {', '.join(METRICS)} (has {', '.join(frame.columns)})"
            )
        if not any(m in frame.columns for m in METRICS):
            raise UserError(
                f"cost table {path} has no metric column; add one or more of {', '.join(METRICS)}"
            )
        for col in ("w_bits", "a_bits"):
            bits = pd.to_numeric(frame[col], errors="coerce")
            if bits.isna().any() or (bits != bits.round()).any() or (bits < 1).any():
                raise UserError(f"cost table {path}: column {col} must hold positive integers")
            frame[col] = bits.astype(np.int64)
        for metric in (m for m in METRICS if m in frame.columns):
            values = pd.to_numeric(frame[metric], errors="coerce")
            if values.isna().any():
                raise UserError(
                    f"cost table {path}: column {metric} has empty or non-numeric cells"
                )
            frame[metric] = values.astype(np.float64)
        dup = frame.duplicated(["layer", "w_bits", "a_bits"])
        if dup.any():
            row = frame[dup].iloc[0]
            raise UserError(
                f"cost table {path} lists layer {row['layer']!r}, w_bits={row['w_bits']}, "
                f"a_bits={row['a_bits']} more than once; keep one row per combination"
            )
        return cls(path, frame)

    def _layer_index(self, layers: Sequence[Layer]) -> np.ndarray:
        """Row -> layer position, from names or integer indices; unknown layers are an error."""
        col = self.frame["layer"]
        n = len(layers)
        if pd.api.types.is_integer_dtype(col):
            idx = col.to_numpy(dtype=np.int64)
            bad = sorted({int(i) for i in idx if not 0 <= i < n})
            if bad:
                raise UserError(
                    f"cost table {self.path} uses layer indices {bad[:5]} but the model has "
                    f"{n} quantizable layers (indices 0..{n - 1})"
                )
            return idx
        position = {ly.name: i for i, ly in enumerate(layers)}
        names = col.astype(str)
        unknown = sorted(set(names) - position.keys())
        if unknown:
            raise UserError(
                f"cost table {self.path} names layers {unknown[:3]} that this model does not have; "
                f"its layers are named like {[ly.name for ly in layers[:3]]} (or use indices)"
            )
        return names.map(position).to_numpy(dtype=np.int64)

    def _lookup(self, layers: Sequence[Layer]) -> np.ndarray:
        """Dense [n_metrics, n_layers, max_bits+1, max_bits+1] array, NaN where no row exists."""
        key = tuple(ly.name for ly in layers)
        if key not in self._dense:
            idx = self._layer_index(layers)
            w = self.frame["w_bits"].to_numpy()
            a = self.frame["a_bits"].to_numpy()
            top = max(int(w.max(initial=0)), int(a.max(initial=0)), MAX_BITS)
            dense = np.full((len(self.metrics), len(layers), top + 1, top + 1), np.nan)
            for m, metric in enumerate(self.metrics):
                dense[m, idx, w, a] = self.frame[metric].to_numpy()
            self._dense[key] = dense
        return self._dense[key]

    def _raise_missing(
        self, layers: Sequence[Layer], li: int, w: int, a: int, count: int
    ) -> NoReturn:
        raise UserError(
            f"cost table {self.path} has no row for layer {layers[li].name!r} (index {li}) with "
            f"w_bits={w}, a_bits={a} ({count} combination(s) missing in all); measure them or "
            f"restrict the bit choices to those the table covers"
        )

    def check(self, layers: Sequence[Layer], bit_choices: Sequence[int]) -> None:
        dense = self._lookup(layers)
        bits = np.asarray(sorted(set(bit_choices)), dtype=np.int64)
        if bits.size == 0 or bits[0] < 1 or bits[-1] >= dense.shape[-1]:
            raise UserError(f"bit choices {list(bit_choices)} must lie within 1..{MAX_BITS}")
        present = ~np.isnan(dense[:, :, bits[:, None], bits[None, :]]).any(axis=0)
        if not present.all():
            li, wi, ai = (int(v[0]) for v in np.nonzero(~present))
            self._raise_missing(layers, li, int(bits[wi]), int(bits[ai]), int((~present).sum()))

    def batch(
        self, layers: Sequence[Layer], w_bits: np.ndarray, a_bits: np.ndarray
    ) -> dict[str, np.ndarray]:
        w, a = _bit_arrays(layers, w_bits, a_bits)
        dense = self._lookup(layers)
        cols = np.arange(len(layers))[None, :]
        values = dense[:, cols, w, a]  # [n_metrics, n_configs, n_layers]
        missing = np.isnan(values).any(axis=0)
        if missing.any():
            ci, li = (int(v[0]) for v in np.nonzero(missing))
            self._raise_missing(layers, li, int(w[ci, li]), int(a[ci, li]), int(missing.sum()))
        return {metric: values[m].sum(axis=1) for m, metric in enumerate(self.metrics)}


_ANALYTIC: dict[str, CostModel] = {
    m.name: m
    for m in (
        SizeModel(),
        BitOpsModel(),
        BitFusionModel(),
        BismoModel("bismo-edge", BISMO_EDGE),
        BismoModel("bismo-cloud", BISMO_CLOUD),
    )
}
HW_MODELS: tuple[str, ...] = tuple(_ANALYTIC)
"""Built-in model names; ``table:PATH`` is accepted in addition."""


def get_hw_model(
    name: str,
    layers: Sequence[Layer] | None = None,
    bit_choices: Sequence[int] = DEFAULT_BIT_CHOICES,
) -> CostModel:
    """The model called ``name`` (``--hw``). With ``layers``, also ``check`` it against them now."""
    if name.startswith("table:"):
        model = TableModel.load(name.removeprefix("table:"))
    elif name in _ANALYTIC:
        model = _ANALYTIC[name]
    else:
        raise UserError(
            f"unknown hardware model {name!r}; choose one of {', '.join(HW_MODELS)}, "
            f"or table:PATH for a CSV/Parquet table of measured per-layer costs"
        )
    if layers is not None:
        model.check(layers, bit_choices)
    return model


def config_costs(layers: Sequence[Layer], config: QuantConfig) -> dict:
    """The contract's ``cost`` object for one config, as plain JSON-serialisable numbers."""
    names = tuple(ly.name for ly in layers)
    if config.layers != names:
        raise UserError(
            f"config is for {len(config.layers)} layers that do not match this model's "
            f"{len(names)} quantizable layers; regenerate it for this model"
        )
    w = np.asarray([config.w_bits], dtype=np.int64)
    a = np.asarray([config.a_bits], dtype=np.int64)
    out: dict = {
        "size_bytes": float(_ANALYTIC["size"].batch(layers, w, a)["size_bytes"][0]),
        "bitops": int(_ANALYTIC["bitops"].batch(layers, w, a)["bitops"][0]),
    }
    for name in ("bitfusion", "bismo-edge", "bismo-cloud"):
        costs = _ANALYTIC[name].batch(layers, w, a)
        out[name] = {metric: float(values[0]) for metric, values in costs.items()}
    return out


# --------------------------------------------------------------------------------------------
# Budgets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """An upper bound on one metric; ``relative`` is the fraction of the all-8-bit cost, if any."""

    metric: str
    value: float
    relative: float | None = None


def uniform_cost(model: CostModel, layers: Sequence[Layer], bits: int, metric: str) -> float:
    """``metric`` of the config with every weight and activation at ``bits``."""
    w = np.full((1, len(layers)), bits, dtype=np.int64)
    return float(model.batch(layers, w, w)[metric][0])


def parse_budget(text: str, model: CostModel, layers: Sequence[Layer], min_bits: int = 2) -> Budget:
    """Parse ``--budget METRIC=VALUE``; ``VALUE`` is absolute or ``0.5x`` the all-8-bit cost.

    A budget below the all-``min_bits`` cost is refused here: no config can meet it, and a search
    would otherwise spend its whole budget finding that out.
    """
    metric, sep, raw = (part.strip() for part in text.partition("="))
    if not sep or not metric or not raw:
        raise UserError(
            f"--budget {text!r} is not METRIC=VALUE; write e.g. latency_ms=2.5 or energy_mj=0.5x"
        )
    if metric not in METRICS:
        raise UserError(
            f"--budget metric {metric!r} is unknown; choose one of {', '.join(METRICS)}"
        )
    if metric not in model.metrics:
        raise UserError(
            f"hardware model {model.name} does not provide {metric}; it provides "
            f"{', '.join(model.metrics)}: budget one of those, or pick another --hw"
        )
    relative = raw[-1] in "xX"
    number = raw[:-1].strip() if relative else raw
    try:
        amount = float(number)
    except ValueError:
        raise UserError(
            f"--budget value {raw!r} is not a number; write an absolute value like 2.5 or a "
            f"fraction of the all-8-bit cost like 0.5x"
        ) from None
    if not math.isfinite(amount) or amount <= 0:
        raise UserError(f"--budget value {raw!r} must be a positive, finite number")
    value = amount * uniform_cost(model, layers, 8, metric) if relative else amount
    floor = uniform_cost(model, layers, min_bits, metric)
    if value < floor:
        raise UserError(
            f"--budget {metric}={raw} ({value:.6g}) is below the cheapest config on {model.name}: "
            f"all {min_bits}-bit costs {floor:.6g} {metric}; raise the budget to at least that"
        )
    return Budget(metric, value, amount if relative else None)


def within_budget(costs: np.ndarray, budget: Budget) -> np.ndarray:
    """Boolean mask of costs that meet the budget.

    A 1e-9 relative slack keeps a config whose cost *is* the budget (e.g. all-8-bit under ``1x``)
    inside it even when the two sums were rounded differently.
    """
    return np.asarray(costs, dtype=np.float64) <= budget.value * (1 + 1e-9)
