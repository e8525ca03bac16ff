"""Cost models against hand arithmetic, plus monotonicity, batching, tables and budgets.

The hand-made network is small enough to price on paper:

* ``conv``: 3x3 conv, 1 -> 4 channels, 8x8 input, stride 1, padding 1 -> 8x8 output.
  params = 4*1*3*3 = 36, macs = 36 * 64 = 2304. GEMM: M = 64 pixels, K = 9, N = 4, groups = 1.
  in_elems = 1*8*8 = 64, out_elems = 4*8*8 = 256.
* ``fc``: linear 256 -> 10. params = macs = 2560. GEMM: M = 1, K = 256, N = 10.
  in_elems = 256, out_elems = 10.

Hardware constants used below (see aqgan_ray/cost.py for their sources): Bit Fusion 16 rows x
32 cols at 500 MHz with its fitted constants read from ``BitFusionHardware``; BISMO edge 8x256x8
@ 200 MHz, 1.6e9 B/s, batch 1; cloud 16x256x16 @ 200 MHz, 25.6e9 B/s, batch 16. 1 mJ = 1e9 pJ.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torchvision

from aqgan_ray.config import QuantConfig
from aqgan_ray.cost import (
    HW_MODELS,
    BitFusionHardware,
    BitFusionModel,
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
    hw = BitFusionHardware()
    s, ov, pre, bw = (
        hw.dense_compute_scale,
        hw.overlap_loss,
        hw.weight_preload,
        hw.dram_bits_per_cycle,
    )

    def cycles(compute: float, weight_bits: float, moved_bits: float) -> float:
        dram = moved_bits / bw
        return (
            max(compute, dram)
            + ov * min(compute, dram)
            + pre * weight_bits / 192
            + hw.layer_overhead_cycles
        )

    # --- all 8-bit: pf = 1 MAC per Fusion Unit. Partial sums cross DRAM as 32 bits, out and back.
    # conv: compute = 64 px * ceil(1/16) * 9 kernel positions * ceil(4/32) = 576 (x scale)
    #       bits = 36*8 weights + 64*8 input + 2*32*256 output = 288 + 512 + 16384 = 17184
    # fc:   compute = 1 * ceil(256/16) * 1 * ceil(10/32) = 16; bits = 20480 + 2048 + 640 = 23168
    c8 = cycles(576 * s, 288, 17184) + cycles(16 * s, 20480, 23168)
    e8 = c8 * hw.dense_energy_pj_per_cycle + (17184 + 23168) * hw.dram_energy_pj_per_bit
    # --- mixed: conv w3 a5 compute as 4 x 8 (pf = 1 * 2), fc w2 a4 as pf = 2 * 4 = 8; DRAM
    # moves the real bits. conv: 576 (ceil(1/32) = 1 still); bits = 108 + 320 + 16384 = 16812
    # fc: compute = ceil(256/128) = 2; bits = 5120 + 1024 + 640 = 6784
    cm = cycles(576 * s, 108, 16812) + cycles(2 * s, 5120, 6784)
    em = cm * hw.dense_energy_pj_per_cycle + (16812 + 6784) * hw.dram_energy_pj_per_bit
    got = price("bitfusion")
    assert got["latency_ms"] == pytest.approx([c8 / 500e6 * 1e3, cm / 500e6 * 1e3], rel=1e-12)
    assert got["energy_mj"] == pytest.approx([e8 / 1e9, em / 1e9], rel=1e-12)


def test_bitfusion_computes_padded_widths_but_moves_real_bits() -> None:
    # With DRAM free and no fixed costs, only compute is left: 3 bits cost what 4 do, 5-7 what 8.
    compute_only = dataclasses.replace(
        BitFusionHardware(), dram_bits_per_cycle=1e30, weight_preload=0.0, layer_overhead_cycles=0.0
    )
    model = BitFusionModel(compute_only)
    padded = model.batch(TINY, np.array([[3, 2], [5, 3]]), np.array([[5, 3], [7, 4]]))
    exact = model.batch(TINY, np.array([[4, 2], [8, 4]]), np.array([[8, 4], [8, 4]]))
    assert padded["latency_ms"] == pytest.approx(exact["latency_ms"], rel=1e-12)
    # The real model also pays for the bits it moves: 7 bits cost less than 8.
    real = get_hw_model("bitfusion").batch(
        TINY, np.array([[7, 7], [8, 8]]), np.array([[7, 7], [8, 8]])
    )
    assert real["energy_mj"][0] < real["energy_mj"][1]


def test_bitfusion_sixteen_bit_weights_take_two_passes() -> None:
    # conv alone, w16 x a8: 1 MAC per FU, 2 temporal 8-bit passes: compute = 576 * scale * 2.
    hw = BitFusionHardware()
    got = BitFusionModel(dataclasses.replace(hw, dram_bits_per_cycle=1e30, weight_preload=0.0))
    cycles = 576 * hw.dense_compute_scale * 2 + hw.layer_overhead_cycles
    lat = got.batch([CONV], np.array([[16]]), np.array([[8]]))["latency_ms"][0]
    assert lat == pytest.approx(cycles / 500e6 * 1e3, rel=1e-12)


def test_bismo_edge_by_hand() -> None:
    got = price("bismo-edge")
    # batch 1; tiles = ceil(N/8) * ceil(M/8) * ceil(K/256); cycles = tiles * w * a at 200 MHz;
    # 1.6e9 B/s. conv tiles = 1 * 8 * 1 = 8; fc tiles = ceil(10/8) * ceil(1/8) * 1 = 2
    # --- all 8-bit
    # conv: 8 * 64 = 512 cycles -> 2.56e-6 s; 356 B -> 2.225e-7 s          (compute-bound)
    # fc:   2 * 64 = 128 cycles -> 6.4e-7 s; 2826 B -> 1.76625e-6 s        (memory-bound)
    lat_8 = 2.56e-6 + 2826 / 1.6e9
    # 2.5 pJ per binary MAC (28 nm), 160 pJ/B DDR3, 0.15 W static while the layers run
    e_8 = (2304 + 2560) * 64 * 2.5 + (356 + 2826) * 160.0 + lat_8 * 0.15e12
    # --- mixed (no padding on a bit-serial machine)
    # conv: 8 * 3*5 = 120 cycles -> 6e-7 s; bytes = 36*3/8 + 320*5/8 = 13.5 + 200 = 213.5 (compute)
    # fc:   2 * 2*4 = 16 cycles -> 8e-8 s; bytes = 2560*2/8 + 266*4/8 = 640 + 133 = 773 (memory)
    lat_mixed = 6e-7 + 773 / 1.6e9
    e_mixed = (2304 * 15 + 2560 * 8) * 2.5 + (213.5 + 773) * 160.0 + lat_mixed * 0.15e12
    assert got["latency_ms"] == pytest.approx([lat_8 * 1e3, lat_mixed * 1e3], rel=1e-12)
    assert got["energy_mj"] == pytest.approx([e_8 / 1e9, e_mixed / 1e9], rel=1e-12)


def test_bismo_cloud_by_hand_at_batch_16() -> None:
    got = price("bismo-cloud")
    # 16x256x16 @ 200 MHz, 25.6e9 B/s, a batch of 16 images (M = 16 x pixels).
    # conv tiles = ceil(4/16) * ceil(1024/16) * 1 = 64; fc tiles = 1 * ceil(16/16) * 1 = 1
    # all 8: conv 4096 cycles -> 2.048e-5 s, bytes 36 + 16*320 = 5156 -> 2.0e-7 s   (compute)
    #        fc 64 cycles -> 3.2e-7 s, bytes 2560 + 16*266 = 6816 -> 2.6625e-7 s      (compute)
    lat_8 = 2.048e-5 + 3.2e-7
    # 1.04 pJ per binary MAC (16 nm), 120 pJ/B DDR4, 3 W static
    e_8 = 16 * (2304 + 2560) * 64 * 1.04 + (5156 + 6816) * 120.0 + lat_8 * 3e12
    assert got["latency_ms"][0] == pytest.approx(lat_8 * 1e3, rel=1e-12)
    assert got["energy_mj"][0] == pytest.approx(e_8 / 1e9, rel=1e-12)
    # The two BISMO machines price energy differently (they used to be identical).
    assert not np.allclose(got["energy_mj"], price("bismo-edge")["energy_mj"], rtol=0.01)


def test_batch_16_makes_activations_not_weights_dominate_traffic() -> None:
    # fc moves 2560 weight elements against 266 activation elements per image: at batch 1
    # halving the weights saves more DRAM energy than halving the activations; at batch 16 the
    # activations cross DRAM 16 times (4256 elements) and the order flips.
    w8a4, w4a8 = np.array([[8]]), np.array([[4]])
    for name, cheaper in (("bismo-cloud@1", "w4a8"), ("bismo-cloud", "w8a4")):
        model = get_hw_model(name)
        e = {
            "w8a4": model.batch([FC], w8a4, w4a8)["energy_mj"][0],
            "w4a8": model.batch([FC], w4a8, w8a4)["energy_mj"][0],
        }
        assert min(e, key=e.get) == cheaper, (name, e)
    assert get_hw_model("bismo-cloud").batch_size == 16
    assert get_hw_model("bismo-edge").batch_size == 1


def test_batch_suffix() -> None:
    assert get_hw_model("bitfusion@4").batch_size == 4
    assert get_hw_model("bitfusion@4").name == "bitfusion@4"
    one = get_hw_model("bismo-edge").batch([CONV], np.array([[8]]), np.array([[8]]))
    four = get_hw_model("bismo-edge@4").batch([CONV], np.array([[8]]), np.array([[8]]))
    assert four["latency_ms"][0] > one["latency_ms"][0]
    for bad, match in (
        ("bismo-edge@0", "1..4096"),
        ("bismo-edge@x", "1..4096"),
        ("size@2", "batch"),
        ("bitfusion@\u00b2", "1..4096"),
    ):
        with pytest.raises(UserError, match=match):
            get_hw_model(bad)


def test_depthwise_maps_badly_onto_wide_arrays() -> None:
    # 3x3 depthwise over 32 channels, 8x8 -> 8x8: K = 9, N = 1, groups = 32.
    dw = Layer("dw", "dwconv", 32, 32, 3, 3, 1, 32, 8, 8, 8, 8, 288, 288 * 64)
    # BISMO edge, binary: tiles = 32 groups * ceil(1/8) * ceil(64/8) * ceil(9/256) = 256 cycles,
    # although the 8x8x256 array could do the 18432 binary MACs in 2 cycles, as HAQ observed.
    got = get_hw_model("bismo-edge").batch([dw], np.array([[1]]), np.array([[1]]))
    assert got["latency_ms"][0] == pytest.approx(256 / 200e6 * 1e3, rel=1e-12)


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
