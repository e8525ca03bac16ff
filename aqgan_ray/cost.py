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
* **A batch per call.** Latency and energy are for one batch of images: weights cross DRAM once
  per batch, activations once per image. Each model has its batch (HAQ: BISMO edge 1, BISMO
  cloud 16; Bit Fusion 1, as APQ's simulator table); ``--hw NAME@B`` prices batch B instead.
* **Per layer, summed.** Layers run one after another; within a layer, compute and DRAM
  transfers overlap (each model says how far). Each layer's cost depends only on its own two
  bitwidths. *Simplification:* where an output activation is stored at reduced precision, it is
  this layer's ``a_bits`` (the next layer's input precision is not used).
* **Sources.** Every constant names its source; a figure we had to assume says *Assumption*.
  Bit Fusion's free constants are fitted to its simulator (``aqgan_ray.calibrate``).
* **Biases** stay 32-bit after BN folding and cost the same under every config, so they are
  excluded from ``size_bytes`` and from traffic: budgets compare only what the search controls.

Every metric is monotone non-decreasing in every layer's ``w_bits`` and ``a_bits`` (padding,
ceil() and max() are all monotone), which the budget-repair loop of HAQ and our selectors rely on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aqgan_ray.config import DEFAULT_BIT_CHOICES, MAX_BITS, QuantConfig, pin_first_last
from aqgan_ray.errors import UserError
from aqgan_ray.layers import Layer

METRICS: tuple[str, ...] = ("size_bytes", "bitops", "latency_ms", "energy_mj")
"""Every budget metric a model may provide (``--budget METRIC=VALUE``)."""

HW_METRICS: tuple[str, ...] = ("latency_ms", "energy_mj")

PJ_PER_MJ = 1e9  # 1 mJ = 1e9 pJ


