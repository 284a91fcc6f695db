"""`restr-bench --engine`: latency, cold start, throughput, memory, achieved GFLOP/s and multi-query
cost of one or several engines, measured in one process and interleaved.

Phases, in order:

1. Per engine, alone: load it and run it once (cold start = load + first end-to-end run), warm
   up, and run once at each batch size. The process's RSS high-water mark is reset before and read
   after this phase, so `peak_memory_mb` is what this engine added at its worst.
2. Latency: `runs` rounds; each round runs every engine's model alone once, then its end-to-end
   path once (pre-processing, model, post-processing through `restr.runtime.Predictor`), then one
   sample of each GEMM of the peak. The order of engines rotates every round, so machine noise
   (these machines are shared) falls on every engine and on the peak alike.
3. Throughput: for each batch size, `throughput_runs` rounds of the model alone at that batch.
4. `--queries K`: rounds of, per engine, one expression through the split graphs; K expressions
   batched (the Predictor's default: vision once, language and fusion-decoder on K at once); K
   one at a time on one image embedding; and K end-to-end runs.
5. `--bulk N`: rounds of, per export folder, N photo files through `predict_many` and through a
   loop of `predict_image`, in images per second (benchmarks/bulk.py).

Everything is milliseconds of wall clock (`time.perf_counter`) on the CPU. For a TensorRT engine
the model alone is its compute between CUDA events, with the host-device copies reported apart.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from restr.benchmarks.environment import environment, peak_rss_mb, reset_peak_rss, rss_mb
from restr.benchmarks.flops import achieved_gflops, graph_macs
from restr.benchmarks.loaders import LoadOptions, Target, load_target
from restr.benchmarks.peak import PEAK_NOT_REACHED, GemmPeak, load_warning, share
from restr.benchmarks.timing import STAT_KEYS, CpuTimer, ratio, summarize
from restr.runtime.runners import OrtRunner

EXPRESSIONS = (
    "the man in the blue hat",
    "the dog on the left",
    "red car behind the tree",
    "woman holding a striped umbrella",
    "the smallest cup on the table",
    "zebra in front",
    "a kid with a yellow kite",
    "the second bus from the right",
)


def expressions(k: int) -> list[str]:
    """k distinct expressions (the fixed list, then numbered variants)."""
    return [EXPRESSIONS[i % len(EXPRESSIONS)] + ("" if i < len(EXPRESSIONS) else f" number {i}") for i in range(k)]


def synthetic_photo(width: int = 640, height: int = 480, seed: int = 0) -> np.ndarray:
    """A deterministic (height, width, 3) uint8 RGB image: smooth gradients plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(1, width - 1), y / max(1, height - 1), 0.5 + 0.5 * np.sin(x / 17.0 + y / 23.0)], axis=-1) * 200
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@dataclass
class Settings:
    runs: int = 20  # latency rounds
    warmup: int = 3  # warm-up runs of each path before timing
    batch_sizes: tuple[int, ...] = (1, 2, 4)
    throughput_runs: int = 5  # rounds per batch size
    queries: int = 0  # K expressions on one image (0: off)
    query_runs: int = 3  # rounds of the multi-query comparison
    threads: int = 1  # ONNX Runtime intra-op and PyTorch threads
    gemm_size: int = 2048  # n of the n x n x n peak GEMM
    photo: str | None = None  # an image file for the end-to-end runs (decoded every run); None: synthetic
    photo_size: tuple[int, int] = (640, 480)  # (width, height) of the synthetic photo
    op_profile: int = 0  # runs under ONNX Runtime's profiler, per ONNX engine (0: off)
    bulk: int = 0  # photo files through predict_many against a loop of predict_image (0: off)
    bulk_runs: int = 3  # rounds of the bulk comparison
    bulk_workers: int = 2  # predict_many's worker threads
    progress: bool = True


