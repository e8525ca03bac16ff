"""Lookup tables: keyed by layer (one model) or by layer shape (any model they cover),
including APQ's Bit Fusion JSON as it is; malformed files are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torchvision

from aqgan_ray.calibrate import BITFUSION_TABLE
from aqgan_ray.cost import get_hw_model
from aqgan_ray.cost_table import layer_shape
from aqgan_ray.errors import UserError
from aqgan_ray.layers import Layer, layer_table
from tests.test_cost import CONV, FC, TINY


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
        UserError, match=r"lacks 1 entry this needs: fc W4A8; it covers bits \[2, 4, 8\]"
    ):
        get_hw_model(f"table:{path}", layers=TINY, bit_choices=(2, 4, 8))
    # Pricing a bitwidth the table never measured is the same clear error, not a KeyError.
    model = get_hw_model(f"table:{path}")
    with pytest.raises(UserError, match="lacks 1 entry this needs: conv W3A8;"):
        model.batch(TINY, np.array([[3, 8]]), np.array([[8, 8]]))


def test_table_file_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        get_hw_model(f"table:{tmp_path / 'nope.csv'}")
    odd = tmp_path / "costs.txt"
    odd.write_text("layer,w_bits,a_bits,latency_ms\n")
    with pytest.raises(UserError, match=r"\.csv, \.parquet or \.json"):
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


# ------------------------------------------------------------------ tables keyed by shape

# CONV is (1, 4, 8, 3, 1, 1, 1): 3x3, padding 1 keeps 8x8; FC is (256, 10, 1, 1, 1, 0, 1).
CONV_SHAPE, FC_SHAPE = (1, 4, 8, 3, 1, 1, 1), (256, 10, 1, 1, 1, 0, 1)


def apq_json(shapes: dict[tuple, float], bits=(4, 8)) -> dict:
    """APQ's format: latency = base + 10*w + a, energy = w*a/1000 per shape."""
    out = {"head": {"latency": 9.0, "energy": 9.0}}
    for shape, base in shapes.items():
        for w in bits:
            for a in bits:
                key = f"({', '.join(map(str, shape))})-W{w}A{a}"
                out[key] = {"latency": base + 10 * w + a, "energy": w * a / 1000}
    return out


def test_layer_shape_derives_padding() -> None:
    assert layer_shape(CONV) == CONV_SHAPE
    assert layer_shape(FC) == FC_SHAPE
    strided = Layer("s", "conv", 16, 32, 3, 3, 2, 1, 56, 56, 28, 28, 4608, 4608 * 784)
    assert layer_shape(strided) == (16, 32, 56, 3, 2, 1, 1)


def test_apq_json_by_shape_serves_every_model_it_covers(tmp_path) -> None:
    path = tmp_path / "lut.json"
    path.write_text(json.dumps(apq_json({CONV_SHAPE: 0.0, FC_SHAPE: 100.0})))
    model = get_hw_model(f"table:{path}", layers=TINY, bit_choices=(4, 8))
    assert model.metrics == ("latency_ms", "energy_mj")
    got = model.batch(TINY, np.array([[8, 4]]), np.array([[4, 8]]))
    # conv (0 + 80 + 4) + fc (100 + 40 + 8) = 232 ms; energy (32 + 32) / 1000
    assert got["latency_ms"].tolist() == [232.0]
    assert got["energy_mj"] == pytest.approx([0.064])
    # Another model made of the same shapes (conv twice, renamed) is priced by the same table.
    twice = [CONV, Layer(**{**CONV.to_dict(), "name": "again"}), FC]
    got = model.batch(twice, np.array([[8, 8, 8]]), np.array([[8, 8, 8]]))
    assert got["latency_ms"].tolist() == [88.0 + 88.0 + 188.0]


def test_csv_by_shape(tmp_path) -> None:
    rows = [
        dict(zip(("in_channels", "out_channels", "input_size", "kernel", "stride", "padding",
                  "groups"), shape, strict=True), w_bits=w, a_bits=a, latency_ms=base + w)
        for shape, base in ((CONV_SHAPE, 0.0), (FC_SHAPE, 100.0))
        for w in (4, 8)
        for a in (4, 8)
    ]  # fmt: skip
    path = tmp_path / "shapes.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    model = get_hw_model(f"table:{path}", layers=TINY, bit_choices=(4, 8))
    assert model.batch(TINY, np.array([8, 4]), np.array([8, 8]))["latency_ms"].tolist() == [112.0]


