"""The matrix-product peak the achieved GFLOP/s are compared with, measured in the same process,
with the same thread count, interleaved with the engines' rounds (so machine load hits both alike).

A peak is the best the hardware does, so it is the best of several FP32 GEMMs (n x n by n x n,
2 n^3 FLOPs each) over several sizes and libraries, each taken at its fastest sample:
    onnxruntime  a one-node MatMul graph in an InferenceSession (MLAS, the kernels the ONNX graphs use)
    torch        torch.matmul into a preallocated output (the kernels PyTorch eager uses)
    numpy        numpy.matmul into a preallocated output (its BLAS; its own thread count)
Sizes: n/2, n and 2n of `--gemm-size` n. Every round of the model's runs is followed by one GEMM
per library, the sizes taking turns, so the peak is sampled throughout the run. A median of one
size and one library (the earlier method) came out below what the model itself reached on a
2-core EPYC; even so, a share above 100% can happen, and is reported as "peak not reached".
"""

from __future__ import annotations

import time

import numpy as np

from restr.benchmarks.timing import summarize


class OrtGemm:
    """n x n FP32 MatMul in ONNX Runtime on the CPU, `threads` intra-op threads."""

    library = "onnxruntime MatMul (MLAS)"

    def __init__(self, n: int, threads: int | None):
        import onnxruntime as ort
        from onnx import TensorProto, helper

        t = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "abc"]
        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", t[:2], t[2:])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        self.feeds = {"a": rng.standard_normal((n, n), dtype=np.float32), "b": rng.standard_normal((n, n), dtype=np.float32)}
        self.n = n

    def __call__(self) -> None:
        self.session.run(None, self.feeds)


class TorchGemm:
    """n x n FP32 torch.matmul on the CPU (threads as set by torch.set_num_threads)."""

    library = "torch.matmul"

    def __init__(self, n: int, threads: int | None = None):
        import torch

        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(n, n, generator=g)
        self.b = torch.randn(n, n, generator=g)
        self.c = torch.empty(n, n)
        self.n = n

    def __call__(self) -> None:
        import torch

        torch.matmul(self.a, self.b, out=self.c)


class NumpyGemm:
    """n x n FP32 numpy.matmul (its BLAS chooses its threads: at worst more than the model's,
    which can only raise the peak, never flatter a share)."""

    library = "numpy.matmul"

    def __init__(self, n: int, threads: int | None = None):
        rng = np.random.default_rng(0)
        self.a = rng.standard_normal((n, n), dtype=np.float32)
        self.b = rng.standard_normal((n, n), dtype=np.float32)
        self.c = np.empty((n, n), np.float32)
        self.n = n

    def __call__(self) -> None:
        np.matmul(self.a, self.b, out=self.c)


LIBRARIES = {"onnxruntime": OrtGemm, "torch": TorchGemm, "numpy": NumpyGemm}


class GemmPeak:
    """Interleavable GEMM timing: `sample()` times one GEMM per library (sizes in turn); `result()`
    gives the best rate seen; `round_peak(r)` the best rate of round r (for paired shares)."""

    def __init__(
        self,
        n: int = 2048,
        threads: int | None = None,
        backends=("onnxruntime", "torch", "numpy"),
        sizes: tuple[int, ...] | None = None,
        gemms=None,
        clock=time.perf_counter,
    ):
        self.n = n
        self.sizes = tuple(sizes) if sizes else tuple(dict.fromkeys((max(16, n // 2), n, 2 * n)))
        self.clock = clock
        if gemms is None:
            gemms = []
            for b in backends:
                try:
                    gemms.append([LIBRARIES[b](m, threads) for m in self.sizes])
                except ImportError:  # a torch-free install: the others alone
                    continue
        self.gemms = gemms  # per library: one GEMM per size
        self.samples: dict[str, list[float]] = {self._name(g): [] for per_lib in gemms for g in per_lib}
        self.rounds: list[list[float]] = []  # GFLOP/s of each sample, per sample() call
        self._turn = 0

    @staticmethod
    def _name(g) -> str:
        return f"{g.library} {g.n}"

    def warmup(self, times: int = 2) -> None:
        for _ in range(times):
            for per_lib in self.gemms:
                for g in per_lib:
                    g()

    def sample(self) -> None:
        rates = []
        for per_lib in self.gemms:
            g = per_lib[self._turn % len(per_lib)]
            t0 = self.clock()
            g()
            ms = (self.clock() - t0) * 1000.0
            self.samples[self._name(g)].append(ms)
            rates.append(2.0 * g.n**3 / (ms / 1000.0) / 1e9)
        self._turn += 1
        self.rounds.append(rates)

    def round_peak(self, r: int) -> float | None:
        """The best GFLOP/s among round r's samples (None past the last round)."""
        return max(self.rounds[r]) if r < len(self.rounds) and self.rounds[r] else None

    def result(self) -> dict:
        """{"sizes", "backends": {"library n": {"n", "ms": stats, "gflops" (at the fastest sample)}},
        "peak_gflops", "peak_backend", "method"}."""
        backends = {}
        for per_lib in self.gemms:
            for g in per_lib:
                ms = self.samples[self._name(g)]
                stats = summarize(ms)
                backends[self._name(g)] = {
                    "n": g.n,
                    "ms": stats,
                    "gflops": 2.0 * g.n**3 / (stats["min"] / 1000.0) / 1e9 if stats["n"] else None,
                }
        best = max(
            (b for b in backends.items() if b[1]["gflops"]), key=lambda b: b[1]["gflops"], default=(None, {"gflops": None})
        )
        return {
            "n": self.n,
            "sizes": list(self.sizes),
            "dtype": "float32",
            "backends": backends,
            "peak_gflops": best[1]["gflops"],
            "peak_backend": best[0],
            "method": "best rate (fastest sample) over every size and library, sampled between the model's rounds",
        }


def load_warning(loadavg_start: float, loadavg_end: float, threads: int, cpus: int) -> str | None:
    """A warning when the machine was busier than the cores it has: the 1-minute load average
    before the run plus the threads the run uses, or the load average at its end (which includes
    the run), above the CPUs available. None when the run had its cores to itself."""
    if loadavg_start + threads > cpus or loadavg_end > cpus:
        return (
            f"LOADED MACHINE: load average {loadavg_start:.2f} before the run (+{threads} threads of its own) and "
            f"{loadavg_end:.2f} at its end, on {cpus} CPUs: other work competed for the cores; times and shares are unreliable"
        )
    return None


def share(x: float | None) -> str | None:
    """A share of the peak for a table: above 100% it is marked, and the report says why."""
    if x is None:
        return None
    return f"{x:.0%}" + ("*" if x > 1 else "")


PEAK_NOT_REACHED = (
    "* above 100%: the GEMM peak was NOT reached in this run (the model ran faster than the best GEMM "
    "sample), so that share is no bound"
)