@dataclass
class EngineRun:
    """One engine's target and the samples gathered for it (milliseconds)."""

    target: Target
    load: dict
    model: list[float] = field(default_factory=list)
    end_to_end: list[float] = field(default_factory=list)
    preprocess: list[float] = field(default_factory=list)
    postprocess: list[float] = field(default_factory=list)
    h2d: list[float] = field(default_factory=list)
    d2h: list[float] = field(default_factory=list)
    batches: dict[int, list[float]] = field(default_factory=dict)
    queries: dict[str, list[float]] = field(default_factory=dict)
    split: object = None  # the split-graph Predictor for --queries and --bulk
    bulk: object = None  # BulkRuns
    feeds: dict = field(default_factory=dict)  # batch -> generated inputs
    gpu_phases: bool = False  # GPU: the runner times h2d / compute / d2h with CUDA events
    op_profile: dict | None = None


class Bench:
    """The benchmark of several engines in one process. `run()` returns the JSON document."""

    def __init__(self, paths, settings: Settings, load_options: LoadOptions, import_times: dict | None = None):
        self.paths = [Path(p) for p in paths]
        self.s = settings
        self.load_options = load_options
        self.import_times = import_times or {}
        self.photo = settings.photo if settings.photo else synthetic_photo(*settings.photo_size)
        self.timer = CpuTimer()
        self.engines: list[EngineRun] = []
        self.gemm: GemmPeak | None = None
        self.gpu_gemm = None  # GpuGemmPeak where a target runs on CUDA and PyTorch sees the GPU

    # -- single runs -----------------------------------------------------------------------------

    def _feeds(self, e: EngineRun, batch: int) -> dict:
        if batch not in e.feeds:
            e.feeds[batch] = e.target.feeds(batch)
        return e.feeds[batch]

    def model_once(self, e: EngineRun, batch: int = 1) -> float:
        feeds = self._feeds(e, batch)
        if e.gpu_phases:  # GPU: compute alone between CUDA events, copies apart
            t: dict[str, float] = {}
            e.target.runner.run(feeds, timings=t)
            if batch == 1:
                e.h2d.append(t["h2d"])
                e.d2h.append(t["d2h"])
            return t["compute"]
        return self.timer.time(lambda: e.target.runner.run(feeds))[0]

    def end_to_end_once(self, e: EngineRun, text: str = EXPRESSIONS[0]):
        # a photo in, masks out (no probabilities: a deployment asks for masks)
        ms, preds = self.timer.time(lambda: e.target.predictor.predict_image(self.photo, [text], probs=False))
        return ms, preds[0].timings

    def queries_once(self, e: EngineRun) -> dict[str, float]:
        texts, split, e2e = expressions(self.s.queries), e.split, e.target.predictor
        out = {}
        out["split_1"], _ = self.timer.time(lambda: split.predict_image(self.photo, texts[:1]))
        out["split_batched_k"], preds = self.timer.time(lambda: split.predict_image(self.photo, texts))
        t = preds[0].timings  # vision and preprocess belong to the image; the rest is per expression
        out["vision"] = t.get("vision", 0.0)

        def one_at_a_time():
            emb = split.embed(self.photo)
            return [split.predict_embedding(emb, [text]) for text in texts]

        out["split_one_at_a_time_k"], _ = self.timer.time(one_at_a_time)
        out["end_to_end_k"], _ = self.timer.time(lambda: [e2e.predict_image(self.photo, [text]) for text in texts])
        for name, ms in out.items():
            e.queries.setdefault(name, []).append(ms)
        return out

    # -- phases ----------------------------------------------------------------------------------

    def load(self, path: Path) -> EngineRun:
        """Phase 1 for one engine: cold start, warm-up, each batch size once; memory around it all."""
        gpu_device = None
        reset_ok = reset_peak_rss()
        rss0 = rss_mb()
        t0 = time.perf_counter()
        target = load_target(path, self.load_options)
        load_ms = (time.perf_counter() - t0) * 1000.0
        e = EngineRun(target=target, load={})
        if str(getattr(target.runner, "device", "cpu")).startswith("cuda"):  # the runner times its GPU phases
            e.gpu_phases, gpu_device = True, target.runner.device
        if target.predictor is not None:
            first_ms, _ = self.end_to_end_once(e)
            first = "end_to_end"
        else:
            first_ms = self.timer.time(lambda: target.runner.run(self._feeds(e, 1)))[0]
            first = "model"
        for _ in range(self.s.warmup):
            self.model_once(e)
            if target.predictor is not None:
                self.end_to_end_once(e)
        for b in self.s.batch_sizes:
            self.model_once(e, b)
        e.load = {
            "load_ms": load_ms,
            "first_run_ms": first_ms,
            "first_run": first,
            "cold_start_ms": load_ms + first_ms,
            "rss_before_mb": rss0,
            "rss_after_mb": rss_mb(),
            "peak_memory_mb": peak_rss_mb() - rss0,
            "memory_method": "VmHWM reset before loading (RSS high-water mark growth)"
            if reset_ok
            else "ru_maxrss since process start minus RSS before loading",
        }
        if gpu_device is not None:  # device-wide memory in use once the engine is loaded and has run
            from restr.benchmarks.gpu import device_memory_used_mb

            e.load["gpu_memory_used_mb"] = device_memory_used_mb(gpu_device)
        if (self.s.queries or self.s.bulk) and target.split is not None:
            reset_peak_rss()
            rss1 = rss_mb()
            t0 = time.perf_counter()
            e.split = target.split()
            e.load["split_load_ms"] = (time.perf_counter() - t0) * 1000.0
            for _ in range(max(1, self.s.warmup)):
                e.split.predict_image(self.photo, expressions(max(1, self.s.queries)))
            e.load["split_peak_memory_mb"] = peak_rss_mb() - rss1
        return e

    def _rounds(self, n: int, desc: str, step, gemm: bool):
        from tqdm import tqdm

        count = len(self.engines)
        # moves every run; off a terminal (a log, CI) a bar is only noise
        bar = tqdm(total=n * count, desc=desc, unit="run", disable=not self.s.progress or not sys.stderr.isatty(), leave=False)
        for r in range(n):
            for i in range(count):  # rotate the order every round
                step(self.engines[(r + i) % count])
                bar.update(1)
            if gemm:
                self.gemm.sample()
            if self.gpu_gemm is not None:  # the GPU peak sampled between the same rounds
                self.gpu_gemm.sample()
        bar.close()

    def run(self) -> dict:
        s = self.s
        import os

        loadavg_start = list(os.getloadavg())
        previous_torch_threads = _set_torch_threads(s.threads)
        try:
            for path in self.paths:
                self.engines.append(self.load(path))
            labels = [e.target.label for e in self.engines]
            for e in self.engines:  # two folders both named "export": label them by their paths
                if labels.count(e.target.label) > 1:
                    e.target.label = str(e.target.path)
            cpu_targets = any(e.target.device == "cpu" for e in self.engines)
            self.gemm = GemmPeak(s.gemm_size, s.threads) if cpu_targets else None
            if self.gemm:
                self.gemm.warmup()
            if any(e.target.device == "cuda" for e in self.engines):
                from restr.benchmarks.gpu import GpuGemmPeak

                self.gpu_gemm = GpuGemmPeak.maybe()
            env = environment(s.threads)
            env["loadavg_start"] = loadavg_start  # 1, 5 and 15 minute load averages, as `uptime` prints them

            def latency(e: EngineRun):
                e.model.append(self.model_once(e))
                if e.target.predictor is not None:
                    ms, timings = self.end_to_end_once(e)
                    e.end_to_end.append(ms)
                    e.preprocess.append(timings.get("preprocess", 0.0))
                    e.postprocess.append(timings.get("postprocess", 0.0))

            self._rounds(s.runs, "latency", latency, gemm=self.gemm is not None)
            for b in s.batch_sizes:
                self._rounds(
                    s.throughput_runs,
                    f"batch {b}",
                    lambda e, b=b: e.batches.setdefault(b, []).append(self.model_once(e, b)),
                    gemm=False,
                )
            if s.queries and any(e.split is not None for e in self.engines):
                self._rounds(
                    s.query_runs,
                    f"{s.queries} queries",
                    lambda e: e.split is not None and self.queries_once(e),
                    gemm=self.gemm is not None,
                )
            if s.bulk and any(e.split is not None for e in self.engines):
                self.bulk_rounds()
            if s.op_profile:
                self.profile_ops()
            env["loadavg_end"] = list(os.getloadavg())
            env["load_warning"] = load_warning(loadavg_start[0], env["loadavg_end"][0], s.threads, env["available_cpus"])
            env["rss_end_mb"] = rss_mb()  # every engine still loaded
        finally:
            _set_torch_threads(previous_torch_threads)
        gemm = self.gemm.result() if self.gemm else {"peak_gflops": None, "note": "no CPU engine"}
        gpu_gemm = self.gpu_gemm.result() if self.gpu_gemm else None
        results = [
            self.result(
                e,
                (gpu_gemm or {}).get("peak_gflops") if e.target.device == "cuda" else gemm["peak_gflops"],
                self.paired_peak_fraction(e) if e.target.device == "cpu" else None,
            )
            for e in self.engines
        ]
        settings = asdict(s)
        settings["batch_sizes"] = list(s.batch_sizes)
        settings["photo"] = s.photo or f"synthetic {s.photo_size[0]}x{s.photo_size[1]} RGB array"
        settings.update(
            {
                k: v
                for k, v in asdict(self.load_options).items()
                if k in ("precision", "backend", "providers", "image_size", "config")
            }
        )
        return {
            "tool": "restr-bench",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "environment": env,
            "settings": settings,
            "import_ms": self.import_times,
            "gemm": gemm,
            "gpu_gemm": gpu_gemm,
            "results": results,
            "ratios": ratios(results),
        }

    def bulk_rounds(self) -> None:
        from restr.benchmarks.bulk import BulkRuns, PhotoFolder

        photos = PhotoFolder(self.s.bulk, self.s.photo_size)
        try:
            n = [0]

            def bulk_once(e: EngineRun) -> None:
                if e.split is not None:
                    e.bulk = e.bulk or BulkRuns()
                    e.bulk.round(e.split, photos.paths, bulk_first=n[0] % 2 == 0, workers=self.s.bulk_workers)
                    n[0] += 1

            self._rounds(self.s.bulk_runs, f"bulk {self.s.bulk}", bulk_once, gemm=False)
        finally:
            photos.close()

    def profile_ops(self) -> None:
        """Per-operator-type kernel times of each ONNX Runtime engine (a separate profiled session)."""
        from restr.benchmarks.profile import ort_op_profile

        for e in self.engines:
            runner = e.target.runner
            if runner.backend != OrtRunner.backend:
                continue  # PyTorch and TensorRT engines: not profiled here
            e.op_profile = ort_op_profile(
                runner.info.path.read_bytes(), self._feeds(e, 1), self.s.op_profile, self.s.threads, runner.providers
            )

    def paired_peak_fraction(self, e: EngineRun) -> float | None:
        """Median over latency rounds of (this round's achieved GFLOP/s) / (this round's GEMM peak).

        Each round's model run and GEMM samples are seconds apart, so a round's pair sees about the
        same machine load: on a shared machine this is steadier than the ratio of the two medians.
        """
        t = e.target
        if self.gemm is None or t.config is None or not e.model:
            return None
        macs = graph_macs(t.config).get(t.graph)
        per_round = []
        for r, ms in enumerate(e.model):
            peak = self.gemm.round_peak(r)
            if peak and macs:
                per_round.append(achieved_gflops(macs, ms) / peak)
        return float(np.median(per_round)) if per_round else None

    def samples(self) -> dict[str, dict[str, list[float]]]:
        """Raw batch-1 milliseconds per engine label: {"model": [...], "end_to_end": [...]}."""
        return {e.target.label: {"model": list(e.model), "end_to_end": list(e.end_to_end)} for e in self.engines}

    # -- results ---------------------------------------------------------------------------------

    def result(self, e: EngineRun, peak: float | None, paired: float | None = None) -> dict:
        t, s = e.target, self.s
        macs = graph_macs(t.config).get(t.graph) if t.config is not None else None
        model = summarize(e.model)
        e2e = summarize(e.end_to_end) if t.predictor is not None else None
        pre, post = summarize(e.preprocess), summarize(e.postprocess)
        achieved = achieved_gflops(macs, model["median"])
        achieved_e2e = achieved_gflops(macs, e2e["median"]) if e2e else None
        out = {
            "engine": str(t.path),
            "label": t.label,
            "kind": t.kind,
            "backend": t.backend,
            "precision": t.precision,
            "graph": t.graph,
            "device": t.device,
            "timer": "cuda_events (compute only; copies in copies_ms)" if e.gpu_phases else "perf_counter (wall clock)",
            "image_size": t.image_size,
            "threads": s.threads,
            "model_ms": model,
            "end_to_end_ms": e2e,
            "preprocess_ms": pre if e2e else None,
            "postprocess_ms": post if e2e else None,
            "prepost_fraction": ratio((pre["median"] or 0) + (post["median"] or 0), model["median"]) if e2e else None,
            "overhead_fraction": ratio(e2e["median"] - model["median"], model["median"]) if e2e else None,
            **e.load,
            "macs": macs,
            "achieved_gflops": achieved,
            "achieved_gflops_end_to_end": achieved_e2e,
            "gemm_peak_gflops": peak,
            "peak_fraction": ratio(achieved, peak),
            "peak_fraction_end_to_end": ratio(achieved_e2e, peak),
            "peak_fraction_paired": paired,
            "throughput": [
                {
                    "batch": b,
                    "ms": summarize(ms),
                    "items_per_s": ratio(1000.0 * b, summarize(ms)["median"]),
                    "achieved_gflops": achieved_gflops(macs, summarize(ms)["median"], b),
                }
                for b, ms in sorted(e.batches.items())
            ],
            "notes": list(t.notes),
        }
        if e.op_profile is not None:
            out["op_profile"] = e.op_profile
        if e.gpu_phases:
            out["copies_ms"] = {"h2d": summarize(e.h2d), "d2h": summarize(e.d2h)}
        if s.queries:
            out.update(query_result(e, s.queries))
        if s.bulk:
            out["bulk"] = e.bulk.result(s.bulk, s.bulk_workers) if e.bulk else {"images": s.bulk, "skipped": "no split graphs"}
            if e.bulk and e.batches:  # the model alone at the largest batch timed: what bulk could reach at most
                b = max(e.batches)
                alone = ratio(1000.0 * b, summarize(e.batches[b])["median"])
                out["bulk"]["model_alone"] = {"batch": b, "images_per_s": alone}
                out["bulk"]["share_of_model_alone"] = ratio(out["bulk"]["bulk_images_per_s"]["median"], alone)
        return out


