"""The C++ host's own overhead against ONNX Runtime, and the C++ host against the Python runtime,
on one export: on the CPU in one process, rounds interleaved (a noisy shared machine loads both
alike); on CUDA the C++ host's rounds first, in a process of its own (see `run`).

    python -m restr.benchmarks.cpp_overhead --export DIR --library build/cpp/librestr_runtime.so \\
        [--threads 2] [--rounds 10] [--queries 8] [--provider cpu|cuda] [--precision fp32|fp16] [--json FILE]

Per round: one photo (640x480) embedded and asked `--queries` expressions, with probabilities, by
each host. The C++ host's overhead is its embed + predict time minus the time inside ONNX Runtime's
Run calls (restr_timings); it is given as a share of the model time, bounded from below by the Run
time less the preprocess and postprocess stages (so the share is, if anything, overstated).

Both hosts run the same ONNX Runtime build: the library is given the libonnxruntime.so.* of the
onnxruntime(-gpu) wheel Python imports, wherever the library was built (`CppHost(onnxruntime=...)`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time

import numpy as np
import onnxruntime

from restr.runtime import Predictor
from restr.runtime.cpp.cpp_host import CppHost, onnxruntime_library

TEXTS = [
    "the man on the left",
    "the red car",
    "the small dog next to the bench",
    "a tree",
    "the woman in the blue shirt",
    "the big ball",
    "the cat on the right",
    "the hat",
]


def _stats(xs: list[float]) -> dict:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "iqr": q[2] - q[0], "n": len(xs)}


def _repeat(step, rounds: int):
    """Round 0 (a warm-up, whose results are compared) and `rounds` timed rounds of `step`."""
    first = step()
    return first, [step() for _ in range(rounds)]


def _cpp_rounds(
    library: str, export: str, threads: int, precision: str, provider: str, ort_library: str, rgb, texts, rounds: int
):
    """The C++ host alone: round 0's results and every later round's restr_timings."""
    cpp = CppHost(library, export, threads=threads, precision=precision, provider=provider, onnxruntime=ort_library)
    try:
        (got, _), rest = _repeat(lambda: cpp.predict(rgb, texts), rounds)
        return got, [t for _, t in rest]
    finally:
        cpp.close()


def run(
    export: str,
    library: str,
    threads: int,
    rounds: int,
    queries: int,
    provider: str = "cpu",
    precision: str = "fp32",
    apart: bool | None = None,
) -> dict:
    """`apart` (the default on CUDA): the C++ host runs its rounds in a process of its own, before the
    Python runtime's, instead of interleaved in this one. The library's ONNX Runtime and the Python
    module's are two copies of ONNX Runtime, and on CUDA both would load the one CUDA provider
    library of the wheel: not tried in one process."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    texts = [TEXTS[i % len(TEXTS)] for i in range(queries)]
    apart = provider != "cpu" if apart is None else apart
    ort_library = str(onnxruntime_library())  # the Python runtime's build, for both hosts
    args = (library, export, threads, precision, provider, ort_library, rgb, texts, rounds)
    if apart:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            got, timings = pool.apply(_cpp_rounds, args)
    py = Predictor.from_artifacts(
        export, threads=threads, cache_size=0, precision=precision, providers=None if provider == "cpu" else provider
    )

    def py_step():
        t0 = time.perf_counter()
        res = py.predict_embedding(py.embed(rgb), texts, probs=True)
        return res, (time.perf_counter() - t0) * 1000

    if apart:
        (want, _), rest = _repeat(py_step, rounds)
        py_ms = [ms for _, ms in rest]
    else:
        cpp = CppHost(library, export, threads=threads, precision=precision, provider=provider, onnxruntime=ort_library)
        try:
            ((got, _), (want, _)), rest = _repeat(lambda: (cpp.predict(rgb, texts), py_step()), rounds)
        finally:
            cpp.close()
        timings, py_ms = [c[1] for c, _ in rest], [p[1] for _, p in rest]
    rows = {"cpp_total_ms": [], "cpp_ort_ms": [], "cpp_overhead_ms": [], "cpp_overhead_share": [], "python_total_ms": py_ms}
    for t in timings:
        total, ort = t["embed_total"] + t["predict_total"], t["embed_ort"] + t["predict_ort"]
        rows["cpp_total_ms"].append(total)
        rows["cpp_ort_ms"].append(ort)
        rows["cpp_overhead_ms"].append(total - ort)
        rows["cpp_overhead_share"].append((total - ort) / (ort - t["preprocess"] - t["postprocess"]))
    parity = {
        "masks_identical": all(np.array_equal(g["mask"], w.mask) for g, w in zip(got, want)),  # round 0's results
        "mask_pixels_equal": float(np.mean([(g["mask"] == w.mask).mean() for g, w in zip(got, want)])),
        "score_max_abs_diff": max(abs(g["score"] - w.score) for g, w in zip(got, want)),
        "probs_max_abs_diff": max(float(np.abs(g["probs"] - w.probs).max()) for g, w in zip(got, want)),
    }
    return {
        "export": export,
        "onnxruntime": {"version": onnxruntime.__version__, "library": ort_library},
        "threads": threads,
        "rounds": rounds,
        "queries": queries,
        "image": [480, 640],
        "provider": provider,
        "precision": precision,
        "interleaved": not apart,
        "python_runner": repr(py.runners),
        "parity": parity,
        "load_average": os.getloadavg(),
        **{k: _stats(v) for k, v in rows.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", required=True)
    ap.add_argument("--library", required=True, help="librestr_runtime.so (make cpp-build: build/cpp/librestr_runtime.so)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--provider", default="cpu", choices=("cpu", "cuda"), help="both hosts' execution provider")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    ap.add_argument("--json", dest="json_path")
    a = ap.parse_args()
    res = run(a.export, a.library, a.threads, a.rounds, a.queries, a.provider, a.precision)
    for k in ("cpp_total_ms", "cpp_ort_ms", "cpp_overhead_ms", "python_total_ms"):
        s = res[k]
        print(f"{k:20s} median {s['median']:9.3f}  min {s['min']:9.3f}  max {s['max']:9.3f}  iqr {s['iqr']:8.3f}")
    print("parity (first round):", json.dumps(res["parity"]))
    s = res["cpp_overhead_share"]
    print(
        f"C++ host overhead / model time: median {100 * s['median']:.3f}%  (min {100 * s['min']:.3f}%, max {100 * s['max']:.3f}%)"
    )
    if a.json_path:
        with open(a.json_path, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
