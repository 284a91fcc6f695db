"""Runners: one loaded graph or engine, fed numpy arrays by name (Polygraphy's loader/runner split).

`Artifacts` (the loader side) finds and checks a file; a runner turns it into something that runs:

    runner = make_runner(artifacts, "vision", backend="ort")
    out = runner.run({"image": x})            # {"visual_features": (B, N_v, D) float32}

Every runner keeps one protocol (`Runner`): `name`, `backend`, `device`, `input_specs`,
`output_specs`, `output_names`, `max_batch`, `run(feeds, timings=None)` and `close()`. `run` checks its inputs with
`prepare_feeds` (names, dtypes, fixed dimensions, the batch) the same way on every backend, and when
given a dict adds the milliseconds of its phases to it: "h2d", "compute", "d2h" on a GPU, "compute"
on a CPU. `OrtRunner` uses ONNX Runtime (CPU, or the CUDA execution provider with IO binding and
CUDA graphs); `TrtRunner` (trt_runner.py) runs native TensorRT engines. `run` is thread-safe on both.
The protocol and `prepare_feeds` live in runner_base.py, which both runner modules import.
"""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np

from restr.runtime.artifacts import ArtifactError, Artifacts, GraphInfo, TensorSpec
from restr.runtime.errors import first_line
from restr.runtime.formats import BACKENDS, IMAGE_BATCH, PROCESSING_GRAPHS, graph_key  # noqa: F401  (graph_key: re-exported)
from restr.runtime.runner_base import Runner, RunnerClosedError, prepare_feeds
from restr.runtime.trt_runner import TrtRunner

PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")  # preference order for "auto"


@dataclass(frozen=True)
class Region:
    """Rows [start, start + count) of a bound buffer (an OrtValue), bound by address: a batch's rows
    read or written in place, without a copy (a photo preprocessed into its row of the image batch,
    one image's row of visual features)."""

    value: object  # OrtValue
    start: int
    count: int

    def bind(self, io, name: str, output: bool, device_id: int = 0) -> None:
        """Bind these rows to `io` as input or output `name`."""
        shape = self.value.shape()
        if not 0 <= self.start <= self.start + self.count <= shape[0]:
            raise ValueError(f"rows [{self.start}, {self.start + self.count}) of a buffer of {shape[0]}")
        row = self.value.tensor_size_in_bytes() // max(1, shape[0])
        where = self.value.device_name().lower()
        bind = io.bind_output if output else io.bind_input
        bind(
            name,
            where,
            0 if where == "cpu" else device_id,
            self.value.element_type(),
            [self.count, *shape[1:]],
            self.value.data_ptr() + self.start * row,
        )


def bucket_shape(spec: TensorSpec, batch: int) -> tuple[int, ...]:
    """`spec`'s shape at `batch`, an image_batch axis at 1 (one image shared by the batch)."""
    return tuple(1 if d == IMAGE_BATCH else batch if isinstance(d, str) else int(d) for d in spec.shape)


