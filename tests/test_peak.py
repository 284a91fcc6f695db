"""benchmarks/peak.py: the GEMM peak is the best rate over sizes and libraries (not one median),
sampled between rounds; a loaded machine is flagged; a share above 100% is never printed bare."""

from __future__ import annotations

import pytest

from restr.benchmarks.latency import format_report
from restr.benchmarks.peak import GemmPeak, load_warning


class StubGemm:
    def __init__(self, library: str, n: int, times_ms: list[float], clock):
        self.library, self.n, self.times, self.clock = library, n, list(times_ms), clock

    def __call__(self):
        self.clock.now += self.times.pop(0) / 1000.0


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def test_peak_is_the_best_sample_of_any_size_and_library():
    clock = Clock()
    # library A: 100^3 and 200^3 GEMMs; library B: the same sizes. Times in ms per sample, in turn.
    a = [StubGemm("A", 100, [2.0, 1.0, 2.0], clock), StubGemm("A", 200, [20.0, 20.0], clock)]
    b = [StubGemm("B", 100, [4.0, 4.0, 4.0], clock), StubGemm("B", 200, [10.0, 8.0], clock)]
    peak = GemmPeak(n=100, sizes=(100, 200), gemms=[a, b], clock=clock)
    for _ in range(5):  # sizes take turns: 100, 200, 100, 200, 100
        peak.sample()
    r = peak.result()
    # B at 200: 2 * 200^3 FLOP in 8 ms (its fastest) = 2.0 GFLOP/s; A at 100 at its fastest (1 ms): 2.0 too;
    # the medians (A 100: 2 ms -> 1.0; B 200: 9 ms -> 1.78) would have given less
    assert r["peak_gflops"] == pytest.approx(2.0) and r["backends"]["B 200"]["gflops"] == pytest.approx(2.0)
    assert r["backends"]["A 100"]["gflops"] == pytest.approx(2.0) and r["backends"]["A 200"]["gflops"] == pytest.approx(0.8)
    assert r["sizes"] == [100, 200] and len(peak.rounds) == 5
    assert peak.round_peak(0) == pytest.approx(1.0)  # round 0: A 100 at 2 ms (1.0), B 100 at 4 ms (0.5)
    assert peak.round_peak(1) == pytest.approx(1.6)  # round 1: A 200 at 20 ms (0.8), B 200 at 10 ms (1.6)
    assert peak.round_peak(9) is None


def test_default_peak_spans_sizes_and_three_libraries():
    pytest.importorskip("torch")
    peak = GemmPeak(n=64, threads=1)
    assert peak.sizes == (32, 64, 128)
    assert {g[0].library for g in peak.gemms} == {"onnxruntime MatMul (MLAS)", "torch.matmul", "numpy.matmul"}
    peak.sample()
    assert len(peak.rounds[0]) == 3 and peak.result()["peak_gflops"] > 0


def test_loaded_machine_is_flagged():
    assert load_warning(0.1, 2.05, threads=2, cpus=4) is None
    assert load_warning(0.3, 1.9, threads=2, cpus=2).startswith("LOADED MACHINE: load average 0.30 before the run")  # 0.3 + 2 > 2
    assert "3.10 at its end, on 2 CPUs" in load_warning(0.0, 3.1, threads=1, cpus=2)


def _doc(fraction: float, warning: str | None) -> dict:
    stats = {"median": 10.0, "p90": 11.0, "p99": 12.0, "std": 1.0}
    return {
        "environment": {
            "cpu": {"model": "Test CPU", "flags": []},
            "available_cpus": 2,
            "threads": 2,
            "loadavg_start": [0.1, 0, 0],
            "loadavg_end": [2.5, 0, 0],
            "versions": {},
            "load_warning": warning,
        },
        "gemm": {"peak_gflops": 100.0, "peak_backend": "numpy.matmul 64", "backends": {"numpy.matmul 64": {"gflops": 100.0}}},
        "results": [
            {
                "label": "e",
                "precision": "fp32",
                "model_ms": stats,
                "end_to_end_ms": None,
                "prepost_fraction": None,
                "cold_start_ms": 1.0,
                "peak_memory_mb": 1.0,
                "achieved_gflops": 100.0 * fraction,
                "peak_fraction": fraction,
                "peak_fraction_end_to_end": None,
                "peak_fraction_paired": fraction,
                "throughput": [],
                "notes": [],
            }
        ],
        "ratios": [],
    }


def test_share_above_100_percent_says_the_peak_was_not_reached():
    text = format_report(_doc(1.34, None))
    assert "134%*" in text and "peak was NOT reached" in text
    quiet = format_report(_doc(0.8, None))
    assert "80%" in quiet and "80%*" not in quiet and "NOT reached" not in quiet


def test_report_carries_the_load_warning():
    assert "LOADED MACHINE" in format_report(_doc(0.8, load_warning(0.1, 2.5, 2, 2)))
