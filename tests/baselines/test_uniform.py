"""Uniform quantization: only widths that fit are tried, widest first, and the sweep stops
once a narrower width scores below the one before it."""

from __future__ import annotations

from baselines.uniform import Uniform

CHOICES = (2, 3, 4, 5, 6, 7, 8)


def _sweep(uniform: Uniform, accuracy: dict[int, float]) -> list[int]:
    tried = []
    while configs := uniform.ask(4):
        assert len(configs) == 1
        tried.append(configs[0].w_bits[0])
        uniform.tell(configs, [accuracy[tried[-1]]])
    return tried


def test_widest_fitting_first_and_stop_after_a_drop(point_at):
    point = point_at("latency_ms=0.6x")
    uniform = Uniform(point)
    widths = [c.w_bits[0] for c in uniform.candidates]
    assert widths == sorted(widths, reverse=True) and 8 not in widths
    assert all(point.fits(c) for c in uniform.candidates)
    assert all(c.w_bits == c.a_bits and len(set(c.w_bits)) == 1 for c in uniform.candidates)
    accuracy = {b: 0.1 * b for b in CHOICES}
    assert _sweep(uniform, accuracy) == widths[:2]


def test_a_rise_at_narrower_width_keeps_the_sweep_going_and_it_resumes(point_at):
    point = point_at("latency_ms=1x")
    accuracy = {8: 0.80, 7: 0.81, 6: 0.79, 5: 0.7, 4: 0.5, 3: 0.2, 2: 0.1}
    assert _sweep(Uniform(point), accuracy) == [8, 7, 6]
    first = Uniform(point)
    first.tell(first.ask(1), [accuracy[8]])
    resumed = Uniform(point)
    resumed.load_state_dict(first.state_dict())
    assert _sweep(resumed, accuracy) == [7, 6]
