"""GPU timing of a TensorRT engine: host-to-device copies, compute and device-to-host copies apart,
each between CUDA events recorded on the runner's own stream (cuda-python).

This mirrors `TrtRunner.run` step by step (same execution context, stream and buffers, per
thread) with an event between the steps, so "model alone" on a GPU is the engine's compute and
the copies are reported beside it. Not exercised on the CPU-only development machines; it uses
only the TensorRT 10+ tensor API and cuda-python calls the runtime itself uses.
"""
from __future__ import annotations

import numpy as np

from restr.benchmarks.timing import _cuda_ok
from restr.runtime.runners import prepare_feeds


class TrtPhaseTimer:
    """`time(feeds)` -> {"h2d_ms", "compute_ms", "d2h_ms"} for one run of a `TrtRunner`."""

    def __init__(self, runner):
        self.runner = runner
        self.cudart = runner._cudart
        self.events = [_cuda_ok(self.cudart, self.cudart.cudaEventCreate()) for _ in range(4)]

    def time(self, feeds: dict[str, np.ndarray]) -> dict[str, float]:
        r, cudart = self.runner, self.cudart
        feeds, _ = prepare_feeds(r.input_specs, feeds, r.name)
        st = r._state()
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        e0, e1, e2, e3 = self.events
        _cuda_ok(cudart, cudart.cudaEventRecord(e0, st.stream))
        for name, x in feeds.items():
            st.context.set_input_shape(name, x.shape)
            ptr = st.buffer(name, x.nbytes)
            _cuda_ok(cudart, cudart.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, h2d, st.stream))
            st.context.set_tensor_address(name, ptr)
        outs = {}
        for spec in r.output_specs:
            host = np.empty(tuple(st.context.get_tensor_shape(spec.name)), dtype=spec.dtype)
            st.context.set_tensor_address(spec.name, st.buffer(spec.name, host.nbytes))
            outs[spec.name] = host
        _cuda_ok(cudart, cudart.cudaEventRecord(e1, st.stream))
        if not st.context.execute_async_v3(st.stream):
            raise RuntimeError(f"{r.name}: TensorRT execution failed")
        _cuda_ok(cudart, cudart.cudaEventRecord(e2, st.stream))
        for name, host in outs.items():
            _cuda_ok(cudart, cudart.cudaMemcpyAsync(host.ctypes.data, st.buffers[name][0], host.nbytes, d2h, st.stream))
        _cuda_ok(cudart, cudart.cudaEventRecord(e3, st.stream))
        _cuda_ok(cudart, cudart.cudaEventSynchronize(e3))
        ms = [float(_cuda_ok(cudart, cudart.cudaEventElapsedTime(a, b))) for a, b in ((e0, e1), (e1, e2), (e2, e3))]
        return {"h2d_ms": ms[0], "compute_ms": ms[1], "d2h_ms": ms[2]}


def device_memory_used_mb(cudart, device: int = 0) -> float | None:
    """GPU memory in use on `device` (all processes), MiB; None when it cannot be read."""
    try:
        _cuda_ok(cudart, cudart.cudaSetDevice(device))
        free, total = _cuda_ok(cudart, cudart.cudaMemGetInfo())
        return (int(total) - int(free)) / 2**20
    except Exception:  # no device or driver: memory is simply not reported
        return None
