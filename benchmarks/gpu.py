"""GPU helpers for the benchmark. The phase timing of a TensorRT engine (host-to-device copies,
compute, device-to-host copies, each between CUDA events on the runner's own stream) is the
runner's own: `runner.run(feeds, timings=t)` adds "h2d", "compute" and "d2h" milliseconds to `t`
(the runner protocol, restr.runtime.runners.Runner), so what is timed is exactly what serves.
"""
from __future__ import annotations

from restr.benchmarks.timing import _cuda_ok


def device_memory_used_mb(device: str = "cuda:0") -> float | None:
    """GPU memory in use on `device` ("cuda:N", a runner's `device`; all processes), MiB; None when
    it cannot be read."""
    try:
        from cuda.bindings import runtime as cudart

        _cuda_ok(cudart, cudart.cudaSetDevice(int(str(device).rpartition(":")[2] or 0)))
        free, total = _cuda_ok(cudart, cudart.cudaMemGetInfo())
        return (int(total) - int(free)) / 2**20
    except Exception:  # no cuda-python, device or driver: memory is simply not reported
        return None
