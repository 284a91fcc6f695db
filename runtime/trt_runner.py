"""Native TensorRT engines: TensorRT 10/11 Python API, cuda-python (`cuda.bindings`) for memory.

Kept thin on purpose: names, dtypes, fixed dimensions and batch checks come from the manifest
through `prepare_feeds` (the same code the ONNX Runtime path runs), and everything here is the
TensorRT 10+ tensor-name API:

    engine  = trt.Runtime(logger).deserialize_cuda_engine(bytes)
    context = engine.create_execution_context()             # one per thread
    context.set_input_shape(name, shape); context.set_tensor_address(name, device_ptr)
    context.execute_async_v3(stream)

An engine only loads in the TensorRT version and on the GPU that built it, so its sidecar
(`X.engine.json`: tensorrt_version, gpu_name, compute_capability, profiles) is checked first and a
mismatch is refused with a message saying what to rebuild. Only load engines from trusted sources:
deserialising an engine runs code from it.

tensorrt and cuda-python are imported when a runner is built, never at `import restr.runtime`.
"""
from __future__ import annotations

import json
import threading

import numpy as np

from restr.runtime.artifacts import Artifacts, ArtifactError, GraphInfo, TensorSpec
from restr.runtime.runners import prepare_feeds


class EngineMismatchError(ArtifactError):
    """An engine built by another TensorRT version or for another GPU."""


class TensorRTUnavailable(RuntimeError):
    """tensorrt, cuda-python or a CUDA GPU is missing on this machine."""


def check_sidecar(sidecar: dict, *, tensorrt_version: str, gpu_name: str, compute_capability, engine: str = "engine") -> None:
    """Refuse an engine whose sidecar names another TensorRT version, GPU or compute capability.

    `sidecar` is the parsed `X.engine.json`; the keyword arguments describe this machine.
    `compute_capability` may be "8.9", (8, 9) or [8, 9]. Raises EngineMismatchError.
    """
    built_v = str(sidecar.get("tensorrt_version") or "")
    built_gpu = str(sidecar.get("gpu_name") or "")
    built_cc = sidecar.get("compute_capability")
    if not built_v or not built_gpu or built_cc is None:
        raise EngineMismatchError(f"{engine}: sidecar lacks tensorrt_version, gpu_name or compute_capability; rebuild the engine")
    if built_v != str(tensorrt_version):
        raise EngineMismatchError(
            f"{engine}: built with TensorRT {built_v}, this machine has TensorRT {tensorrt_version}; "
            "engines only load in the TensorRT version that built them: rebuild it here with restr-export"
        )
    if _norm_gpu(built_gpu) != _norm_gpu(gpu_name) or _norm_cc(built_cc) != _norm_cc(compute_capability):
        raise EngineMismatchError(
            f"{engine}: built for {built_gpu} (compute capability {_norm_cc(built_cc)}), this GPU is {gpu_name} "
            f"(compute capability {_norm_cc(compute_capability)}); rebuild the engine on this GPU with restr-export"
        )


def read_sidecar(info: GraphInfo) -> dict:
    """The engine's sidecar JSON. Raises ArtifactError when missing or unreadable."""
    path = info.sidecar or info.path.with_name(info.path.name + ".json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: engine sidecar is missing (it names the TensorRT version and GPU the engine needs)") from None
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: engine sidecar is not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: engine sidecar is not a JSON object")
    return data


def profile_max_batch(sidecar: dict) -> int | None:
    """The largest batch every input's optimisation profile allows, or None if the sidecar has none."""
    limits = [int(p["max"][0]) for p in (sidecar.get("profiles") or {}).values() if isinstance(p, dict) and p.get("max")]
    return min(limits) if limits else None


def _norm_gpu(name: str) -> str:
    return " ".join(str(name).split()).lower()


def _norm_cc(cc) -> str:
    if isinstance(cc, (list, tuple)):
        return ".".join(str(int(x)) for x in cc)
    return str(cc).strip()


def import_backends():
    """(tensorrt, cuda.bindings.runtime), or TensorRTUnavailable saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(f"the tensorrt backend needs TensorRT 10 or newer (pip install 'restr[gpu]'): {e}") from None
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as e:
        raise TensorRTUnavailable(f"the tensorrt backend needs cuda-python (pip install 'restr[gpu]'): {e}") from None
    if int(trt.__version__.split(".")[0]) < 10:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is too old: the tensorrt backend needs 10 or newer")
    return trt, cudart


def _check(cudart, result):
    """cuda-python returns (error, *values): raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, msg = cudart.cudaGetErrorString(err)
        raise RuntimeError(f"CUDA error {err}: {msg.decode() if isinstance(msg, bytes) else msg}")
    return values[0] if len(values) == 1 else (values or None)


