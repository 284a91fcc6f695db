"""TrtRunner and the engine build around TensorRT's calls, on a fake TensorRT / CUDA pair (the
'engines' are ONNX graphs run by ONNX Runtime through the device addresses the runner hands them;
see test_runtime.py): a bounded pool of execution contexts, close() against runs in flight, the
runner protocol's timings, FP16 engines found for the default precision, and the results of the
TensorRT calls that can fail checked."""

from __future__ import annotations

import ctypes
import gc
import json
import re
import threading
import time
import types
import weakref
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from conftest import (
    TINY_TEXTS as TEXTS,
    FakeCudart,
    copy_export,
    fake_tensorrt_module,
    install_fake_tensorrt,
    make_tiny_export,
    photo,
    sha256_of,
)
from restr.runtime import (
    Predictor,
    trt_runner,
)
from restr.runtime.artifacts import Artifacts
from restr.runtime.runners import Runner

ROOT = Path(__file__).resolve().parents[1]
SIDECAR = {"tensorrt_version": "10.99.0", "gpu_name": "Fake GPU 80GB", "compute_capability": "9.0"}
ILLEGAL_ADDRESS = 700  # cudaErrorIllegalAddress


class CountingCudart(FakeCudart):
    """The fake CUDA runtime, plus what these tests count: streams and events alive, freed memory
    kept (so a use after free is an error code, not a crash), the order of calls."""

    def __init__(self):
        super().__init__()
        self.freed: dict[int, object] = {}
        self.streams = self.events = 0
        self.log: list[str] = []
        self.lock = threading.Lock()
        self.copy_delay = 0.0

    def cudaFree(self, ptr):
        with self.lock:
            if ptr in self.memory:
                self.freed[ptr] = self.memory.pop(ptr)
        return (0,)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        if self.copy_delay:
            time.sleep(self.copy_delay)
        device = dst if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice else src
        with self.lock:
            if device not in self.memory:
                return (ILLEGAL_ADDRESS,)
            ctypes.memmove(dst, src, n)
        return (0,)

    def cudaStreamCreate(self):
        with self.lock:
            self.streams += 1
        return 0, object()

    def cudaStreamDestroy(self, stream):
        with self.lock:
            self.streams -= 1
        return (0,)

    def cudaSetDevice(self, device):
        self.log.append(f"set_device {device}")
        return (0,)

    def cudaEventCreate(self):
        with self.lock:
            self.events += 1
        return 0, object()

    def cudaEventDestroy(self, ev):
        with self.lock:
            self.events -= 1
        return (0,)

    cudaEventRecord = staticmethod(lambda ev, stream: (0,))
    cudaEventElapsedTime = staticmethod(lambda a, b: (0, 1.0))  # every phase: 1 ms


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp("tiny") / "export")


@pytest.fixture()
def fake(monkeypatch):
    """(cudart, contexts): the fake modules installed; `contexts` holds every live execution context."""
    cudart = CountingCudart()
    trt = fake_tensorrt_module()
    contexts = weakref.WeakSet()
    make_engine = trt.Runtime(None).deserialize_cuda_engine

    def deserialize(data):
        cudart.log.append("deserialize")
        engine = make_engine(data)
        create = engine.create_execution_context

        def create_context():
            ctx = create()
            contexts.add(ctx)
            return ctx

        engine.create_execution_context = create_context
        return engine

    trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=deserialize)
    install_fake_tensorrt(monkeypatch, trt, cudart)
    return cudart, contexts


