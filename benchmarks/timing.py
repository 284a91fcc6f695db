"""Timers and the statistics every latency figure is reported with.

Figures are milliseconds. A CPU run is timed with `time.perf_counter` around the call (the call
returns when its outputs are in host memory), GPU work included: a figure is what a caller waits,
launch and synchronisation with it.
"""

from __future__ import annotations

import time

import numpy as np

STAT_KEYS = ("median", "p90", "p99", "mean", "std")


def summarize(samples_ms) -> dict:
    """median, p90, p99, mean, std (sample std, ddof=1; 0 for one sample), min, max and n of samples.

    Percentiles interpolate linearly between the two nearest ranks (numpy's default), so p99 of
    few samples lies just under the maximum. An empty input gives None for every statistic.
    """
    x = np.asarray(list(samples_ms), dtype=np.float64)
    if x.size == 0:
        return {**dict.fromkeys(STAT_KEYS), "min": None, "max": None, "n": 0}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {
        "median": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "min": float(x.min()),
        "max": float(x.max()),
        "n": int(x.size),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None where either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return float(a) / float(b)


class CpuTimer:
    """Wall-clock milliseconds of a call on the host (`time.perf_counter`)."""

    name = "perf_counter"

    def time(self, fn) -> tuple[float, object]:
        """Run fn() once; returns (milliseconds, its result)."""
        t0 = time.perf_counter()
        out = fn()
        return (time.perf_counter() - t0) * 1000.0, out