def query_result(e: EngineRun, k: int) -> dict:
    """The multi-query figures: what each expression after the first costs against one end-to-end run."""
    if e.split is None:
        why = "no split graphs" if e.target.predictor is not None else "not an end-to-end graph"
        return {"queries": {"k": k, "skipped": why}, "per_query_ratio": None, "per_query_ratio_one_at_a_time": None}
    q = {name: summarize(ms) for name, ms in e.queries.items()}
    med = {name: v["median"] for name, v in q.items()}
    one_e2e = med["end_to_end_k"] / k  # one end-to-end run, measured as K of them in a row
    next_batched = (med["split_batched_k"] - med["split_1"]) / (k - 1)
    next_single = (med["split_one_at_a_time_k"] - med["split_1"]) / (k - 1)
    return {
        "queries": {
            "k": k,
            "ms": q,
            "end_to_end_one_ms": one_e2e,
            "next_expression_ms_batched": next_batched,
            "next_expression_ms_one_at_a_time": next_single,
            "speedup_batched": ratio(med["end_to_end_k"], med["split_batched_k"]),
            "speedup_one_at_a_time": ratio(med["end_to_end_k"], med["split_one_at_a_time_k"]),
        },
        "per_query_ratio": ratio(next_batched, one_e2e),
        "per_query_ratio_one_at_a_time": ratio(next_single, one_e2e),
    }