def fp16_engines(folder: Path, max_batch: int = 4) -> None:
    """Engines under the keys the exporter writes (`*_fp16`); here the FP32 ONNX files stand in."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for stage in ("vision", "language", "fusion_decoder"):
        key = f"{stage}_fp16"
        (folder / f"{key}.engine").write_bytes((folder / f"{stage}.onnx").read_bytes())
        profiles = {s["name"]: {"min": [1], "opt": [1], "max": [max_batch]} for s in manifest["graphs"][stage]["inputs"]}
        (folder / f"{key}.engine.json").write_text(json.dumps({**SIDECAR, "profiles": profiles}))
        manifest["engines"][key] = {
            "file": f"{key}.engine",
            "sha256": sha256_of(folder / f"{key}.engine"),
            "sidecar": f"{key}.engine.json",
            "precision": "fp16-strongly-typed",
            "source": f"{key}.onnx",
        }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def language_runner(folder: Path, **kw) -> trt_runner.TrtRunner:
    art = Artifacts.open(folder)
    return trt_runner.TrtRunner(art, art.engine("language_fp16"), specs=art.graphs["language"], **kw)


WORDS = {"words": np.ones((1, 20), np.int64), "pad_mask": np.arange(20)[None] >= 4}


def test_thousand_short_lived_threads_leave_a_bounded_pool(tiny, tmp_path, fake):
    cudart, contexts = fake
    folder = copy_export(tiny, tmp_path)
    fp16_engines(folder)
    runner = language_runner(folder, max_contexts=3)
    expected = runner.run(WORDS)["linguistic_features"]
    errors = []

    def once():
        try:
            np.testing.assert_allclose(runner.run(WORDS)["linguistic_features"], expected, atol=1e-6)
        except Exception as e:
            errors.append(repr(e))

    for _ in range(0, 1000, 50):  # 1,000 threads, each runs once and ends; 50 alive at a time
        threads = [threading.Thread(target=once) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    gc.collect()
    assert not errors, errors[:3]
    assert len(contexts) <= 3 and cudart.streams <= 3 and runner.contexts <= 3, (len(contexts), cudart.streams)
    runner.close()
    gc.collect()
    assert cudart.streams == 0 and cudart.events == 0 and not cudart.memory and len(contexts) == 0


def test_close_waits_for_runs_in_flight_and_closed_runner_says_so(tiny, tmp_path, fake):
    cudart, _ = fake
    folder = copy_export(tiny, tmp_path)
    fp16_engines(folder)
    runner = language_runner(folder, max_contexts=2)
    cudart.copy_delay = 0.002  # runs are long enough for close() to land inside one
    unexpected, done, stop = [], [0], threading.Event()

    def loop():
        while not stop.is_set():
            try:
                runner.run(WORDS)
                done[0] += 1
            except trt_runner.RunnerClosedError:
                return
            except Exception as e:
                unexpected.append(repr(e))
                return

    threads = [threading.Thread(target=loop) for _ in range(8)]  # more threads than contexts: some wait
    for t in threads:
        t.start()
    time.sleep(0.3)
    runner.close()
    stop.set()
    for t in threads:
        t.join(10)
    assert not unexpected, unexpected[:3]
    assert done[0] > 0 and not cudart.memory and cudart.streams == 0
    with pytest.raises(trt_runner.RunnerClosedError, match="language_fp16: the TensorRT runner is closed"):
        runner.run(WORDS)
    assert issubclass(trt_runner.RunnerClosedError, RuntimeError)
    runner.close()  # idempotent


def test_runner_protocol_and_phase_timings(tiny, tmp_path, fake):
    folder = copy_export(tiny, tmp_path)
    fp16_engines(folder)
    runner = language_runner(folder)
    assert isinstance(runner, Runner)
    assert (runner.name, runner.backend, runner.device, runner.max_batch) == ("language_fp16", "tensorrt", "cuda:0", 4)
    assert [s.name for s in runner.input_specs] == ["words", "pad_mask"] and runner.output_names == ("linguistic_features",)
    timings = {"compute": 5.0, "other": 1.0}
    runner.run(WORDS, timings=timings)
    runner.run(WORDS, timings=timings)  # added to, not replaced: the fake's events are 1 ms apart
    assert timings == {"compute": 7.0, "other": 1.0, "h2d": 2.0, "d2h": 2.0}
    runner.close()


def test_tensorrt_backend_runs_the_fp16_engines_by_default(tiny, tmp_path, fake):
    """The exporter writes only `*_fp16` engines: backend="tensorrt" without precision finds them."""
    folder = copy_export(tiny, tmp_path)
    fp16_engines(folder)
    trt_pred = Predictor.from_artifacts(folder, backend="tensorrt")
    ort_pred = Predictor.from_artifacts(folder, threads=1)
    assert sorted(r.name for r in trt_pred.runners.values()) == ["fusion_decoder_fp16", "language_fp16", "vision_fp16"]
    im = photo(70, 50, seed=3)
    for a, b in zip(trt_pred.predict_image(im, TEXTS), ort_pred.predict_image(im, TEXTS)):
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)


def test_device_set_before_the_engine_is_deserialised(tiny, tmp_path, fake):
    cudart, _ = fake
    folder = copy_export(tiny, tmp_path)
    fp16_engines(folder)
    language_runner(folder).close()
    assert "deserialize" in cudart.log and "set_device 0" in cudart.log[: cudart.log.index("deserialize")]


def test_no_execution_context_is_a_clear_error(tiny, tmp_path, fake):
    folder = copy_export(tiny, tmp_path)
    fp16_engines(folder)
    runner = language_runner(folder)
    runner.engine.create_execution_context = lambda: None  # what TensorRT returns when it cannot make one
    with pytest.raises(trt_runner.DeviceError, match="language_fp16: TensorRT could not create an execution context"):
        runner.run(WORDS)
    assert runner.contexts == 0  # the failed slot is not counted: a later run may try again
    runner.close()


def test_cuda_error_during_a_run_is_a_device_error(tiny, tmp_path, fake):
    cudart, _ = fake
    folder = copy_export(tiny, tmp_path)
    fp16_engines(folder)
    runner = language_runner(folder)
    runner.run(WORDS)
    cudart.memory.clear()  # every device buffer gone: the next copy fails as an illegal address would
    with pytest.raises(trt_runner.DeviceError, match=f"CUDA error {ILLEGAL_ADDRESS}"):
        runner.run(WORDS)
    runner.close()


def test_benchmarks_use_only_the_runners_public_api():
    """The GPU phase timing goes through `runner.run(feeds, timings=...)`, not a copy of it reaching
    into the runner's privates (which drifted from the runner before)."""
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        found = re.findall(r"runner\._\w+|\br\._state\b|TrtPhaseTimer", path.read_text(encoding="utf-8"))
        assert not found, f"{path.name}: {found}"