def buckets(max_batch: int) -> tuple[int, ...]:
    """Batch sizes that get their own CUDA graph: powers of two up to max_batch, and max_batch."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return tuple(sizes + [max_batch])


def pad_batch(x: np.ndarray, batch: int) -> np.ndarray:
    """x with its first axis grown to `batch` by repeating its last row (rows of real data, so the
    padding computes nothing undefined); the caller keeps the first len(x) results."""
    if len(x) >= batch:
        return x
    return np.concatenate([x, np.repeat(x[-1:], batch - len(x), axis=0)])


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
            warnings.warn(
                f"{name} is not available in this onnxruntime build (has: {', '.join(available)}); skipped",
                RuntimeWarning,
                stacklevel=2,
            )
        elif name not in chosen:
            chosen.append(name)
    return [p for p in chosen if p != cpu] + [cpu]


class OrtRunner:
    """An ONNX graph in an `onnxruntime.InferenceSession`, on the CPU or the CUDA execution provider.

    The file's sha256 is checked on the bytes the session is built from. `threads` sets ONNX
    Runtime's intra-op threads (None: its default, one per core).

    On CUDA the runner keeps, per batch bucket (`buckets(max_batch)`), device buffers for every input
    and output bound once (`DeviceBinding`), so ONNX Runtime can capture each bucket's run as a
    CUDA graph and replay it (`cuda_graph`); a batch runs in the smallest bucket that holds it,
    padded. Graphs with dynamic shapes other than the batch (pre- and post-processing) get
    bindings per set of shapes from their caller (`fixed_binding`: the predictor's, per photo
    size), or run once on given values (`run_device`). Sessions are thread-safe; a bucket's
    buffers are shared, so runs on CUDA are serialised by a lock.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        artifacts: Artifacts,
        info: GraphInfo,
        providers=None,
        threads: int | None = None,
        cuda_graph: bool = True,
        max_batch: int | None = None,
        device_id: int = 0,
        bind: bool | None = None,
        release_memory: bool = False,
    ):
        import onnxruntime as ort  # imported here: keeps `import restr.runtime` light

        self._ort = ort
        self.name = info.key
        self.info = info
        self.input_specs = info.inputs
        self.output_specs = info.outputs  # the manifest's; may be empty (then output_names come from the graph)
        self.output_names = tuple(s.name for s in info.outputs)
        self.providers = choose_providers(providers)
        self.on_cuda = self.providers[0] in _GPU_PROVIDERS
        self.device = f"cuda:{device_id}" if self.on_cuda else "cpu"
        self.device_id = device_id
        # Device bindings: on CUDA by default; `bind=True` on a CPU runs the same code path with host
        # buffers (how the tests exercise it without a GPU). Batch buckets where max_batch is given.
        self.bound = self.on_cuda if bind is None else bool(bind)
        self.max_batch = max_batch if self.bound and max_batch else None
        self.cuda_graph = bool(cuda_graph and self.on_cuda and self.bound)
        self._artifacts = artifacts  # to rebuild the session without CUDA graphs, should capture be refused
        self._threads = threads
        self._lock = threading.Lock()
        self._bindings: dict[tuple, DeviceBinding] = {}
        # Runs outside the bindings, with CUDA graphs on: gpu_graph_id -1, neither capture nor replay (a
        # run without an id would capture graph 0 on one-off buffers, or replay graph 0 on another
        # binding's).
        self._uncaptured = ort.RunOptions()
        self._uncaptured.add_run_config_entry("gpu_graph_id", "-1")
        # release_memory: the CPU arena shrinks back after each run outside the bindings (a processing
        # graph's tensors are the photo's size: 12 MP keeps hundreds of MB otherwise); slower when
        # many photos follow, so for one-off runs.
        self._release = release_memory
        if release_memory:
            self._uncaptured.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        try:
            self.session = self._session(self.cuda_graph)
        except ArtifactError as e:
            if not (self.cuda_graph and any(w in str(e).lower() for w in ("cuda graph", "graph capture"))):
                raise
            # ONNX Runtime refuses capture for a graph with a Memcpy node: run it uncaptured.
            self.cuda_graph = False
            self.session = self._session(False)
        self._check_io()
        if not self.output_names:
            self.output_names = tuple(o.name for o in self.session.get_outputs())

    def _check_io(self) -> None:
        """The graph's inputs and outputs are the manifest's: names, ranks, fixed dimensions."""
        for kind, specs, values in (
            ("inputs", self.input_specs, self.session.get_inputs()),
            ("outputs", self.info.outputs, self.session.get_outputs()),
        ):
            if not specs and kind == "outputs":
                continue
            graph = {v.name: v.shape for v in values}
            manifest = {s.name: s.shape for s in specs}
            ok = sorted(graph) == sorted(manifest) and all(
                len(graph[n]) == len(shape) and all(isinstance(w, str) or g == w for g, w in zip(graph[n], shape))
                for n, shape in manifest.items()
            )
            if not ok:
                raise ArtifactError(f"{self.info.path}: graph {kind} {graph} do not match the manifest's {manifest}")

    def _session(self, cuda_graph: bool):
        ort = self._ort
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: ORT's warnings are not for end users
        if self._threads:
            opts.intra_op_num_threads = int(self._threads)
            opts.inter_op_num_threads = 1
        providers = [
            (p, {"device_id": str(self.device_id), "enable_cuda_graph": "1" if cuda_graph else "0"})
            if p == PROVIDER_ALIASES["cuda"]
            else p
            for p in self.providers
        ]
        data = self._artifacts.read_verified(self.info)  # checked on the very bytes handed to ONNX Runtime
        try:
            return ort.InferenceSession(data, sess_options=opts, providers=providers)
        except Exception as e:  # ORT raises its own exception types for a bad model
            raise ArtifactError(f"{self.info.path}: not a loadable ONNX graph ({first_line(e)})") from None

    # -- the protocol ----------------------------------------------------------------------------

    def run(self, feeds: dict[str, np.ndarray], timings: dict | None = None, outputs=None) -> dict[str, np.ndarray]:
        """The protocol's `run`; `outputs` names the outputs wanted where not all are (ONNX Runtime
        then hands only those over: a postprocess asked for masks returns no photo-sized probabilities)."""
        feeds, batch = prepare_feeds(self.input_specs, feeds, self.name)
        if self.session is None:
            raise RunnerClosedError(f"{self.name}: the runner is closed")
        if not self.max_batch:  # CPU, or a graph without batch buckets
            names = list(outputs or self.output_names)
            t0 = time.perf_counter()
            outs = self.session.run(names, feeds, self._no_capture())
            _add(timings, "compute", t0)
            return dict(zip(names, outs))
        if batch > self.max_batch:
            raise ValueError(f"{self.name}: batch {batch} is above the runner's max_batch {self.max_batch}")
        with self._lock:
            binding = self.binding(batch)
            t0 = time.perf_counter()
            for name, x in feeds.items():
                if name in binding.shared and len(x) != 1:
                    raise ValueError(f"{self.name}: on {self.device} {name!r} takes one image's features (batch 1), got {len(x)}")
                binding.inputs[name].update_inplace(x if name in binding.shared else pad_batch(x, binding.batch))
            t1 = time.perf_counter()
            self.replay(binding)
            t2 = time.perf_counter()
            outs = {name: host(binding.outputs[name])[:batch] for name in self.output_names}
            _add(timings, "h2d", t0, t1)
            _add(timings, "compute", t1, t2)
            _add(timings, "d2h", t2)
        return outs

    def close(self) -> None:
        with self._lock:
            self._bindings.clear()
            self.session = None

    # -- the GPU side ----------------------------------------------------------------------------

    def bucket(self, batch: int) -> int:
        """The batch bucket a batch of `batch` runs in."""
        return next(b for b in buckets(self.max_batch) if b >= batch)

    def binding(self, batch: int, inputs: dict | None = None, owner: str = "run") -> DeviceBinding:
        """The device binding of `batch`'s bucket for `owner` (made on first use; `inputs` then names
        device buffers, another graph's outputs, to bind instead of new ones: they must be of the
        bucket's shape). Each owner has its own buffers ("run": this runner's `run`; the predictor's
        GPU path: its own), and each binding its own CUDA graph, replayed on those fixed buffers."""
        b = self.bucket(batch)
        shapes = {s.name: bucket_shape(s, b) for s in (*self.input_specs, *self.info.outputs)}
        return self.fixed_binding((owner, b), shapes, inputs, batch=b)

    def fixed_binding(
        self, key: tuple, shapes: dict, given: dict | None = None, on_host: tuple = (), batch: int | None = None
    ) -> DeviceBinding:
        """The binding named `key` (made on first use): a buffer of `shapes[name]` for every input and
        output, except those `given` (OrtValues of other bindings, bound as they are); names in
        `on_host` get host buffers (values that ONNX Runtime's shape arithmetic reads on the CPU).
        For graphs whose shapes are fixed by more than the batch, e.g. the processing graphs at one
        photo size. A binding's CUDA graph is captured on its buffers, so it lives as long as the runner."""
        if key not in self._bindings:
            self._bindings[key] = DeviceBinding(self, shapes, len(self._bindings), given or {}, on_host, batch)
        return self._bindings[key]

    def replay(self, binding: DeviceBinding) -> None:
        """Run one bucket on its bound buffers (captured as a CUDA graph where allowed)."""
        if self.session is None:
            raise RunnerClosedError(f"{self.name}: the runner is closed")
        try:
            self.session.run_with_iobinding(binding.io, binding.run_options)
        except Exception as e:
            if not (self.cuda_graph and "graph capture" in str(e)):
                raise
            # A node ONNX Runtime placed on the CPU forbids capture: run this graph uncaptured.
            warnings.warn(
                f"{self.name}: CUDA graph capture refused by ONNX Runtime ({first_line(e)}); running without",
                RuntimeWarning,
                stacklevel=2,
            )
            self.cuda_graph = False
            self.session = self._session(False)
            for b in list(self._bindings.values()):
                b.rebind()
            self.session.run_with_iobinding(binding.io, binding.run_options)

    def run_device(self, inputs: dict, outputs: dict) -> dict:
        """One run with IO binding: `inputs` maps names to OrtValues (on any device), `Region`s of
        them or numpy arrays (copied to the session's device); `outputs` maps output names to an
        OrtValue or `Region` to write into, or to "cpu" / "cuda" (allocated by ONNX Runtime there).
        Returns the outputs that ONNX Runtime allocated or that were given as OrtValues."""
        if self.session is None:
            raise RunnerClosedError(f"{self.name}: the runner is closed")
        io = self.session.io_binding()
        for name, x in inputs.items():
            if isinstance(x, Region):
                x.bind(io, name, False, self.device_id)
            else:
                io.bind_ortvalue_input(name, self.value(x) if isinstance(x, np.ndarray) else x)
        for name, target in outputs.items():
            if isinstance(target, str):
                io.bind_output(name, *self._where(target != "cpu"))
            elif isinstance(target, Region):
                target.bind(io, name, True, self.device_id)
            else:
                io.bind_ortvalue_output(name, target)
        self.session.run_with_iobinding(io, self._no_capture())
        return dict(zip(outputs, io.get_outputs()))

    def _no_capture(self):
        """Run options for a run outside the bindings."""
        return self._uncaptured if self.cuda_graph or self._release else None

    def value(self, x: np.ndarray, on_host: bool = False):
        """A numpy array as an OrtValue on this runner's device (or on the host)."""
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x), *self._where(not on_host))

    def _where(self, device: bool) -> tuple[str, int]:
        return ("cuda", self.device_id) if device and self.on_cuda else ("cpu", 0)

    def __repr__(self) -> str:
        return f"OrtRunner({self.name!r}, providers={self.providers}, cuda_graph={self.cuda_graph})"