def ratios(results: list[dict]) -> list[dict]:
    """Each engine after the first against the first: time ratios (> 1 = slower) and throughput ratios (> 1 = more)."""
    if len(results) < 2:
        return []
    first = results[0]

    def med(r, key):
        return (r.get(key) or {}).get("median")

    out = []
    for r in results[1:]:
        tp_first = {t["batch"]: t["items_per_s"] for t in first["throughput"]}
        out.append(
            {
                "engine": r["engine"],
                "relative_to": first["engine"],
                "model_ms": ratio(med(r, "model_ms"), med(first, "model_ms")),
                "end_to_end_ms": ratio(med(r, "end_to_end_ms"), med(first, "end_to_end_ms")),
                "cold_start_ms": ratio(r["cold_start_ms"], first["cold_start_ms"]),
                "peak_memory_mb": ratio(r["peak_memory_mb"], first["peak_memory_mb"]),
                "throughput": {str(t["batch"]): ratio(t["items_per_s"], tp_first.get(t["batch"])) for t in r["throughput"]},
            }
        )
    return out


def _set_torch_threads(n: int | None) -> int | None:
    """Set PyTorch's intra-op threads (if torch is importable); returns the previous value."""
    if n is None:
        return None
    try:
        import torch
    except ImportError:
        return None
    previous = torch.get_num_threads()
    torch.set_num_threads(int(n))
    return previous


