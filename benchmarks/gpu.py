"""GPU helpers for the benchmark. The phase timing of a TensorRT engine (host-to-device copies,
compute, device-to-host copies, each between CUDA events on the runner's own stream) is the
runner's own: `runner.run(feeds, timings=t)` adds "h2d", "compute" and "d2h" milliseconds to `t`
(the runner protocol, restr.runtime.runners.Runner), so what is timed is exactly what serves.
"""

from __future__ import annotations

from restr.runtime.trt_runner import check_cuda


def device_memory_used_mb(device: str = "cuda:0") -> float | None:
    """GPU memory in use on `device` ("cuda:N", a runner's `device`; all processes), MiB; None when
    it cannot be read."""
    try:
        from cuda.bindings import runtime as cudart

        check_cuda(cudart, cudart.cudaSetDevice(int(str(device).rpartition(":")[2] or 0)))
        free, total = check_cuda(cudart, cudart.cudaMemGetInfo())
        return (int(total) - int(free)) / 2**20
    except Exception:  # no cuda-python, device or driver: memory is simply not reported
        return None


class GpuGemmPeak:
    """The GPU's matrix-product peak, measured in the benchmark's own run: FP16 products of
    4096 and 8192 squares in PyTorch (cuBLAS, tensor cores), timed with CUDA events, sampled between
    the latency rounds; the peak is the fastest sample. FP16, because the engines it is compared
    with run FP16 (an FP32 engine's share is then of the FP16 peak, said in the report)."""

    SIZES = (4096, 8192)

    def __init__(self, torch):
        self.torch = torch
        self.samples: dict[int, list[float]] = {n: [] for n in self.SIZES}
        self.mats = {n: [torch.randn(n, n, device="cuda", dtype=torch.float16) for _ in range(2)] for n in self.SIZES}
        for _ in range(3):
            self.sample()

    @classmethod
    def maybe(cls) -> GpuGemmPeak | None:
        """The peak where PyTorch sees a CUDA GPU; None elsewhere (the report says not measured)."""
        try:
            import torch
        except ImportError:
            return None
        return cls(torch) if torch.cuda.is_available() else None

    def sample(self) -> None:
        torch = self.torch
        for n, (a, b) in self.mats.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.matmul(a, b)
            end.record()
            end.synchronize()
            self.samples[n].append(start.elapsed_time(end))

    def result(self) -> dict:
        rates = {str(n): 2.0 * n**3 / (min(ms) / 1000.0) / 1e9 for n, ms in self.samples.items() if ms}
        return {
            "dtype": "float16",
            "library": f"torch {self.torch.__version__} (cuBLAS)",
            "gpu": self.torch.cuda.get_device_name(0),
            "gflops_by_size": rates,
            "peak_gflops": max(rates.values()),
            "samples": {str(n): len(v) for n, v in self.samples.items()},
        }
