"""Timing a callable, as the budget check and the benchmark report it: median, p95 and
interquartile range of repeated calls after untimed warm-up calls."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

REPEATS = 200  # timed invocations per model and runtime (after 10 untimed)


def time_invocations(invoke: Callable[[], None], repeats: int = REPEATS) -> dict:
    """Median, p95 and spread (interquartile range) of `invoke` in milliseconds."""
    for _ in range(10):
        invoke()
    samples = np.empty(repeats)
    for index in range(repeats):
        start = time.perf_counter()
        invoke()
        samples[index] = (time.perf_counter() - start) * 1000.0
    return {
        "median_ms": float(np.median(samples)),
        "p95_ms": float(np.percentile(samples, 95)),
        "iqr_ms": float(np.percentile(samples, 75) - np.percentile(samples, 25)),
        "repeats": repeats,
    }