# -- the human-readable report ---------------------------------------------------------------------


def _f(x, fmt="{:.1f}"):
    return None if x is None else fmt.format(x)


LATENCY_LEGEND = """legend: model ms = the graph alone on prepared inputs (on a GPU: its compute on bound device buffers);
  e2e ms = a photo in, masks out (decode-free RGB array, pre-processing, model, post-processing);
  pre+post = pre- plus post-processing time as a share of the model time;
  of peak = 2 x MACs / median model time over the matrix-product peak (CPU: FP32 GEMM; GPU: FP16 GEMM);
  e2e of peak = the same with the end-to-end time (what a user gets of the hardware);
  paired = the share computed within each round (model run and peak sample seconds apart) and then the median:
  steadier than the ratio of medians on a shared machine;
  cold ms = loading the engine (reading, checksums, sessions or engines) plus its first end-to-end run;
  peak MiB = how much the process's resident memory (RSS) high-water mark grew while this engine was loaded and run"""
THROUGHPUT_LEGEND = """note: the batch-1 row here and "model ms" above time the same call in different company: above,
  every round also runs each engine's end-to-end path and the matrix-product peak samples (which fill
  the caches and load the cores) between the model runs; here only the engines' model runs alternate.
  The gap between the two is what that company costs a model run."""


