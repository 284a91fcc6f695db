"""Helpers shared by the test modules: tiny models and exports, photos, the golden vectors, a
stand-in TensorRT builder, a restr-serve process. Torch and the serving environment are imported
only by the helpers that need them, so torch-free tests collect without them."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from restr.benchmarks import serve_bench

GOLDEN = Path(__file__).parent / "golden"


# -- a tiny export from seeded random weights (tests/test_runtime.py and every host's tests) ------------

WORDS = "the dog cat man woman left right red blue car on of in hat bench shirt small big tree ball".split()


def make_tiny_model(vocab, seed: int = 0):
    """restr-tiny with seeded random weights, spread out so masks are not all empty.

    The trained-model initialisation (std 0.02) gives probabilities within 1e-5 of 0.5; wider
    weights and a head bias at the median logit give masks of a few percent to most of the image.
    """
    import torch

    from restr.config import get_config
    from restr.modeling import ReSTR
    from restr.runtime.transforms import Letterbox, mean_fill, normalize

    torch.manual_seed(seed)
    model = ReSTR(get_config("restr-tiny"), len(vocab)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=1.5 / math.sqrt(m.in_features))
                torch.nn.init.normal_(m.bias, std=0.1)
        cfg = model.cfg
        x = np.concatenate(
            [
                normalize(
                    Letterbox.fit((h, w), cfg.image_size).image(photo(w, h, seed=100 + i), mean_fill(cfg.image_mean)),
                    cfg.image_mean,
                    cfg.image_std,
                )[None]
                for i, (w, h) in enumerate([(80, 56), (64, 96), (96, 96), (50, 40)])
            ]
        )
        x = torch.from_numpy(x)
        words = torch.randint(2, len(vocab), (4, 20))
        pad = torch.arange(20)[None].expand(4, 20) >= 6
        logits, _ = model(x, words, pad)
        model.decoder.head.bias -= logits.median()
    return model


@dataclass
class Tiny:
    model: object  # restr.modeling.ReSTR
    vocab: object  # restr.runtime.Vocabulary
    folder: Path


def make_tiny_export(out: Path) -> Tiny:
    import torch

    from restr.runtime import Vocabulary

    torch.set_num_threads(1)
    vocab = Vocabulary(WORDS)
    model = make_tiny_model(vocab)
    from restr.export.pipeline import ExportOptions, Source, export_artifacts

    export_artifacts(
        Source(model, vocab, {}, None, False),
        out,
        ExportOptions(max_batch=4, precisions=("fp32",), engine=False, verify=False, progress=False, threads=1),
        log=lambda _: None,
    )
    return Tiny(model, vocab, out)


def photo(w: int = 80, h: int = 56, seed: int = 0) -> Image.Image:
    """A smooth random RGB image (non-square by default)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BILINEAR)


TINY_TEXTS = ["the dog on the left", "red car", "the man in the blue shirt", "small tree", "ball", "the big cat on the bench"]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_export(tiny, tmp_path) -> Path:
    """A copy of a tiny export under tmp_path, to damage or add to."""
    import shutil

    dst = tmp_path / "export"
    shutil.copytree(tiny.folder, dst)
    return dst


def jpeg_bytes() -> bytes:
    """A small photo as JPEG file bytes."""
    buf = io.BytesIO()
    photo(64, 64).save(buf, format="JPEG")
    return buf.getvalue()


# -- a tiny model whose masks are decisive (the export's verification has something to measure) --------

DECISIVE_WORDS = ["the", "red", "blue", "circle", "square", "left", "right", "big", "small", "of"]


