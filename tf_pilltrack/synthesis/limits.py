"""Bounds of the synthetic data set's arguments and their checks."""

from __future__ import annotations

import numpy as np

MAX_CLASSES = 10_000  # class names carry four digits
MAX_IMAGES_PER_CLASS = 1_000  # image names carry three digits
MIN_PHOTO_SIZE = 32
MAX_PHOTO_SIZE = 1024


def check_count(name: str, value, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"within [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value}")