def _spread(s: dict, fmt: str = "{:.1f}") -> str | None:
    """'median (min-max)' of a summarize() dict."""
    if not s or s.get("median") is None:
        return None
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def format_report(doc: dict) -> str:
    """Tables for people: environment, latency, throughput, queries, ratios."""
    from restr.tables import format_table

    env, gemm, results = doc["environment"], doc["gemm"], doc["results"]
    lines = [
        f"CPU: {env['cpu']['model']} ({', '.join(env['cpu']['flags']) or 'no vector flags read'}); "
        f"{env['available_cpus']} CPUs available, {env['threads']} threads used; "
        f"load average {env['loadavg_start'][0]:.2f} at start, {env.get('loadavg_end', [float('nan')])[0]:.2f} at end",
        "versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
    ]
    if gemm.get("peak_gflops"):
        parts = [f"{name} {_f(b['gflops'])}" for name, b in gemm["backends"].items()]
        lines.append(
            f"matrix-product peak: FP32 GEMM, best GFLOP/s per library and size: {'; '.join(parts)} -> peak {gemm['peak_gflops']:.1f}"
        )
    g = doc.get("gpu_gemm")
    if g:
        sizes = "; ".join(f"{n}^3 {v / 1000:.0f}" for n, v in g["gflops_by_size"].items())
        lines.append(
            f"GPU matrix-product peak ({g['gpu']}): FP16 GEMM in {g['library']}, TFLOP/s: {sizes} -> peak {g['peak_gflops'] / 1000:.0f} "
            "(the 'of peak' share of GPU engines; an FP32 engine's share is of this FP16 peak too)"
        )
    if env.get("load_warning"):
        lines.append(env["load_warning"])
    for imp in doc.get("import_ms", {}).values():
        if "ms" in imp:
            lines.append(
                f"import {imp['modules']}: median {imp['ms']['median']:.0f} ms (fresh interpreter; torch imported: {imp['imports_torch']})"
            )
    rows = []
    for r in results:
        e2e = r["end_to_end_ms"] or {}
        rows.append(
            [
                r["label"],
                r["precision"],
                _f(r["model_ms"]["median"]),
                _f(r["model_ms"]["p90"]),
                _f(r["model_ms"]["p99"]),
                _f(r["model_ms"]["std"]),
                _f(e2e.get("median")),
                _f(e2e.get("p90")),
                _f(r["prepost_fraction"], "{:.1%}"),
                _f(r["cold_start_ms"], "{:.0f}"),
                _f(r["peak_memory_mb"], "{:.0f}"),
                _f(r["achieved_gflops"]),
                share(r["peak_fraction"]),
                share(r["peak_fraction_end_to_end"]),
                share(r["peak_fraction_paired"]),
            ]
        )
    text = (
        "\n".join(lines)
        + "\n\n"
        + format_table(
            [
                "engine",
                "precision",
                "model ms",
                "p90",
                "p99",
                "std",
                "e2e ms",
                "p90",
                "pre+post",
                "cold ms",
                "peak MiB",
                "GFLOP/s",
                "of peak",
                "e2e of peak",
                "paired",
            ],
            rows,
            title="latency (batch 1; model alone vs end to end with pre- and post-processing; medians unless named; "
            "of peak = 2 x MACs / median time over the GEMM peak; paired = median over rounds of the same share within each round)",
        )
    )
    text += "\n" + LATENCY_LEGEND
    if any((r[k] or 0) > 1 for r in results for k in ("peak_fraction", "peak_fraction_end_to_end", "peak_fraction_paired")):
        text += "\n" + PEAK_NOT_REACHED
    tp = [
        [r["label"], t["batch"], _f(t["ms"]["median"]), _f(t["items_per_s"], "{:.2f}"), _f(t["achieved_gflops"])]
        for r in results
        for t in r["throughput"]
    ]
    if tp:
        text += "\n\n" + format_table(["engine", "batch", "ms", "items/s", "GFLOP/s"], tp, title="throughput (model alone)")
        text += "\n" + THROUGHPUT_LEGEND
    qs = [r for r in results if "queries" in r]
    if qs:
        qrows = []
        for r in qs:
            q = r["queries"]
            if "skipped" in q:
                qrows.append([r["label"], q["k"], None, None, None, None, None, f"skipped: {q['skipped']}"])
                continue
            m = q["ms"]
            qrows.append(
                [
                    r["label"],
                    q["k"],
                    _f(m["end_to_end_k"]["median"]),
                    _f(m["split_1"]["median"]),
                    _f(m["split_batched_k"]["median"]),
                    _f(m["split_one_at_a_time_k"]["median"]),
                    _f(r["per_query_ratio"], "{:.3f}"),
                    _f(r["per_query_ratio_one_at_a_time"], "{:.3f}"),
                ]
            )
        text += "\n\n" + format_table(
            [
                "engine",
                "K",
                "K x e2e ms",
                "split 1 ms",
                "split K batched",
                "split K one by one",
                "ratio batched",
                "ratio one by one",
            ],
            qrows,
            title="K expressions on one image: each expression after the first, as a share of one end-to-end run",
        )
    bulk = [r for r in results if "bulk" in r]
    if bulk:
        brows = []
        for r in bulk:
            b = r["bulk"]
            if "skipped" in b:
                brows.append([r["label"], b["images"], None, None, f"skipped: {b['skipped']}"])
                continue
            alone = b.get("model_alone") or {}
            brows.append(
                [
                    r["label"],
                    b["images"],
                    _spread(b["loop_images_per_s"]),
                    _spread(b["bulk_images_per_s"]),
                    _spread(b["speedup"], "{:.2f}x"),
                    _f(alone.get("images_per_s")) + (f" (b{alone['batch']})" if alone else ""),
                    _f(b.get("share_of_model_alone"), "{:.0%}"),
                ]
            )
        text += "\n\n" + format_table(
            ["engine", "photos", "loop images/s", "bulk images/s", "bulk / loop", "model alone images/s", "bulk / model"],
            brows,
            title=f"many photos, one expression each: predict_many ({bulk[0]['bulk'].get('workers', '-')} workers) against a loop of "
            f"predict_image; median (min-max) over {doc['settings'].get('bulk_runs')} rounds, each round both ways on the same files",
        )
    if doc["ratios"]:
        label = {r["engine"]: r["label"] for r in results}
        rrows = [
            [
                label.get(r["engine"], r["engine"]),
                _f(r["model_ms"], "{:.2f}x"),
                _f(r["end_to_end_ms"], "{:.2f}x"),
                _f(r["cold_start_ms"], "{:.2f}x"),
                _f(r["peak_memory_mb"], "{:.2f}x"),
                ", ".join(f"b{b}: {_f(v, '{:.2f}x')}" for b, v in r["throughput"].items()),
            ]
            for r in doc["ratios"]
        ]
        text += "\n\n" + format_table(
            ["engine", "model time", "e2e time", "cold start", "peak memory", "throughput"],
            rrows,
            title=f"relative to {label.get(doc['ratios'][0]['relative_to'])} (time < 1x = faster)",
        )
    for r in results:
        prof = r.get("op_profile")
        if prof and prof["ops"]:
            top = [[o["op"], o["nodes"], _f(o["ms"]), _f(o["share"], "{:.1%}")] for o in prof["ops"][:10]]
            text += "\n\n" + format_table(
                ["op type", "nodes", "ms/run", "share"],
                top,
                title=f"{r['label']}: ONNX Runtime kernel time by op type ({prof['runs']} profiled runs, {prof['total_ms']:.1f} ms/run in kernels)",
            )
    notes = [f"{r['label']}: {n}" for r in results for n in r["notes"]]
    if notes:
        text += "\n\n" + "\n".join(f"note: {n}" for n in notes)
    return text


__all__ = ["Bench", "Settings", "STAT_KEYS", "expressions", "format_report", "query_result", "ratios", "synthetic_photo"]