class DeviceBinding:
    """One set of fixed shapes of an `OrtRunner` on the GPU (a batch bucket, or a photo size): buffers
    for every input and output, bound once to an IO binding, and the run options that give it its
    own CUDA graph."""

    def __init__(
        self, runner: OrtRunner, shapes: dict, graph_id: int, given: dict, on_host: tuple = (), batch: int | None = None
    ):
        ort = runner._ort
        self.runner, self.batch = runner, batch
        specs = {s.name: s for s in (*runner.input_specs, *runner.output_specs)}
        self.shared = {s.name for s in runner.input_specs if s.shape and s.shape[0] == IMAGE_BATCH}

        def buffer(name):
            where = runner._where(name not in on_host)
            return ort.OrtValue.ortvalue_from_shape_and_type(tuple(shapes[name]), np.dtype(specs[name].dtype).type, *where)

        self.inputs = {s.name: given.get(s.name) or buffer(s.name) for s in runner.input_specs}
        self.outputs = {s.name: given.get(s.name) or buffer(s.name) for s in runner.output_specs}
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
        self.rebind()

    def rebind(self) -> None:
        """(Re)bind the buffers to the runner's current session."""
        self.io = self.runner.session.io_binding()
        for names, output in ((self.inputs, False), (self.outputs, True)):
            for name, value in names.items():
                if isinstance(value, Region):
                    value.bind(self.io, name, output, self.runner.device_id)
                elif output:
                    self.io.bind_ortvalue_output(name, value)
                else:
                    self.io.bind_ortvalue_input(name, value)

    def run(self) -> None:
        self.runner.replay(self)


