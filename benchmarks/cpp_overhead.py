"""The C++ host's own overhead against ONNX Runtime, and the C++ host against the Python runtime,
on one export in one process, rounds interleaved (a noisy shared machine loads both alike).

    python -m restr.benchmarks.cpp_overhead --export DIR --library build/cpp/librestr_runtime.so \\
        [--threads 2] [--rounds 10] [--queries 8] [--provider cpu|cuda] [--precision fp32|fp16] [--json FILE]

Per round: one photo (640x480) embedded and asked `--queries` expressions, with probabilities, by
each host. The C++ host's overhead is its embed + predict time minus the time inside ONNX Runtime's
Run calls (restr_timings); it is given as a share of the model time, bounded from below by the Run
time less the preprocess and postprocess stages (so the share is, if anything, overstated).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from restr.benchmarks.cpp_host import CppHost
from restr.runtime import Predictor

TEXTS = ["the man on the left", "the red car", "the small dog next to the bench", "a tree", "the woman in the blue shirt",
         "the big ball", "the cat on the right", "the hat"]


def _stats(xs: list[float]) -> dict:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "iqr": q[2] - q[0], "n": len(xs)}


def run(export: str, library: str, threads: int, rounds: int, queries: int, provider: str = "cpu", precision: str = "fp32") -> dict:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    texts = [TEXTS[i % len(TEXTS)] for i in range(queries)]
    cpp = CppHost(library, export, threads=threads, precision=precision, provider=provider)
    py = Predictor.from_artifacts(export, threads=threads, cache_size=0, precision=precision,
                                  providers=None if provider == "cpu" else provider)
    rows = {"cpp_total_ms": [], "cpp_ort_ms": [], "cpp_overhead_ms": [], "cpp_overhead_share": [], "python_total_ms": []}
    parity = {}
    for r in range(rounds + 1):  # round 0 warms both up
        got, t = cpp.predict(rgb, texts)
        t0 = time.perf_counter()
        want = py.predict_embedding(py.embed(rgb), texts, probs=True)
        py_ms = (time.perf_counter() - t0) * 1000
        if r == 0:  # the two hosts' results on the same photo and expressions
            parity = {"masks_identical": all(np.array_equal(g["mask"], w.mask) for g, w in zip(got, want)),
                      "mask_pixels_equal": float(np.mean([(g["mask"] == w.mask).mean() for g, w in zip(got, want)])),
                      "score_max_abs_diff": max(abs(g["score"] - w.score) for g, w in zip(got, want)),
                      "probs_max_abs_diff": max(float(np.abs(g["probs"] - w.probs).max()) for g, w in zip(got, want))}
            continue
        total, ort = t["embed_total"] + t["predict_total"], t["embed_ort"] + t["predict_ort"]
        model = ort - t["preprocess"] - t["postprocess"]
        rows["cpp_total_ms"].append(total)
        rows["cpp_ort_ms"].append(ort)
        rows["cpp_overhead_ms"].append(total - ort)
        rows["cpp_overhead_share"].append((total - ort) / model)
        rows["python_total_ms"].append(py_ms)
    cpp.close()
    return {"export": export, "threads": threads, "rounds": rounds, "queries": queries, "image": [480, 640],
            "provider": provider, "precision": precision, "python_runner": repr(py.runners), "parity": parity,
            "load_average": os.getloadavg(), **{k: _stats(v) for k, v in rows.items()}}


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
    print(f"C++ host overhead / model time: median {100 * s['median']:.3f}%  (min {100 * s['min']:.3f}%, max {100 * s['max']:.3f}%)")
    if a.json_path:
        with open(a.json_path, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