def describe_gpu(cudart, device: int = 0) -> dict:
    """{"gpu_name": ..., "compute_capability": "M.m"} of CUDA device `device`."""
    try:
        count = _check(cudart, cudart.cudaGetDeviceCount())
    except RuntimeError as e:  # no driver, or a driver too old for this CUDA runtime
        raise TensorRTUnavailable(f"no usable CUDA GPU: {e}") from None
    if not count:
        raise TensorRTUnavailable("no CUDA GPU is visible: the tensorrt backend needs one")
    prop = _check(cudart, cudart.cudaGetDeviceProperties(device))
    name = prop.name.split(b"\0")[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
    return {"gpu_name": name, "compute_capability": f"{prop.major}.{prop.minor}"}


class _ThreadState:
    """What one thread needs to run the engine: its own execution context, stream and buffers."""

    def __init__(self, engine, cudart, device: int):
        self.cudart = cudart
        _check(cudart, cudart.cudaSetDevice(device))
        self.context = engine.create_execution_context()
        self.stream = _check(cudart, cudart.cudaStreamCreate())
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least `nbytes` for tensor `name`, grown when needed."""
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self.cudart, self.cudart.cudaFree(ptr))
            ptr = int(_check(self.cudart, self.cudart.cudaMalloc(max(nbytes, 1))))
            self.buffers[name] = (ptr, nbytes)
        return ptr

    def close(self) -> None:
        for ptr, _ in self.buffers.values():
            self.cudart.cudaFree(ptr)
        self.buffers.clear()
        self.cudart.cudaStreamDestroy(self.stream)
        self.context = None


class TrtRunner:
    """A TensorRT engine from an export folder, checked against its sidecar and sha256.

    `specs` is the manifest entry of the ONNX graph the engine was built from (same key): its input
    specs are shared with `OrtRunner`. Each calling thread gets its own execution context and CUDA
    stream, so `run` is thread-safe.
    """

    def __init__(self, artifacts: Artifacts, info: GraphInfo, specs: GraphInfo | None = None, device: int = 0):
        trt, cudart = import_backends()
        self._trt, self._cudart, self.device = trt, cudart, device
        self.name = info.key
        self.sidecar = read_sidecar(info)
        check_sidecar(self.sidecar, tensorrt_version=trt.__version__, engine=str(info.path), **describe_gpu(cudart, device))
        self.max_batch = profile_max_batch(self.sidecar)
        data = artifacts.read_verified(info)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise ArtifactError(f"{info.path}: TensorRT could not deserialise the engine (see the TensorRT log above)")
        inputs, outputs = [], []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            shape = tuple("batch" if d < 0 else int(d) for d in self.engine.get_tensor_shape(name))
            spec = TensorSpec(name, dtype.name, shape)
            (inputs if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
        if specs is not None and sorted(s.name for s in specs.inputs) != sorted(s.name for s in inputs):
            raise ArtifactError(f"{info.path}: engine inputs {[s.name for s in inputs]} do not match the manifest's {[s.name for s in specs.inputs]}")
        # The manifest's specs name the dynamic axes (batch, image_batch); the engine only says -1.
        self.input_specs = specs.inputs if specs is not None and specs.inputs else tuple(inputs)
        self.output_specs = tuple(outputs)
        self.output_names = tuple(s.name for s in outputs)
        self._local = threading.local()
        self._states: list[_ThreadState] = []
        self._lock = threading.Lock()

    def _state(self) -> _ThreadState:
        state = getattr(self._local, "state", None)
        if state is None:
            with self._lock:  # context creation is serialised; running is not
                state = _ThreadState(self.engine, self._cudart, self.device)
                self._states.append(state)
            self._local.state = state
        return state

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds, batch = prepare_feeds(self.input_specs, feeds, self.name)
        if self.max_batch is not None and batch > self.max_batch:
            raise ValueError(f"{self.name}: batch {batch} is above the engine's profile maximum {self.max_batch}")
        cudart, st = self._cudart, self._state()
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, x in feeds.items():
            if not st.context.set_input_shape(name, x.shape):
                raise ValueError(f"{self.name}: TensorRT refused shape {x.shape} for {name!r} (outside the engine's profile)")
            ptr = st.buffer(name, x.nbytes)
            _check(cudart, cudart.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, h2d, st.stream))
            st.context.set_tensor_address(name, ptr)
        outs = {}
        for spec in self.output_specs:
            host = np.empty(tuple(st.context.get_tensor_shape(spec.name)), dtype=spec.dtype)
            st.context.set_tensor_address(spec.name, st.buffer(spec.name, host.nbytes))
            outs[spec.name] = host
        if not st.context.execute_async_v3(st.stream):
            raise RuntimeError(f"{self.name}: TensorRT execution failed (see the TensorRT log above)")
        for name, host in outs.items():
            _check(cudart, cudart.cudaMemcpyAsync(host.ctypes.data, st.buffers[name][0], host.nbytes, d2h, st.stream))
        _check(cudart, cudart.cudaStreamSynchronize(st.stream))
        return outs

    def close(self) -> None:
        """Free every thread's buffers and streams (also done when the runner is collected)."""
        with self._lock:
            for state in self._states:
                state.close()
            self._states.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: CUDA may already be gone
            pass
