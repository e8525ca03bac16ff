"""Cost models against hand arithmetic, plus monotonicity, batching, tables and budgets.

The hand-made network is small enough to price on paper:

* ``conv``: 3x3 conv, 1 -> 4 channels, 8x8 input, stride 1, padding 1 -> 8x8 output.
  params = 4*1*3*3 = 36, macs = 36 * 64 = 2304. GEMM: M = 64 pixels, K = 9, N = 4, groups = 1.
  in_elems = 1*8*8 = 64, out_elems = 4*8*8 = 256.
* ``fc``: linear 256 -> 10. params = macs = 2560. GEMM: M = 1, K = 256, N = 10.
  in_elems = 256, out_elems = 10.

Hardware constants used below (see aqgan_ray/cost.py for their sources):
BitFusion 16 rows x 32 cols, 500 MHz, 12e9 B/s, 0.23 pJ per 8x8 MAC = 0.014375 pJ per brick;
BISMO edge 8x256x8 @ 200 MHz, 1.6e9 B/s; cloud 16x256x16 @ 200 MHz, 25.6e9 B/s; 1.04 pJ per
binary MAC; DRAM 160 pJ/byte everywhere. 1 mJ = 1e9 pJ.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torchvision

from aqgan_ray.config import QuantConfig
from aqgan_ray.cost import (
    HW_MODELS,
    Budget,
    config_costs,
    get_hw_model,
    parse_budget,
    within_budget,
)
from aqgan_ray.errors import UserError
from aqgan_ray.layers import Layer, layer_table

CONV = Layer(
    name="conv",
    kind="conv",
    in_channels=1,
    out_channels=4,
    kernel=3,
    kernel_w=3,
    stride=1,
    groups=1,
    in_h=8,
    in_w=8,
    out_h=8,
    out_w=8,
    params=36,
    macs=2304,
)
FC = Layer(
    name="fc",
    kind="linear",
    in_channels=256,
    out_channels=10,
    kernel=1,
    kernel_w=1,
    stride=0,
    groups=1,
    in_h=1,
    in_w=1,
    out_h=1,
    out_w=1,
    params=2560,
    macs=2560,
)
TINY = [CONV, FC]

# Two configs: all 8-bit, and a mixed one with non-power-of-two widths (3 and 5 bits).
W_BITS = np.array([[8, 8], [3, 2]])
A_BITS = np.array([[8, 8], [5, 4]])


def price(name: str, layers: list[Layer] = TINY) -> dict[str, np.ndarray]:
    return get_hw_model(name).batch(layers, W_BITS, A_BITS)


@pytest.fixture(scope="module")
def mobilenet() -> list[Layer]:
    return layer_table(torchvision.models.mobilenet_v2(num_classes=10), (3, 32, 32))


# ------------------------------------------------------------------ hand-computed values


def test_size_bytes_by_hand() -> None:
    # all 8: (36*8 + 2560*8) / 8 = 36 + 2560 = 2596 bytes
    # mixed: (36*3 + 2560*2) / 8 = (108 + 5120) / 8 = 653.5 bytes
    assert price("size")["size_bytes"].tolist() == [2596.0, 653.5]


def test_bitops_by_hand() -> None:
    # all 8: 2304*8*8 + 2560*8*8 = 147456 + 163840 = 311296
    # mixed: 2304*3*5 + 2560*2*4 = 34560 + 20480 = 55040
    assert price("bitops")["bitops"].tolist() == [311296, 55040]


def test_bitfusion_by_hand() -> None:
    got = price("bitfusion")
    # --- all 8-bit: one MAC per Fusion Unit (16 bricks for an 8x8 multiply).
    # conv: cycles = 64 px * ceil(9/16) * ceil(4/32) = 64 -> 64 / 500e6 = 1.28e-7 s
    #       bytes  = 36 + 64 + 256 = 356 -> 356 / 12e9 = 2.97e-8 s      => compute-bound: 1.28e-7
    # fc:   cycles = 1 * ceil(256/16) * ceil(10/32) = 16 -> 3.2e-8 s
    #       bytes  = 2560 + 256 + 10 = 2826 -> 2826 / 12e9 = 2.355e-7 s  => memory-bound: 2.355e-7
    lat_8 = (1.28e-7 + 2826 / 12e9) * 1e3
    # energy: macs * 16 bricks * 0.23/16 pJ = 0.23 pJ per MAC; DRAM 160 pJ/B
    e_8 = (2304 + 2560) * 0.23 + (356 + 2826) * 160.0  # = 1118.72 + 509120 pJ
    # --- mixed: conv w3 -> padded 4, a5 -> padded 8; fc w2, a4.
    # conv: 4x8 needs (4/2)*(8/2) = 8 bricks -> 2 MACs per FU; K capacity 16*2 = 32
    #       cycles = 64 * ceil(9/32) * 1 = 64 -> 1.28e-7 s
    #       bytes (padded widths) = 36*4/8 + (64 + 256)*8/8 = 18 + 320 = 338 -> 2.8e-8 s  (compute)
    # fc:   2x4 needs 1*2 = 2 bricks -> 8 MACs per FU; K capacity 16*8 = 128
    #       cycles = ceil(256/128) = 2 -> 4e-9 s
    #       bytes = 2560*2/8 + (256 + 10)*4/8 = 640 + 133 = 773 -> 6.44e-8 s        (memory)
    lat_mixed = (1.28e-7 + 773 / 12e9) * 1e3
    brick_pj = 0.23 / 16
    e_mixed = 2304 * 8 * brick_pj + 2560 * 2 * brick_pj + (338 + 773) * 160.0
    assert got["latency_ms"] == pytest.approx([lat_8, lat_mixed], rel=1e-12)
    assert got["energy_mj"] == pytest.approx([e_8 / 1e9, e_mixed / 1e9], rel=1e-12)


def test_bitfusion_pads_operands_to_supported_widths() -> None:
    model = get_hw_model("bitfusion")
    padded = model.batch(TINY, np.array([[3, 2], [5, 3]]), np.array([[5, 3], [7, 4]]))
    exact = model.batch(TINY, np.array([[4, 2], [8, 4]]), np.array([[8, 4], [8, 4]]))
    for metric in model.metrics:
        assert padded[metric].tolist() == exact[metric].tolist()


def test_bitfusion_sixteen_bit_weights_take_two_passes() -> None:
    # conv alone, w16 x a8: 1 MAC per FU, 2 temporal 8-bit passes.
    # cycles = 64 * ceil(9/16) * ceil(4/32) * 2 = 128 -> 2.56e-7 s
    # bytes = 36*16/8 + (64 + 256)*8/8 = 72 + 320 = 392 -> 3.27e-8 s (compute-bound)
    # energy = 2304 * (16/2)*(8/2) bricks * 0.23/16 pJ + 392 * 160 pJ = 1059.84 + 62720 pJ
    got = get_hw_model("bitfusion").batch([CONV], np.array([[16]]), np.array([[8]]))
    assert got["latency_ms"][0] == pytest.approx(128 / 500e6 * 1e3, rel=1e-12)
    assert got["energy_mj"][0] == pytest.approx((1059.84 + 62720) / 1e9, rel=1e-12)


def test_bismo_edge_by_hand() -> None:
    got = price("bismo-edge")
    # tiles = ceil(N/8) * ceil(M/8) * ceil(K/256); cycles = tiles * w * a at 200 MHz; 1.6e9 B/s
    # conv tiles = ceil(4/8) * ceil(64/8) * ceil(9/256) = 1 * 8 * 1 = 8
    # fc   tiles = ceil(10/8) * ceil(1/8) * ceil(256/256) = 2 * 1 * 1 = 2
    # --- all 8-bit
    # conv: 8 * 64 = 512 cycles -> 2.56e-6 s; 356 B -> 2.225e-7 s          (compute-bound)
    # fc:   2 * 64 = 128 cycles -> 6.4e-7 s; 2826 B -> 1.76625e-6 s        (memory-bound)
    lat_8 = (2.56e-6 + 2826 / 1.6e9) * 1e3
    e_8 = (2304 + 2560) * 64 * 1.04 + (356 + 2826) * 160.0
    # --- mixed (no padding on a bit-serial machine)
    # conv: 8 * 3*5 = 120 cycles -> 6e-7 s; bytes = 36*3/8 + 320*5/8 = 13.5 + 200 = 213.5 (compute)
    # fc:   2 * 2*4 = 16 cycles -> 8e-8 s; bytes = 2560*2/8 + 266*4/8 = 640 + 133 = 773 (memory)
    lat_mixed = (6e-7 + 773 / 1.6e9) * 1e3
    e_mixed = (2304 * 15 + 2560 * 8) * 1.04 + (213.5 + 773) * 160.0
    assert got["latency_ms"] == pytest.approx([lat_8, lat_mixed], rel=1e-12)
    assert got["energy_mj"] == pytest.approx([e_8 / 1e9, e_mixed / 1e9], rel=1e-12)


def test_bismo_cloud_by_hand() -> None:
    got = price("bismo-cloud")
    # 16x256x16 @ 200 MHz, 25.6e9 B/s: both layers compute-bound here.
    # conv tiles = ceil(4/16) * ceil(64/16) * 1 = 4; fc tiles = 1 * 1 * 1 = 1
    # all 8: 4*64 + 1*64 = 320 cycles -> 1.6e-6 s   (memory at most 2826 B / 25.6e9 = 1.1e-7 s)
    # mixed: 4*15 + 1*8 = 68 cycles -> 3.4e-7 s      (fc memory 773 / 25.6e9 = 3.0e-8 < 4e-8 s)
    assert got["latency_ms"] == pytest.approx([320 / 200e6 * 1e3, 68 / 200e6 * 1e3], rel=1e-12)
    # Same energy constants as the edge target: energy equals the edge numbers.
    assert got["energy_mj"] == pytest.approx(price("bismo-edge")["energy_mj"], rel=1e-12)


def test_depthwise_maps_badly_onto_wide_arrays() -> None:
    # 3x3 depthwise over 32 channels, 8x8 -> 8x8: K = 9, N = 1, groups = 32.
    dw = Layer("dw", "dwconv", 32, 32, 3, 3, 1, 32, 8, 8, 8, 8, 288, 288 * 64)
    # BitFusion all 8: cycles = 32 groups * 64 px * ceil(9/16) * ceil(1/32) = 2048, although the
    # 512-FU array could do the 18432 MACs in 36 cycles: 1/57 utilization, as HAQ observed.
    got = get_hw_model("bitfusion").batch([dw], np.array([[8]]), np.array([[8]]))
    assert got["latency_ms"][0] == pytest.approx(2048 / 500e6 * 1e3, rel=1e-12)


# ------------------------------------------------------------------ properties


@pytest.mark.parametrize("name", HW_MODELS)
def test_every_metric_is_monotone_in_every_bitwidth(name: str, mobilenet: list[Layer]) -> None:
    model = get_hw_model(name)
    n = len(mobilenet)
    rng = np.random.default_rng(0)
    w = rng.integers(2, 8, size=(20, n))  # 2..7, so +1 stays within 2..8
    a = rng.integers(2, 8, size=(20, n))
    base = model.batch(mobilenet, w, a)
    bumps_w, bumps_a = [], []
    for layer in range(n):
        for which in ("w", "a"):
            w2, a2 = w.copy(), a.copy()
            (w2 if which == "w" else a2)[:, layer] += 1
            bumps_w.append(w2)
            bumps_a.append(a2)
    bumped = model.batch(mobilenet, np.concatenate(bumps_w), np.concatenate(bumps_a))
    for metric in model.metrics:
        before = np.tile(base[metric], 2 * n)
        assert (bumped[metric] >= before).all(), f"{name}.{metric} decreased when a bit was raised"


def test_batch_agrees_with_single_configs(mobilenet: list[Layer]) -> None:
    names = [ly.name for ly in mobilenet]
    rng = np.random.default_rng(1)
    w = rng.integers(2, 9, size=(10, len(names)))
    a = rng.integers(2, 9, size=(10, len(names)))
    batched = {name: get_hw_model(name).batch(mobilenet, w, a) for name in HW_MODELS}
    for i in range(len(w)):
        single = config_costs(mobilenet, QuantConfig(tuple(names), tuple(w[i]), tuple(a[i])))
        assert single["size_bytes"] == pytest.approx(batched["size"]["size_bytes"][i], rel=1e-12)
        assert single["bitops"] == batched["bitops"]["bitops"][i]
        for hw in ("bitfusion", "bismo-edge", "bismo-cloud"):
            for metric, value in single[hw].items():
                assert value == pytest.approx(batched[hw][metric][i], rel=1e-12)


def test_config_costs_is_the_contract_object_and_json_ready() -> None:
    config = QuantConfig(("conv", "fc"), (3, 2), (5, 4))
    cost = config_costs(TINY, config)
    assert set(cost) == {"size_bytes", "bitops", "bitfusion", "bismo-edge", "bismo-cloud"}
    assert cost["size_bytes"] == 653.5 and cost["bitops"] == 55040
    assert set(cost["bismo-edge"]) == {"latency_ms", "energy_mj"}
    assert json.loads(json.dumps(cost)) == cost
    with pytest.raises(UserError, match="do not match"):
        config_costs(TINY, QuantConfig(("a", "b"), (8, 8), (8, 8)))


def test_single_config_may_be_a_1d_array() -> None:
    got = get_hw_model("size").batch(TINY, np.array([8, 8]), np.array([8, 8]))
    assert got["size_bytes"].tolist() == [2596.0]


def test_bad_bit_arrays_are_user_errors() -> None:
    model = get_hw_model("bismo-edge")
    with pytest.raises(UserError, match=r"shape \[n_configs, 2\]"):
        model.batch(TINY, np.array([[8, 8, 8]]), np.array([[8, 8, 8]]))
    with pytest.raises(UserError, match="1..16"):
        model.batch(TINY, np.array([[0, 8]]), np.array([[8, 8]]))
    with pytest.raises(UserError, match="integers"):
        model.batch(TINY, np.array([[8.0, 8.0]]), np.array([[8, 8]]))


def test_unknown_model_lists_the_valid_ones() -> None:
    with pytest.raises(UserError) as err:
        get_hw_model("tpu")
    for name in (*HW_MODELS, "table:PATH"):
        assert name in str(err.value)


# ------------------------------------------------------------------ lookup tables


def grid_table(layer_ids: list, bits: tuple[int, ...] = (2, 4, 8)) -> pd.DataFrame:
    """latency_ms = 100*layer + 10*w + a and energy_mj = w*a/1000, easy to sum by hand."""
    rows = [
        {
            "layer": lid,
            "w_bits": w,
            "a_bits": a,
            "latency_ms": 100.0 * pos + 10 * w + a,
            "energy_mj": w * a / 1000,
        }
        for pos, lid in enumerate(layer_ids)
        for w in bits
        for a in bits
    ]
    return pd.DataFrame(rows)


def test_csv_table_by_layer_name(tmp_path) -> None:
    path = tmp_path / "measured.csv"
    grid_table(["conv", "fc"]).to_csv(path, index=False)
    model = get_hw_model(f"table:{path}", layers=TINY, bit_choices=(2, 4, 8))
    assert model.metrics == ("latency_ms", "energy_mj")
    got = model.batch(TINY, np.array([[8, 2], [4, 4]]), np.array([[2, 4], [8, 2]]))
    # config 0: conv (0 + 80 + 2) + fc (100 + 20 + 4) = 206 ms; energy (16 + 8) / 1000
    # config 1: conv (0 + 40 + 8) + fc (100 + 40 + 2) = 190 ms; energy (32 + 8) / 1000
    assert got["latency_ms"].tolist() == [206.0, 190.0]
    assert got["energy_mj"] == pytest.approx([0.024, 0.040])


def test_parquet_table_by_layer_index(tmp_path) -> None:
    path = tmp_path / "measured.parquet"
    grid_table([0, 1]).drop(columns="energy_mj").to_parquet(path)
    model = get_hw_model(f"table:{path}", layers=TINY, bit_choices=(2, 4, 8))
    assert model.metrics == ("latency_ms",)
    got = model.batch(TINY, np.array([8, 8]), np.array([8, 8]))
    assert got["latency_ms"].tolist() == [(80 + 8) + (100 + 80 + 8)]


def test_table_missing_row_is_reported_at_load(tmp_path) -> None:
    frame = grid_table(["conv", "fc"])
    frame = frame[~((frame.layer == "fc") & (frame.w_bits == 4) & (frame.a_bits == 8))]
    path = tmp_path / "holes.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(
        UserError, match=r"no row for layer 'fc' \(index 1\) with w_bits=4, a_bits=8"
    ):
        get_hw_model(f"table:{path}", layers=TINY, bit_choices=(2, 4, 8))
    # Pricing a bitwidth the table never measured is the same clear error, not a KeyError.
    model = get_hw_model(f"table:{path}")
    with pytest.raises(UserError, match="w_bits=3, a_bits=8"):
        model.batch(TINY, np.array([[3, 8]]), np.array([[8, 8]]))


def test_table_file_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        get_hw_model(f"table:{tmp_path / 'nope.csv'}")
    odd = tmp_path / "costs.txt"
    odd.write_text("layer,w_bits,a_bits,latency_ms\n")
    with pytest.raises(UserError, match=r"\.csv or \.parquet"):
        get_hw_model(f"table:{odd}")
    no_bits = tmp_path / "no_bits.csv"
    pd.DataFrame({"layer": ["conv"], "latency_ms": [1.0]}).to_csv(no_bits, index=False)
    with pytest.raises(UserError, match="lacks column"):
        get_hw_model(f"table:{no_bits}")
    no_metric = tmp_path / "no_metric.csv"
    pd.DataFrame({"layer": ["conv"], "w_bits": [8], "a_bits": [8]}).to_csv(no_metric, index=False)
    with pytest.raises(UserError, match="no metric column"):
        get_hw_model(f"table:{no_metric}")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match="cannot read"):
        get_hw_model(f"table:{corrupt}")
    other_model = tmp_path / "other.csv"
    grid_table(["stem", "head"]).to_csv(other_model, index=False)
    with pytest.raises(UserError, match="does not have"):
        get_hw_model(f"table:{other_model}", layers=TINY)


# ------------------------------------------------------------------ budgets


def test_absolute_budget() -> None:
    budget = parse_budget("latency_ms=0.004", get_hw_model("bismo-edge"), TINY)
    assert budget == Budget("latency_ms", 0.004, None)


def test_relative_budget_is_a_fraction_of_all_8_bit() -> None:
    budget = parse_budget("size_bytes=0.5x", get_hw_model("size"), TINY)
    assert budget == Budget("size_bytes", 0.5 * 2596, 0.5)


def test_within_budget_includes_the_boundary() -> None:
    budget = Budget("size_bytes", 1298.0, 0.5)
    mask = within_budget(np.array([653.5, 1298.0, 1298.5]), budget)
    assert mask.tolist() == [True, True, False]


def test_budget_below_all_min_bits_says_the_minimum() -> None:
    size = get_hw_model("size")
    # all 2-bit: (36 + 2560) * 2 / 8 = 649 bytes
    with pytest.raises(UserError, match="all 2-bit costs 649"):
        parse_budget("size_bytes=100", size, TINY)
    with pytest.raises(UserError, match="all 2-bit costs 649"):
        parse_budget("size_bytes=0.2x", size, TINY)  # 519.2 < 649
    # with 4-bit minimum: 1298 bytes, so 0.4x (1038.4) is now too small
    with pytest.raises(UserError, match="all 4-bit costs 1298"):
        parse_budget("size_bytes=0.4x", size, TINY, min_bits=4)


def test_unknown_metric_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match="unknown; choose one of size_bytes, bitops"):
        parse_budget("flops=3", get_hw_model("bitops"), TINY)


def test_metric_the_model_lacks_says_what_it_provides() -> None:
    with pytest.raises(UserError, match="size does not provide latency_ms; it provides size_bytes"):
        parse_budget("latency_ms=1", get_hw_model("size"), TINY)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("latency_ms", "not METRIC=VALUE"),
        ("=3", "not METRIC=VALUE"),
        ("latency_ms=", "not METRIC=VALUE"),
        ("latency_ms=fast", "not a number"),
        ("latency_ms=0.5y", "not a number"),
        ("latency_ms=0", "positive"),
        ("latency_ms=-1", "positive"),
        ("latency_ms=nanx", "positive"),
    ],
)
def test_malformed_budget(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_budget(text, get_hw_model("bitfusion"), TINY)