def decisive_tiny_model(seed: int = 0):
    """A seeded restr-tiny with random weights whose masks are not all ~0.5: the pixel head is rescaled
    so the logits on the verification inputs have median 0 and spread 4 (the FP16 mask IoU then has
    something to measure). Nothing is trained."""
    import torch

    from restr.config import get_config
    from restr.export.verify import generated_inputs
    from restr.modeling import ReSTR
    from restr.runtime import Vocabulary

    torch.manual_seed(seed)
    vocab = Vocabulary(DECISIVE_WORDS)
    model = ReSTR(get_config("restr-tiny"), len(vocab)).eval()
    cfg = model.cfg
    feeds = generated_inputs(cfg.image_size, cfg.max_words, len(vocab), cfg.image_mean, cfg.image_std, n=3, seed=0)
    with torch.no_grad():
        logits, _ = model(*(torch.from_numpy(feeds[k]) for k in ("image", "words", "pad_mask")))
        k = 4.0 / float(logits.std())
        model.decoder.head.weight.mul_(k)
        model.decoder.head.bias.sub_(logits.median()).mul_(k)
    return model, vocab


# -- the golden vectors the Python and C++ runtimes both read ---------------------------------------------


def load_golden(name: str) -> dict:
    return json.loads((GOLDEN / name).read_text(encoding="utf-8"))


def make_golden():
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- a stand-in for TensorRT's builder (TensorRT cannot be installed here) ---------------------------------


class FakeTensorRT:
    """Records the builder calls `trt_build` makes; stands in for TensorRT where it is absent."""

    __version__ = "11.0.0-fake"

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 0

    class MemoryPoolType:
        WORKSPACE = "workspace"

    class LayerType:
        QUANTIZE, DEQUANTIZE, MATRIX_MULTIPLY = "quantize", "dequantize", "matmul"

    layers = ("quantize", "dequantize", "matmul")  # the parsed network's layer types

    class Logger:
        WARNING = "warning"

        def __init__(self, severity):
            pass

    calls: list = []

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            FakeTensorRT.calls.append(("parse", Path(path).name))
            return True

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            FakeTensorRT.calls.append(("network", flags))
            return _FakeNetwork(FakeTensorRT.layers)

        def create_builder_config(self):
            return FakeConfig()

        def create_optimization_profile(self):
            return _FakeProfile()

        def build_serialized_network(self, network, config):
            return b"ENGINE:" + repr(sorted(config.profile.shapes)).encode()


class _FakeNetwork:
    def __init__(self, layers):
        self.num_layers = len(layers)
        self._layers = layers

    def get_layer(self, index):
        return type("Layer", (), {"type": self._layers[index]})()


class _FakeProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = (list(lo), list(opt), list(hi))


class _FakeCache(bytes):
    def serialize(self):
        return bytes(self) + b"+"


class FakeConfig:
    def set_memory_pool_limit(self, pool, size):
        FakeTensorRT.calls.append(("workspace", size))

    def create_timing_cache(self, blob):
        FakeTensorRT.calls.append(("cache in", bytes(blob)))
        return _FakeCache(blob)

    def set_timing_cache(self, cache, ignore_mismatch):  # TensorRT: False when the cache does not fit
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache

    def add_optimization_profile(self, profile):  # TensorRT: the profile's index, -1 when invalid
        self.profile = profile
        return 0


# -- a stand-in TensorRT runtime and cuda-python over host memory (TrtRunner's data path) ---------------


