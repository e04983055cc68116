"""benchmarks/localiser_comparison.py: its box arithmetic on known boxes (no TensorFlow, no timings)."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks/localiser_comparison.py"


@pytest.fixture(scope="module")
def comparison():
    spec = importlib.util.spec_from_file_location("localiser_comparison", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_iou_of_known_boxes(comparison):
    assert comparison.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert comparison.iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching, right edge exclusive
    assert comparison.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert comparison.iou((0, 0, 10, 10), (2, 2, 7, 7)) == pytest.approx(25 / 100)
    assert comparison.iou(None, (0, 0, 10, 10)) == 0.0
    assert comparison.iou((0, 0, 10, 10), None) == 0.0
    assert comparison.iou((3, 3, 3, 8), (3, 3, 3, 8)) == 0.0  # empty boxes


def test_centre_form_round_trip(comparison):
    box = (12, 30, 52, 70)
    values = comparison.to_centre_form(box, 128, 96)
    np.testing.assert_allclose(values, [32 / 128, 50 / 96, 40 / 128, 40 / 96], rtol=1e-6)
    assert tuple(comparison.from_centre_form(values, 128, 96)) == box
    # clipped to the frame, never empty
    assert tuple(comparison.from_centre_form((0.0, 1.0, 0.5, 0.5), 100, 100)) == (0, 75, 25, 100)
    assert tuple(comparison.from_centre_form((0.5, 0.5, 0.0, 0.0), 100, 100)) == (50, 50, 51, 51)


def test_free_square_keeps_clear_of_the_pill(comparison):
    rng = np.random.default_rng(0)
    box, clearance, side = (180, 170, 220, 210), 0.5, 128
    grown = (160, 150, 240, 230)
    for _ in range(200):
        left, top = comparison.free_square(384, box, clearance, side, rng)
        assert 0 <= left <= 384 - side and 0 <= top <= 384 - side
        assert comparison.iou((left, top, left + side, top + side), grown) == 0.0
    assert comparison.free_square(384, (100, 100, 300, 300), clearance, side, rng) is None