# --------------------------------------------------------------------------------------------
# Layer geometry and bit arrays
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    """Per-layer constants as int64 arrays of shape [n_layers] (the GEMM view described above)."""

    groups: np.ndarray
    m: np.ndarray  # output pixels per group (one image)
    k: np.ndarray  # reduction length per output
    n: np.ndarray  # output channels per group
    cin_g: np.ndarray  # input channels per group
    kk: np.ndarray  # kernel positions (kh * kw)
    depthwise: np.ndarray  # bool: one input channel per group, groups > 1
    params: np.ndarray
    macs: np.ndarray  # per image
    in_elems: np.ndarray
    out_elems: np.ndarray

    @classmethod
    def of(cls, layers: Sequence[Layer]) -> _Geometry:
        return cls.from_shapes(
            in_channels=[ly.in_channels for ly in layers],
            out_channels=[ly.out_channels for ly in layers],
            kernel=[ly.kernel * ly.kernel_w for ly in layers],
            groups=[ly.groups for ly in layers],
            in_hw=[ly.in_h * ly.in_w for ly in layers],
            out_hw=[ly.out_h * ly.out_w for ly in layers],
        )

    @classmethod
    def from_shapes(cls, in_channels, out_channels, kernel, groups, in_hw, out_hw) -> _Geometry:
        """From per-layer channels, kernel area, groups and input/output pixel counts."""
        ci, co, kk, g, ihw, ohw = (
            np.asarray(v, dtype=np.int64)
            for v in (in_channels, out_channels, kernel, groups, in_hw, out_hw)
        )
        cin_g, n = ci // g, co // g
        return cls(
            groups=g, m=ohw, k=kk * cin_g, n=n, cin_g=cin_g, kk=kk,
            depthwise=(g > 1) & (cin_g == 1), params=g * n * cin_g * kk,
            macs=g * n * cin_g * kk * ohw, in_elems=ci * ihw, out_elems=co * ohw,
        )  # fmt: skip


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
    """Bit Fusion (Sharma et al., ISCA 2018), the 45 nm instance of the authors' simulator.

    Fixed by the simulator (github.com/hsharma35/bitfusion, ``bf_e_conf.ini`` and
    ``optimizer.py``): a 16 x 32 array of Fusion Units at 500 MHz with a 192-bit memory
    interface; the reduction (input channels) runs on the 16 rows and output channels on the 32
    columns, a Fusion Unit does ``(8 // a) * (8 // w)`` MACs per cycle for 2/4/8-bit operands
    (6 bits count as 8, 3 as 4), kernel positions are not packed into the rows, and partial sums
    travel to and from DRAM as 32-bit words (written once and read once per output).

    Fitted (the other fields) to the simulator's own output: APQ's lookup table (6,567 layer
    entries, batch 1), with ``aqgan_ray.calibrate.fit_bitfusion``, a quarter of the 779 shapes
    held out. On the held-out shapes (``aqgan-ray bench costs``): latency Spearman 0.992, median
    ratio ours / simulator 1.00, W4A4/W8A8 0.474 against 0.469; energy Spearman 0.986, median
    ratio 0.99, W4A4/W8A8 0.605 against 0.565 (docs/cost-models.md).
    """

    rows: int = 16
    cols: int = 32
    clock_hz: float = 500e6
    interface_bits: int = 192
    partial_sum_bits: int = 32
    # --- fitted to APQ's Bit Fusion table (values written by calibrate.fit_bitfusion) ---
    # Share of the dense tiling formula's cycles the simulator reports (its loop-order and tile
    # optimiser is not a closed formula; fitted).
    dense_compute_scale: float = 0.5907
    # Depthwise layers: Bit Fusion's simulator has no grouped convolution; APQ's table prices them
    # at about this many MACs per cycle at 8 bits (the dense precision scaling applies).
    depthwise_macs_per_cycle: float = 7.614
    # Fraction of the shorter of compute and DRAM time that is not hidden behind the longer.
    overlap_loss: float = 0.7082
    # Effective DRAM width, above the 192-bit interface: the simulator moves less than our traffic
    # count (every tensor once, partial sums out and back).
    dram_bits_per_cycle: float = 240.3
    # Fraction of the weight load that precedes compute (the first tile), not overlapped.
    weight_preload: float = 0.2777
    layer_overhead_cycles: float = 732.6
    # Energy: energy per cycle while a layer runs (the simulator's energy follows its latency,
    # about 1.8 mJ per ms on dense layers) and per DRAM bit; depthwise layers fit best with less
    # per cycle and a cost per MAC.
    dense_energy_pj_per_cycle: float = 2316.0
    depthwise_energy_pj_per_cycle: float = 870.9
    depthwise_energy_pj_per_mac: float = 75.41
    dram_energy_pj_per_bit: float = 8.499