def host(value) -> np.ndarray:
    """An OrtValue's data as a numpy array of its own (a device value is copied to the host; a host
    value's array is a view of a buffer that the next run overwrites, so it is copied too)."""
    a = value.numpy()
    return a.copy() if value.device_name().lower() == "cpu" else a


def _add(timings: dict | None, phase: str, t0: float, t1: float | None = None) -> None:
    if timings is not None:
        timings[phase] = timings.get(phase, 0.0) + ((time.perf_counter() if t1 is None else t1) - t0) * 1000.0


def make_runner(
    artifacts: Artifacts,
    key: str,
    backend: str = "ort",
    providers=None,
    threads: int | None = None,
    cuda_graph: bool = True,
    release_memory: bool = False,
) -> Runner:
    """The runner for manifest graph `key` on `backend` ("ort" or "tensorrt"). On CUDA, ONNX
    Runtime runners of the model graphs get batch buckets up to the manifest's max_batch."""
    if backend == "ort":
        return OrtRunner(
            artifacts,
            artifacts.graph(key),
            providers=providers,
            threads=threads,
            cuda_graph=cuda_graph,
            max_batch=artifacts.max_batch if key not in PROCESSING_GRAPHS else None,
            release_memory=release_memory,
        )
    if backend == "tensorrt":
        return TrtRunner(artifacts, artifacts.engine(key), specs=artifacts.graphs.get(key))
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
