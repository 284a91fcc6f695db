"""Runners: one loaded graph or engine, fed numpy arrays by name (Polygraphy's loader/runner split).

`Artifacts` (the loader side) finds and checks a file; a runner turns it into something that runs:

    runner = make_runner(artifacts, "vision", backend="ort")
    out = runner.run({"image": x})            # {"visual_features": (B, N_v, D) float32}

`OrtRunner` uses ONNX Runtime (CPU; the CUDA and TensorRT execution providers when present and
asked for); `TrtRunner` (trt_runner.py) runs native TensorRT engines. Both share `prepare_feeds`,
which checks names, dtypes and the fixed dimensions against the manifest's specs, so a bad call
fails the same way on every backend. `run` is thread-safe on both.
"""
from __future__ import annotations

import warnings
from typing import Protocol, runtime_checkable

import numpy as np

from restr.runtime.artifacts import Artifacts, ArtifactError, GraphInfo, TensorSpec

BACKENDS = ("ort", "tensorrt")
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")  # preference order for "auto"


@runtime_checkable
class Runner(Protocol):
    """What every backend's runner offers (the predictor and the benchmark use nothing else).

    name: the manifest key it runs ("vision", "vision_fp16"). backend: "onnxruntime", "tensorrt"
    or "pytorch". device: "cpu" or "cuda:N". input_specs / output_names: what `run` takes and
    gives. max_batch: the largest batch it accepts (an engine's profile), None for no limit.

    run(feeds, timings=None): named inputs -> named outputs (numpy, host memory); thread-safe.
    With a dict for `timings`, the runner ADDS the milliseconds of each phase to it: "h2d",
    "compute", "d2h" (on a GPU measured with CUDA events on the runner's own stream; on a CPU
    "compute" alone, as wall clock).

    close(): frees what the runner holds; idempotent. `run` after it raises a RuntimeError
    subclass naming the runner.
    """

    name: str
    backend: str
    device: str
    input_specs: tuple[TensorSpec, ...]
    output_names: tuple[str, ...]
    max_batch: int | None

    def run(self, feeds: dict[str, np.ndarray], timings: dict | None = None) -> dict[str, np.ndarray]:
        """Named inputs -> named outputs (numpy, host memory). Thread-safe."""
        ...

    def close(self) -> None:
        """Free the runner's resources; idempotent."""
        ...


def prepare_feeds(specs: tuple[TensorSpec, ...], feeds: dict[str, np.ndarray], where: str) -> tuple[dict[str, np.ndarray], int]:
    """Check `feeds` against `specs` and return contiguous arrays of the spec's dtypes and the batch.

    Raises ValueError naming the input on a missing name, a wrong fixed dimension or a batch that
    differs between inputs (all inputs of a restr graph share the batch axis).
    """
    missing = [s.name for s in specs if s.name not in feeds]
    if missing:
        raise ValueError(f"{where}: missing inputs {missing} (expects {[s.name for s in specs]})")
    out, batch = {}, None
    for s in specs:
        x = np.ascontiguousarray(feeds[s.name], dtype=np.dtype(s.dtype))
        if x.ndim != len(s.shape):
            raise ValueError(f"{where}: input {s.name!r} has shape {x.shape}, expected {list(s.shape)}")
        for got, want in zip(x.shape, s.shape):
            if not isinstance(want, str) and got != want:
                raise ValueError(f"{where}: input {s.name!r} has shape {x.shape}, expected {list(s.shape)}")
        if batch is not None and x.shape[0] != batch:
            raise ValueError(f"{where}: inputs disagree on the batch size ({batch} vs {x.shape[0]} for {s.name!r})")
        batch = x.shape[0]
        out[s.name] = x
    return out, int(batch or 0)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def choose_providers(requested=None, available: list[str] | None = None) -> list[str]:
    """ONNX Runtime execution providers to use, most preferred first, CPU always last.

    `requested`: None or "cpu" -> CPU only; "auto" -> TensorRT and CUDA where this onnxruntime build
    has them, then CPU; a list (or comma-separated string) of names or aliases (tensorrt, cuda,
    cpu): those available, in order, with a warning for each one this build lacks.
    """
    available = available_providers() if available is None else available
    cpu = PROVIDER_ALIASES["cpu"]
    if requested is None:
        return [cpu]
    if isinstance(requested, str):
        if requested.strip().lower() == "auto":
            return [p for p in _GPU_PROVIDERS if p in available] + [cpu]
        requested = [r for r in requested.split(",") if r.strip()]
    chosen = []
    for r in requested:
        name = PROVIDER_ALIASES.get(r.strip().lower(), r.strip())
        if name not in PROVIDER_ALIASES.values() and name not in available:
            raise ValueError(f"unknown ONNX Runtime provider {r!r} (use tensorrt, cuda, cpu or auto)")
        if name not in available:
            warnings.warn(f"{name} is not available in this onnxruntime build (has: {', '.join(available)}); skipped", RuntimeWarning, stacklevel=2)
        elif name not in chosen:
            chosen.append(name)
    return [p for p in chosen if p != cpu] + [cpu]


class OrtRunner:
    """An ONNX graph in an `onnxruntime.InferenceSession`.

    The file's sha256 is checked on the bytes the session is built from. `threads` sets ONNX
    Runtime's intra-op threads (None: its default, one per core). `InferenceSession.run` is
    thread-safe, so one runner serves many threads.
    """

    def __init__(self, artifacts: Artifacts, info: GraphInfo, providers=None, threads: int | None = None):
        import onnxruntime as ort  # imported here: keeps `import restr.runtime` light

        self.name = info.key
        self.info = info
        self.input_specs = info.inputs
        self.output_names = tuple(s.name for s in info.outputs)
        self.providers = choose_providers(providers)
        data = artifacts.read_verified(info)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: ORT's warnings are not for end users
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(data, sess_options=opts, providers=self.providers)
        except Exception as e:  # ORT raises its own exception types for a bad model
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ArtifactError(f"{info.path}: not a loadable ONNX graph ({first})") from None
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(s.name for s in self.input_specs):
            raise ArtifactError(f"{info.path}: graph inputs {names} do not match the manifest's {[s.name for s in self.input_specs]}")
        if not self.output_names:
            self.output_names = tuple(o.name for o in self.session.get_outputs())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds, _ = prepare_feeds(self.input_specs, feeds, self.name)
        outs = self.session.run(list(self.output_names), feeds)
        return dict(zip(self.output_names, outs))

    def __repr__(self) -> str:
        return f"OrtRunner({self.name!r}, providers={self.providers})"


def graph_key(stage: str, precision: str) -> str:
    """Manifest key of a stage at a precision: ("vision", "fp16") -> "vision_fp16"."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
    return stage if precision == "fp32" else f"{stage}_fp16"


def make_runner(artifacts: Artifacts, key: str, backend: str = "ort", providers=None, threads: int | None = None) -> Runner:
    """The runner for manifest graph `key` on `backend` ("ort" or "tensorrt")."""
    if backend == "ort":
        return OrtRunner(artifacts, artifacts.graph(key), providers=providers, threads=threads)
    if backend == "tensorrt":
        from restr.runtime.trt_runner import TrtRunner

        return TrtRunner(artifacts, artifacts.engine(key), specs=artifacts.graphs.get(key))
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
