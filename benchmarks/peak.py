"""The matrix-product peak the achieved GFLOP/s are compared with, measured in the same process,
with the same thread count, interleaved with the engines' runs (so machine load hits both alike).

Two FP32 GEMMs of n x n by n x n (2 n^3 FLOPs each):
    onnxruntime  a one-node MatMul graph in an InferenceSession (MLAS, the kernels the ONNX graphs use)
    torch        torch.matmul into a preallocated output (the kernels PyTorch eager uses)
The peak is the higher of their medians: a share of it can only be understated, never flattered.
"""
from __future__ import annotations

import time

import numpy as np

from restr.benchmarks.timing import summarize


class OrtGemm:
    """n x n FP32 MatMul in ONNX Runtime on the CPU, `threads` intra-op threads."""

    name = "onnxruntime MatMul (MLAS)"

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

    name = "torch.matmul"

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


class GemmPeak:
    """Interleavable GEMM timing: `sample()` times each GEMM once; `result()` summarises."""

    def __init__(self, n: int = 2048, threads: int | None = None, backends=("onnxruntime", "torch")):
        self.n = n
        self.gemms = []
        for b in backends:
            try:
                self.gemms.append(OrtGemm(n, threads) if b == "onnxruntime" else TorchGemm(n, threads))
            except ImportError:  # a torch-free install: ONNX Runtime's GEMM alone
                continue
        self.samples: dict[str, list[float]] = {g.name: [] for g in self.gemms}

    def warmup(self, times: int = 2) -> None:
        for _ in range(times):
            for g in self.gemms:
                g()

    def sample(self) -> None:
        for g in self.gemms:
            t0 = time.perf_counter()
            g()
            self.samples[g.name].append((time.perf_counter() - t0) * 1000.0)

    def result(self) -> dict:
        """{"n", "flop", "backends": {name: {"ms": stats, "gflops"}}, "peak_gflops", "peak_backend"}."""
        flop = 2.0 * self.n**3
        backends = {}
        for name, ms in self.samples.items():
            stats = summarize(ms)
            backends[name] = {"ms": stats, "gflops": flop / (stats["median"] / 1000.0) / 1e9 if stats["n"] else None}
        best = max((b for b in backends.items() if b[1]["gflops"]), key=lambda b: b[1]["gflops"], default=(None, {"gflops": None}))
        return {"n": self.n, "dtype": "float32", "flop": flop, "backends": backends, "peak_gflops": best[1]["gflops"], "peak_backend": best[0]}
