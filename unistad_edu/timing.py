"""Timing helpers for benchmarks: a ratio against a baseline measured in the same run is the only speed figure
that survives a shared, noisy machine, so every benchmark times its candidates **interleaved** (a, b, a, b, ...)
and reports medians.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable


def rate(fn: Callable[[], object], n_items: int) -> float:
    """Items per second of one call of ``fn`` that handles ``n_items`` items."""
    t = time.perf_counter()
    fn()
    return n_items / (time.perf_counter() - t)


def interleaved(
    fns: dict[str, Callable[[], object]], n_items: int, repeats: int
) -> dict[str, float]:
    """Items/s of each fn, median of ``repeats`` interleaved rounds (after one warm-up call each)."""
    for fn in fns.values():
        fn()
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            rates[k].append(rate(fn, n_items))
    return {k: statistics.median(v) for k, v in rates.items()}
