"""Bit Fusion against its own simulator: the fit reproduces the constants in cost.py and meets
issue 18's bar on shapes it never saw."""

from __future__ import annotations

import dataclasses

import pytest

from aqgan_ray import calibrate
from aqgan_ray.cost import BitFusionHardware, BitFusionModel


@pytest.fixture(scope="module")
def table():
    frame = calibrate.load_shape_table(calibrate.BITFUSION_TABLE).frame
    return frame, calibrate.held_out(frame)


def test_refitting_reproduces_the_constants_in_cost_py(table) -> None:
    frame, held = table
    fitted = calibrate.rounded(calibrate.fit_bitfusion(frame, held), digits=3)
    shipped = calibrate.rounded(BitFusionHardware(), digits=3)
    assert dataclasses.asdict(fitted) == pytest.approx(dataclasses.asdict(shipped), rel=0.01)


def test_calibrated_bitfusion_agrees_with_its_simulator_on_held_out_shapes(table) -> None:
    frame, held = table
    figures = calibrate.figures(frame, calibrate.predict(BitFusionModel(), frame), held)
    held_rows = figures[figures.split == "held-out"].set_index("metric")
    assert set(held_rows.index) == {"latency_ms", "energy_mj"}
    assert held_rows.loc["latency_ms", "shapes"] == 195  # a quarter of 779 shapes
    for metric, row in held_rows.iterrows():
        assert row.spearman >= 0.95, metric
        assert 0.8 <= row.median_ratio <= 1.25, metric
        assert row.w4a4_w8a8_ours == pytest.approx(row.w4a4_w8a8_theirs, rel=0.10), metric