# --------------------------------------------------------------- the build: results that can fail


def test_build_retries_a_refused_timing_cache_and_refuses_a_bad_profile(tmp_path, monkeypatch):
    from conftest import FakeConfig, FakeTensorRT
    from restr.export.tensorrt_build import EngineBuildError, trt_build

    offered = []

    def set_timing_cache(self, cache, ignore_mismatch):
        offered.append(bytes(cache))
        self.cache = cache
        return bytes(cache) == b""  # a cache from another GPU does not fit; an empty one does

    monkeypatch.setattr(FakeConfig, "set_timing_cache", set_timing_cache)
    FakeTensorRT.calls = []
    profile = {"image": {"min": [1, 3, 8, 8], "opt": [1, 3, 8, 8], "max": [2, 3, 8, 8]}}
    plan, cache = trt_build(FakeTensorRT, tmp_path / "g.onnx", profile, b"other-gpu", 1 << 20)
    assert offered == [b"other-gpu", b""] and plan.startswith(b"ENGINE:") and cache == b"+"
    monkeypatch.setattr(FakeConfig, "add_optimization_profile", lambda self, p: -1)
    with pytest.raises(EngineBuildError, match="refused the optimisation profile"):
        trt_build(FakeTensorRT, tmp_path / "g.onnx", profile, b"", 1 << 20)
    monkeypatch.setattr(FakeConfig, "set_timing_cache", lambda self, cache, ignore_mismatch: False)
    with pytest.raises(EngineBuildError, match="could not set up a timing cache"):
        trt_build(FakeTensorRT, tmp_path / "g.onnx", profile, b"", 1 << 20)