def test_missing_shapes_and_bits_are_named_up_front(tmp_path) -> None:
    path = tmp_path / "lut.json"
    path.write_text(json.dumps(apq_json({CONV_SHAPE: 0.0})))
    with pytest.raises(UserError, match=r"no entry for 1 of the model's 2 layers.*\(256, 10, 1"):
        get_hw_model(f"table:{path}", layers=TINY, bit_choices=(4, 8))
    path.write_text(json.dumps(apq_json({CONV_SHAPE: 0.0, FC_SHAPE: 1.0})))
    # Every lacking entry is listed (up to 8, then a count).
    with pytest.raises(
        UserError,
        match=r"lacks 10 entries this needs: \(1, 4, 8, 3, 1, 1, 1\) W2A2; "
        r".* and 2 more; it covers bits \[4, 8\]",
    ):
        get_hw_model(f"table:{path}", layers=TINY, bit_choices=(2, 4, 8))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "cannot read"),
        (b"[1, 2]", "JSON object"),
        (b'{"(1, 4, 8)-W8A8": {"latency": 1}}', "is not"),
        (b'{"(1, 4, 8, 3, 1, 1, 1)-W8A8": {"latency": NaN}}', "non-finite"),
        (b'{"(1, 4, 8, 3, 1, 1, 1)-W99A8": {"latency": 1}}', "within 1..16"),
        (b'{"(1, 4, 8, 3, 1, 1, 1)-W99999999999999999999A8": {"latency": 1}}', "within 1..16"),
        (b'{"(1, 4, 8, 3, 1, 1, 1)-W8A8": {"latency": Infinity}}', "non-finite"),
        (b'{"(1, 4, 8, 3, 1, 1, 1)-W8A8": {"latency": 1e400}}', "non-finite"),
        (b'{"(1, 4, 8, 3, 1, 1, 1)-W8A8": {"latency": 1}}\xff', "cannot read"),
        (b'{"(1, 4, 8, 3, 1, 1, 1)-W8A8": {"speed": 1}}', "needs 'latency'"),
        (b'{"head": {"latency": 1}}', "no layer entries"),
        (b'{"(1, 4, 8, 3, 1, 1, 1)-W8A8": {"latency": true}}', "has latency True"),
        (
            b'{"(1, 4, 8, 3, 1, 1, 1)-W8A8": {"latency": 1}, "(1, 4, 8, 3, 1, 1, 1)-W8A8": '
            b'{"latency": 2}}',
            "appears more than once",
        ),
        (b'{"(1, 4, 8, 3, 0, 1, 1)-W8A8": {"latency": 1}}', "is not a convolution"),
        (b'{"(1, 4, 8, 3, 1, 1, 3)-W8A8": {"latency": 1}}', "is not a convolution"),
    ],
)
def test_malformed_json_is_one_line(tmp_path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(UserError, match=match) as err:
        get_hw_model(f"table:{path}")
    assert "\n" not in str(err.value)


def test_duplicate_shape_rows_are_refused(tmp_path) -> None:
    row = dict(in_channels=1, out_channels=4, input_size=8, kernel=3, stride=1, padding=1,
               groups=1, w_bits=8, a_bits=8, latency_ms=1.0)  # fmt: skip
    path = tmp_path / "dup.csv"
    pd.DataFrame([row, row]).to_csv(path, index=False)
    with pytest.raises(UserError, match="more than once"):
        get_hw_model(f"table:{path}")


def test_apq_bitfusion_table_prices_mobilenet_v2_where_it_covers_it() -> None:
    # torchvision's MobileNetV2 at 224: its stem, its first block's 32-channel layers and
    # its 1x1 head are outside APQ's search space (APQ keeps them as 'head' / 'tail').
    mobilenet = layer_table(torchvision.models.mobilenet_v2(), (3, 224, 224))
    name = f"table:{BITFUSION_TABLE}"
    with pytest.raises(UserError, match=r"missing \d+ shape\(s\): \(3, 32, 224, 3, 2, 1, 1\)"):
        get_hw_model(name, layers=mobilenet, bit_choices=(6, 8))
    table = get_hw_model(name)
    covered = [ly for ly in mobilenet if layer_shape(ly) in set(table.frame.groupby(
        ["in_channels", "out_channels", "input_size", "kernel", "stride", "padding", "groups"]
    ).groups)]  # fmt: skip
    assert len(covered) >= 20
    get_hw_model(name, layers=covered, bit_choices=(6, 8))
    eights = np.full((1, len(covered)), 8)
    priced = table.batch(covered, eights, eights)
    assert priced["latency_ms"][0] > 0 and priced["energy_mj"][0] > 0


@pytest.mark.parametrize(
    ("column", "value"), [("w_bits", "inf"), ("in_channels", "1e30"), ("kernel", "nan")]
)
def test_non_finite_or_absurd_numbers_are_one_line(tmp_path, column, value) -> None:
    row = dict(in_channels=1, out_channels=4, input_size=8, kernel=3, stride=1, padding=1,
               groups=1, w_bits=8, a_bits=8, latency_ms=1.0)  # fmt: skip
    frame = pd.DataFrame([row]).astype(object)
    frame.loc[0, column] = value
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(UserError, match=f"column {column} must hold integers within"):
        get_hw_model(f"table:{path}")


def test_a_config_needs_only_the_entries_it_uses(tmp_path) -> None:
    from aqgan_ray.config import QuantConfig
    from aqgan_ray.session import costs_of

    # Only W4A4 and W4A8 measured: a W4/A8 config is priced; a W8/A8 one names what it lacks.
    path = tmp_path / "lut.json"
    entries = apq_json({CONV_SHAPE: 0.0, FC_SHAPE: 100.0}, bits=(4,))
    for shape in (CONV_SHAPE, FC_SHAPE):
        entries[f"({', '.join(map(str, shape))})-W4A8"] = {"latency": 1.0, "energy": 0.1}
    path.write_text(json.dumps(entries))
    names = tuple(ly.name for ly in TINY)
    priced = costs_of([f"table:{path}"], TINY, QuantConfig(names, (4, 4), (8, 8)))
    assert priced[f"table:{path}"]["latency_ms"] == 2.0
    with pytest.raises(UserError, match="lacks 2 entries this needs"):
        costs_of([f"table:{path}"], TINY, QuantConfig(names, (8, 8), (8, 8)))


@pytest.mark.parametrize(
    ("column", "value", "match"),
    [
        ("latency_ms", float("inf"), "latency_ms has empty, non-numeric, non-finite"),
        ("w_bits", float("inf"), "w_bits must hold integers within 1..16"),
        ("w_bits", 2**40, r"w_bits must hold integers within 1\.\.16 \(bit widths\), but it holds"),
        ("a_bits", 0, "a_bits must hold integers within 1..16"),
        ("a_bits", 4.5, "fractional"),
        ("w_bits", True, "true/false"),
        ("latency_ms", True, "latency_ms has"),
    ],
)
def test_bad_numbers_in_a_layer_table_are_refused_before_allocating(
    tmp_path, column, value, match
) -> None:
    """Bits index the dense lookup array, so a huge or non-finite one must fail at load."""
    frame = grid_table(["conv", "fc"]).astype({column: object})
    frame.loc[0, column] = value
    if isinstance(value, bool):  # a Parquet column of bools, as a user's tool may write it
        frame[column] = True
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path)
    with pytest.raises(UserError, match=match) as err:
        get_hw_model(f"table:{path}", layers=TINY)
    assert "\n" not in str(err.value)


def test_a_csv_table_that_is_not_utf8(tmp_path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes("layer,w_bits,a_bits,latency_ms\nconv\xe9,8,8,1\n".encode("latin-1"))
    with pytest.raises(UserError, match="cannot read cost table"):
        get_hw_model(f"table:{path}")