class FakeCudart:
    """cuda.bindings.runtime's calling convention ((error, *values)) over host memory, for TrtRunner's data path."""

    class cudaError_t:  # cuda-python's names
        cudaSuccess = 0

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    def __init__(self):
        self.memory: dict[int, object] = {}

    def cudaMalloc(self, n):
        import ctypes

        buf = ctypes.create_string_buffer(n)
        self.memory[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    def cudaFree(self, ptr):
        self.memory.pop(ptr, None)
        return (0,)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        import ctypes

        ctypes.memmove(dst, src, n)
        return (0,)

    cudaStreamCreate = staticmethod(lambda: (0, object()))
    cudaStreamSynchronize = cudaStreamDestroy = cudaSetDevice = staticmethod(lambda *a: (0,))
    cudaGetDeviceCount = staticmethod(lambda: (0, 1))
    cudaGetErrorString = staticmethod(lambda e: (0, b"fake error"))

    @staticmethod
    def cudaGetDeviceProperties(device):
        from types import SimpleNamespace

        return 0, SimpleNamespace(name=b"Fake GPU 80GB\0\0", major=9, minor=0)


def fake_tensorrt_module():
    """A stand-in `tensorrt` whose 'engines' are ONNX graphs run by ONNX Runtime, read and written
    through the device addresses TrtRunner hands it."""
    import ctypes
    import types

    import onnxruntime as ort

    trt = types.SimpleNamespace(__version__="10.99.0")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.nptype = lambda dtype: dtype

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return True

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def get_tensor_shape(self, name):
            batch = max(s[0] for s in self.shapes.values())  # an image_batch input may be 1
            return tuple(batch if d < 0 else d for d in self.engine.get_tensor_shape(name))

        def execute_async_v3(self, stream):
            feeds = {}
            for i in self.engine.session.get_inputs():
                dtype = self.engine.get_tensor_dtype(i.name)
                n = int(np.prod(self.shapes[i.name])) * dtype.itemsize
                raw = (ctypes.c_char * n).from_address(self.addresses[i.name])
                feeds[i.name] = np.frombuffer(raw, dtype=dtype).reshape(self.shapes[i.name]).copy()
            for o, value in zip(self.engine.session.get_outputs(), self.engine.session.run(None, feeds)):
                value = np.ascontiguousarray(value)
                ctypes.memmove(self.addresses[o.name], value.ctypes.data, value.nbytes)
            return True

    class Engine:
        def __init__(self, data):
            self.session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
            self.io = {t.name: ("in", t) for t in self.session.get_inputs()} | {
                t.name: ("out", t) for t in self.session.get_outputs()
            }
            self.num_io_tensors = len(self.io)
            # a real engine knows every output shape; learn them from one batch-1 run
            dummy = {
                t.name: np.zeros([1 if isinstance(d, str) else d for d in t.shape], self.get_tensor_dtype(t.name))
                for t in self.session.get_inputs()
            }
            outs = self.session.run(None, dummy)
            self.out_shapes = {o.name: (-1, *v.shape[1:]) for o, v in zip(self.session.get_outputs(), outs)}

        def get_tensor_name(self, i):
            return list(self.io)[i]

        def get_tensor_mode(self, name):
            return self.io[name][0]

        def get_tensor_dtype(self, name):
            return np.dtype(
                {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}[self.io[name][1].type]
            )

        def get_tensor_shape(self, name):
            if getattr(self, "out_shapes", None) and name in self.out_shapes:
                return self.out_shapes[name]
            return tuple(d if isinstance(d, int) else -1 for d in self.io[name][1].shape)

        def create_execution_context(self):
            return Context(self)

    trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=Engine)
    return trt


def install_fake_tensorrt(monkeypatch, trt, cudart) -> None:
    """Make `import tensorrt` and `from cuda.bindings import runtime` give the fakes (for one test)."""
    import types

    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    for name, module in {"tensorrt": trt, "cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": cudart}.items():
        monkeypatch.setitem(sys.modules, name, module)


# -- restr-serve in the serving environment ---------------------------------------------------------------

SERVE_START_TIMEOUT_S = 120


@functools.cache
def serve_python() -> str | None:
    """The serving environment's interpreter, if it has PyTriton (asked once a session)."""
    return serve_bench.serve_python()


class Server(serve_bench.ServerProcess):
    """restr-serve from the serving environment; a test fails (with the server's log) if it does not start."""

    def __init__(self, log: Path, *args: str):
        super().__init__(serve_python(), log, *args)

    def wait_ready(self) -> None:
        if not super().wait_ready(SERVE_START_TIMEOUT_S):
            self.stop()
            pytest.fail(f"restr-serve did not become ready (exit {self.proc.returncode}); log:\n{self.tail()}")

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()