def bitfusion_cost(
    g: _Geometry, w: np.ndarray, a: np.ndarray, batch: int, hw: BitFusionHardware
) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer (cycles, energy in pJ), each [n_configs, n_layers], for one batch of images.

    ``compute`` is the simulator's tiling: dense layers take
    ``groups * M * ceil(Cin_g / (rows * pf)) * kh * kw * ceil(N / cols)`` cycles (``pf`` the
    Fusion Unit's MACs per cycle), depthwise ``macs / (depthwise_macs_per_cycle * pf)``. DRAM
    moves the weights once per batch at ``w`` bits, the input at ``a`` bits and the output as
    32-bit partial sums, out and back. ``cycles = max(compute, dram) + overlap_loss *
    min(compute, dram) + weight_preload * weight_load + layer_overhead``.
    """
    pw, pa = _bitfusion_pad(w), _bitfusion_pad(a)
    pf = (8 // np.minimum(pw, 8)) * (8 // np.minimum(pa, 8))
    passes = np.maximum(pw // 8, 1) * np.maximum(pa // 8, 1)  # 16-bit: temporal 8-bit passes
    m = g.m * batch
    dense = (
        g.groups * m * -(-g.cin_g // (hw.rows * pf)) * g.kk * -(-g.n // hw.cols)
    ) * hw.dense_compute_scale
    depthwise = g.macs * batch / (hw.depthwise_macs_per_cycle * pf)
    compute = np.where(g.depthwise, depthwise, dense) * passes
    weight_bits = g.params * w
    moved = weight_bits + batch * (g.in_elems * a + 2 * hw.partial_sum_bits * g.out_elems)
    dram = moved / hw.dram_bits_per_cycle
    cycles = (
        np.maximum(compute, dram)
        + hw.overlap_loss * np.minimum(compute, dram)
        + hw.weight_preload * weight_bits / hw.interface_bits
        + hw.layer_overhead_cycles
    )
    power = np.where(g.depthwise, hw.depthwise_energy_pj_per_cycle, hw.dense_energy_pj_per_cycle)
    mac_energy = np.where(g.depthwise, hw.depthwise_energy_pj_per_mac, 0.0) * g.macs * batch
    energy = cycles * power + moved * hw.dram_energy_pj_per_bit + mac_energy
    return cycles, energy


def _bitfusion_pad(bits: np.ndarray) -> np.ndarray:
    """Operand widths Bit Fusion supports: 2, 4, 8 spatially, 16 as four temporal 8-bit passes."""
    return np.select([bits <= 2, bits <= 4, bits <= 8], [2, 4, 8], default=16)


class BitFusionModel(CostModel):
    """Spatial bit-level composable accelerator, calibrated to its own simulator (see above).

    Latency moves in steps: a Fusion Unit computes 2-, 4- or 8-bit operands, so 5-8 bits cost the
    same compute (their DRAM traffic still counts the real bits, as the simulator does).
    """

    metrics = HW_METRICS

    def __init__(
        self, hw: BitFusionHardware | None = None, name: str = "bitfusion", batch_size: int = 1
    ) -> None:
        self.hw = hw or BitFusionHardware()
        self.name = name
        self.batch_size = batch_size

    def batch(
        self, layers: Sequence[Layer], w_bits: np.ndarray, a_bits: np.ndarray
    ) -> dict[str, np.ndarray]:
        w, a = _bit_arrays(layers, w_bits, a_bits)
        cycles, energy_pj = bitfusion_cost(_Geometry.of(layers), w, a, self.batch_size, self.hw)
        return {
            "latency_ms": cycles.sum(axis=1) / self.hw.clock_hz * 1e3,
            "energy_mj": energy_pj.sum(axis=1) / PJ_PER_MJ,
        }


@dataclass(frozen=True)
class BismoHardware:
    """One BISMO overlay instance (Umuroglu, Rasnayake, Sjalander, FPL 2018) on one board.

    A ``dm x dn`` array of dot-product units, each ``dk`` bits wide: per cycle it multiplies
    ``dm`` rows of the left matrix (weights) by ``dn`` columns of the right matrix (activations,
    one per output pixel and image), one ``dk``-long bit-plane slice at a time. Operands live in
    DRAM as packed bit-planes, so a b-bit tensor moves exactly b bits per element.
    """

    board: str
    dm: int  # weight rows (output channels)
    dn: int  # activation columns (output pixels x images)
    dk: int  # bits of the dot product per cycle
    clock_hz: float
    dram_bytes_per_s: float
    batch: int  # the batch HAQ used this board at
    binary_mac_energy_pj: float  # one AND + popcount-accumulate of one bit pair
    dram_energy_pj_per_byte: float
    static_w: float  # board static power while a layer runs


# Edge: Zynq-7020 (28 nm) on the PYNQ-Z1, HAQ's edge target at batch 1.
# - Array: HAQ's hardware table (recalled) gives the edge BISMO 8 x 8 PEs; the BISMO docs
#   (doc/platforms.md) list the largest PYNQ-Z1 build as 8x256x8 @ 200 MHz.
# - Bandwidth: one 64-bit AXI HP port at 200 MHz = 1.6 GB/s, as the BISMO PYNQ-Z1 build (HAQ's
#   table lists 4 x 64-bit ports, recalled and not confirmed in our corpus; the board's DDR3 peak,
#   16-bit @ 1050 MT/s = 2.1 GB/s per the Digilent PYNQ-Z1 reference manual, would cap them).
# - *Assumption:* binary MAC 2.5 pJ: the 16 nm Ultra96 figure (1.04 pJ, below) scaled to 28 nm by
#   feature size and supply squared (28/16 x (1.0 V / 0.85 V)^2 = 2.4x).
# - *Assumption:* DDR3 at 160 pJ/byte (640 pJ per 32-bit DRAM access, Horowitz ISSCC 2014).
# - *Assumption:* 0.15 W static (Xilinx Power Estimator's order of magnitude for a Zynq-7020 PL).
BISMO_EDGE = BismoHardware(
    board="Zynq-7020 (PYNQ-Z1), 28 nm",
    dm=8, dn=8, dk=256, clock_hz=200e6, dram_bytes_per_s=64 / 8 * 200e6, batch=1,
    binary_mac_energy_pj=2.5, dram_energy_pj_per_byte=160.0, static_w=0.15,
)  # fmt: skip

# Cloud: Virtex UltraScale+ VU9P (16 nm, AWS F1), HAQ's cloud target at batch 16 (its cost
# table's file name says batch16).
# - Array and ports: HAQ's hardware table (recalled), 16 x 16 PEs, 4 x 256-bit AXI ports; dk 256 and
#   200 MHz as the PYNQ-Z1 build (*assumption*): 4 x 32 B x 200 MHz = 25.6 GB/s.
# - Binary MAC 1.04 pJ: BISMO's README reports 15.4 binary TOPS on the 16 nm Ultra96 under 8 W
#   (whole board), two ops per binary MAC: 2 x 8 / 15.4 (an upper bound: board power).
# - *Assumption:* DDR4 at 120 pJ/byte (DDR4's lower I/O voltage, 1.2 V against DDR3's 1.5 V,
#   applied to the DDR3 figure: 160 x 1.2 / 1.5 = 128, rounded down for the newer node).
# - *Assumption:* 3 W static (a VU9P is ~20x the logic of a Zynq-7020).
BISMO_CLOUD = BismoHardware(
    board="Virtex UltraScale+ VU9P (AWS F1), 16 nm",
    dm=16, dn=16, dk=256, clock_hz=200e6, dram_bytes_per_s=4 * 32 * 200e6, batch=16,
    binary_mac_energy_pj=1.04, dram_energy_pj_per_byte=120.0, static_w=3.0,
)  # fmt: skip


class BismoModel(CostModel):
    """Bit-serial matrix multiplication overlay; compute scales with ``w_bits * a_bits``.

    A ``w x a``-bit product is ``w * a`` binary (bit-plane) passes, with no padding; per batch
    of B images, ``cycles_l = groups * ceil(N / dm) * ceil(B * M / dn) * ceil(K / dk) * w * a``.
    DRAM moves the weights once per batch and each image's input and output activations (the
    output requantized on chip to this layer's ``a_bits``: *simplification*, the next layer's
    precision is not used), so at batch 16 activations, not weights, dominate most layers'
    traffic (and the DRAM part of their energy).
    ``latency_l = max(compute, dram)`` (double-buffered fetch and execute stages overlap);
    ``energy_l = B * macs * w * a * binary_mac_energy + bytes * dram_energy + static * latency``.
    Latency and energy are for one batch.
    """

    metrics = HW_METRICS

    def __init__(self, name: str, hw: BismoHardware, batch_size: int | None = None) -> None:
        self.name = name
        self.hw = hw
        self.batch_size = hw.batch if batch_size is None else batch_size

    def batch(
        self, layers: Sequence[Layer], w_bits: np.ndarray, a_bits: np.ndarray
    ) -> dict[str, np.ndarray]:
        w, a = _bit_arrays(layers, w_bits, a_bits)
        g, hw, b = _Geometry.of(layers), self.hw, self.batch_size
        tiles = g.groups * -(-g.n // hw.dm) * -(-(g.m * b) // hw.dn) * -(-g.k // hw.dk)
        cycles = tiles * w * a
        moved = (g.params * w + b * (g.in_elems + g.out_elems) * a) / 8.0
        seconds = np.maximum(cycles / hw.clock_hz, moved / hw.dram_bytes_per_s)
        energy_pj = (
            b * g.macs * w * a * hw.binary_mac_energy_pj
            + moved * hw.dram_energy_pj_per_byte
            + seconds * hw.static_w * 1e12
        )
        return {
            "latency_ms": seconds.sum(axis=1) * 1e3,
            "energy_mj": energy_pj.sum(axis=1) / PJ_PER_MJ,
        }


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
        from aqgan_ray.cost_table import TableModel  # it builds on this module

        model = TableModel.load(name.removeprefix("table:"))
    else:
        base, sep, batch_text = name.partition("@")
        if base not in _ANALYTIC:
            raise UserError(
                f"unknown hardware model {base!r}; choose one of {', '.join(HW_MODELS)} "
                f"(NAME@B for batch B), or table:PATH for a CSV/Parquet/APQ-JSON table of "
                f"measured per-layer costs"
            )
        model = _ANALYTIC[base]
        if sep:
            model = _with_batch(model, name, batch_text)
    if layers is not None:
        model.check(layers, bit_choices)
    return model


def _with_batch(model: CostModel, name: str, text: str) -> CostModel:
    """``bismo-edge@16``: the same machine at another batch (per-batch latency and energy)."""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 4096:
        raise UserError(f"--hw {name!r}: the batch after '@' must be an integer in 1..4096")
    if isinstance(model, BitFusionModel):
        return BitFusionModel(model.hw, name, int(text))
    if isinstance(model, BismoModel):
        return BismoModel(name, model.hw, int(text))
    raise UserError(f"--hw {name!r}: {model.name} does not depend on the batch; drop '@{text}'")


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


def uniform_cost(
    model: CostModel, layers: Sequence[Layer], bits: int, metric: str, pinned: bool = False
) -> float:
    """``metric`` of the config with every weight and activation at ``bits`` (the first and
    last layers at 8 bits if ``pinned``: ``config.pin_first_last``)."""
    w = np.full((1, len(layers)), bits, dtype=np.int64)
    a = w
    if pinned:
        w, a = pin_first_last(w, a)
    return float(model.batch(layers, w, a)[metric][0])


def parse_budget(
    text: str,
    model: CostModel,
    layers: Sequence[Layer],
    min_bits: int = 2,
    keep_first_last: bool = False,
) -> Budget:
    """Parse ``--budget METRIC=VALUE``; ``VALUE`` is absolute or ``0.5x`` the all-8-bit cost.

    A budget below the cheapest config (all ``min_bits``, with the first and last layers at 8
    bits under ``keep_first_last``) is refused here: no config can meet it, and a search would
    otherwise spend its whole budget finding that out.
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
    floor = uniform_cost(model, layers, min_bits, metric, keep_first_last)
    if value < floor:
        cheapest = f"all {min_bits}-bit" + (
            " (first, last layers 8-bit)" if keep_first_last else ""
        )
        raise UserError(
            f"--budget {metric}={raw} ({value:.6g}) is below the cheapest config on "
            f"{model.name}: {cheapest} costs {floor:.6g} {metric}; raise the budget to that"
        )
    return Budget(metric, value, amount if relative else None)


def within_budget(costs: np.ndarray, budget: Budget) -> np.ndarray:
    """Boolean mask of costs that meet the budget.

    A 1e-9 relative slack keeps a config whose cost *is* the budget (e.g. all-8-bit under ``1x``)
    inside it even when the two sums were rounded differently.
    """
    return np.asarray(costs, dtype=np.float64) <= budget.value * (1 + 1e-9)
