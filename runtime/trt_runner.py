"""Native TensorRT engines: TensorRT 10/11 Python API, cuda-python (`cuda.bindings`) for memory.

Kept thin on purpose: names, dtypes, fixed dimensions and batch checks come from the manifest
through `prepare_feeds` (the same code the ONNX Runtime path runs), and everything here is the
TensorRT 10+ tensor-name API:

    cudaSetDevice(device); engine = trt.Runtime(logger).deserialize_cuda_engine(bytes)
    context = engine.create_execution_context()             # a bounded pool, one per run in flight
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

from restr.runtime.artifacts import ArtifactError, Artifacts, GraphInfo, TensorSpec
from restr.runtime.runner_base import RunnerClosedError, prepare_feeds


class EngineMismatchError(ArtifactError):
    """An engine built by another TensorRT version or for another GPU."""


class TensorRTUnavailable(RuntimeError):
    """tensorrt, cuda-python or a CUDA GPU is missing on this machine."""


class DeviceError(RuntimeError):
    """A CUDA call or a TensorRT execution failed at run time (one line, naming the call)."""


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
        raise ArtifactError(
            f"{path}: engine sidecar is missing (it names the TensorRT version and GPU the engine needs)"
        ) from None
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
        raise TensorRTUnavailable(
            f"the tensorrt backend needs TensorRT 10 or newer (pip install 'restr[tensorrt]'): {e}"
        ) from None
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as e:
        raise TensorRTUnavailable(f"the tensorrt backend needs cuda-python (pip install 'restr[tensorrt]'): {e}") from None
    if int(trt.__version__.split(".")[0]) < 10:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is too old: the tensorrt backend needs 10 or newer")
    return trt, cudart


def check_cuda(cudart, result):
    """cuda-python returns (error, *values): raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, msg = cudart.cudaGetErrorString(err)
        raise DeviceError(f"CUDA error {err}: {msg.decode() if isinstance(msg, bytes) else msg}")
    return values[0] if len(values) == 1 else (values or None)


def describe_gpu(cudart, device: int = 0) -> dict:
    """{"gpu_name": ..., "compute_capability": "M.m"} of CUDA device `device`."""
    try:
        count = check_cuda(cudart, cudart.cudaGetDeviceCount())
    except DeviceError as e:  # no driver, or a driver too old for this CUDA runtime
        raise TensorRTUnavailable(f"no usable CUDA GPU: {e}") from None
    if not count:
        raise TensorRTUnavailable("no CUDA GPU is visible: the tensorrt backend needs one")
    prop = check_cuda(cudart, cudart.cudaGetDeviceProperties(device))
    name = prop.name.split(b"\0")[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
    return {"gpu_name": name, "compute_capability": f"{prop.major}.{prop.minor}"}


class _Slot:
    """One execution context with its CUDA stream, device buffers and timing events. A slot is used
    by one `run` at a time; the runner keeps a bounded pool of them."""

    def __init__(self, engine, cudart, name: str):
        self.cudart = cudart
        self.context = engine.create_execution_context()
        if self.context is None:  # TensorRT logs why (usually: out of GPU memory)
            raise DeviceError(f"{name}: TensorRT could not create an execution context (see the TensorRT log above)")
        self.stream = check_cuda(cudart, cudart.cudaStreamCreate())
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self.events: list = []

    def buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least `nbytes` for tensor `name`, grown when needed."""
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                check_cuda(self.cudart, self.cudart.cudaFree(ptr))
                del self.buffers[name]
            ptr = int(check_cuda(self.cudart, self.cudart.cudaMalloc(max(nbytes, 1))))
            self.buffers[name] = (ptr, nbytes)
        return ptr

    def timing_events(self) -> list:
        """Four CUDA events (before h2d, before compute, after compute, after d2h), made once."""
        while len(self.events) < 4:
            self.events.append(check_cuda(self.cudart, self.cudart.cudaEventCreate()))
        return self.events

    def close(self) -> None:
        for ptr, _ in self.buffers.values():
            self.cudart.cudaFree(ptr)
        self.buffers.clear()
        for ev in self.events:
            self.cudart.cudaEventDestroy(ev)
        self.events.clear()
        self.cudart.cudaStreamDestroy(self.stream)
        self.context = None


class TrtRunner:
    """A TensorRT engine from an export folder, checked against its sidecar and sha256.

    `specs` is the manifest entry of the ONNX graph the engine was built from (same key): its input
    specs are shared with `OrtRunner`. `run` is thread-safe: each call borrows an execution context
    (with its own CUDA stream and buffers) from a pool of at most `max_contexts`, made on demand and
    kept for reuse, so GPU memory is bounded however many threads call it; a call that finds every
    context busy waits for one. `close()` waits for the calls in flight, then frees everything.
    """

    backend = "tensorrt"

    def __init__(
        self, artifacts: Artifacts, info: GraphInfo, specs: GraphInfo | None = None, device: int = 0, max_contexts: int = 4
    ):
        if max_contexts < 1:
            raise ValueError(f"max_contexts must be at least 1, got {max_contexts}")
        trt, cudart = import_backends()
        self._trt, self._cudart, self._device_index = trt, cudart, int(device)
        self.device = f"cuda:{int(device)}"
        self.name = info.key
        self.max_contexts = int(max_contexts)
        self.sidecar = read_sidecar(info)
        check_sidecar(self.sidecar, tensorrt_version=trt.__version__, engine=str(info.path), **describe_gpu(cudart, device))
        self.max_batch = profile_max_batch(self.sidecar)
        data = artifacts.read_verified(info)
        check_cuda(cudart, cudart.cudaSetDevice(self._device_index))  # the engine's memory goes to this device
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
            raise ArtifactError(
                f"{info.path}: engine inputs {[s.name for s in inputs]} do not match the manifest's {[s.name for s in specs.inputs]}"
            )
        # The manifest's specs name the dynamic axes (batch, image_batch); the engine only says -1.
        self.input_specs = specs.inputs if specs is not None and specs.inputs else tuple(inputs)
        self.output_specs = tuple(outputs)
        self.output_names = tuple(s.name for s in outputs)
        self._cond = threading.Condition()
        self._create_lock = threading.Lock()
        self._idle: list[_Slot] = []
        self._slots = 0  # contexts alive (idle or borrowed)
        self._busy = 0  # runs in flight
        self._closed = False

    @property
    def contexts(self) -> int:
        """Execution contexts alive now (at most `max_contexts`)."""
        return self._slots

    def run(self, feeds: dict[str, np.ndarray], timings: dict | None = None) -> dict[str, np.ndarray]:
        """Named inputs -> named outputs (host numpy). With `timings`, adds the milliseconds of the
        host-to-device copies, the engine and the device-to-host copies ("h2d", "compute", "d2h"),
        measured with CUDA events on this call's stream."""
        if self._closed:
            raise RunnerClosedError(f"{self.name}: the TensorRT runner is closed")
        feeds, batch = prepare_feeds(self.input_specs, feeds, self.name)
        if self.max_batch is not None and batch > self.max_batch:
            raise ValueError(f"{self.name}: batch {batch} is above the engine's profile maximum {self.max_batch}")
        slot = self._acquire()
        try:
            return self._execute(slot, feeds, timings)
        finally:
            self._release(slot)

    def _acquire(self) -> _Slot:
        with self._cond:
            while True:
                if self._closed:
                    raise RunnerClosedError(f"{self.name}: the TensorRT runner is closed")
                if self._idle:
                    slot = self._idle.pop()
                    break
                if self._slots < self.max_contexts:
                    self._slots += 1  # reserved here, made outside the lock
                    slot = None
                    break
                self._cond.wait()
            self._busy += 1
        if slot is None:
            try:
                with self._create_lock:  # TensorRT objects are not thread-safe: contexts are made one at a time
                    check_cuda(self._cudart, self._cudart.cudaSetDevice(self._device_index))
                    slot = _Slot(self.engine, self._cudart, self.name)
            except BaseException:
                with self._cond:
                    self._slots -= 1
                    self._busy -= 1
                    self._cond.notify_all()
                raise
        return slot

    def _release(self, slot: _Slot) -> None:
        with self._cond:
            self._busy -= 1
            self._idle.append(slot)
            self._cond.notify_all()

    def _execute(self, slot: _Slot, feeds: dict[str, np.ndarray], timings: dict | None) -> dict[str, np.ndarray]:
        """The TensorRT part of `run`: copies in, execute_async_v3, copies out, on the slot's stream."""
        cudart, context, stream = self._cudart, slot.context, slot.stream
        check_cuda(cudart, cudart.cudaSetDevice(self._device_index))  # the current device is per thread
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        events = slot.timing_events() if timings is not None else None
        if events:
            check_cuda(cudart, cudart.cudaEventRecord(events[0], stream))
        for name, x in feeds.items():
            if not context.set_input_shape(name, x.shape):
                raise ValueError(f"{self.name}: TensorRT refused shape {x.shape} for {name!r} (outside the engine's profile)")
            ptr = slot.buffer(name, x.nbytes)
            check_cuda(cudart, cudart.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, h2d, stream))
            context.set_tensor_address(name, ptr)
        outs = {}
        for spec in self.output_specs:
            host = np.empty(tuple(context.get_tensor_shape(spec.name)), dtype=spec.dtype)
            context.set_tensor_address(spec.name, slot.buffer(spec.name, host.nbytes))
            outs[spec.name] = host
        if events:
            check_cuda(cudart, cudart.cudaEventRecord(events[1], stream))
        if not context.execute_async_v3(stream):
            raise DeviceError(f"{self.name}: TensorRT execution failed (see the TensorRT log above)")
        if events:
            check_cuda(cudart, cudart.cudaEventRecord(events[2], stream))
        for name, host in outs.items():
            check_cuda(cudart, cudart.cudaMemcpyAsync(host.ctypes.data, slot.buffers[name][0], host.nbytes, d2h, stream))
        if events:
            check_cuda(cudart, cudart.cudaEventRecord(events[3], stream))
        check_cuda(cudart, cudart.cudaStreamSynchronize(stream))
        if events:
            for phase, (a, b) in zip(("h2d", "compute", "d2h"), zip(events, events[1:])):
                timings[phase] = timings.get(phase, 0.0) + float(check_cuda(cudart, cudart.cudaEventElapsedTime(a, b)))
        return outs

    def close(self) -> None:
        """Refuse new runs, wait for those in flight, then free every context, stream and buffer.
        Idempotent; also done when the runner is collected."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()  # runs waiting for a context: they now raise RunnerClosedError
            while self._busy:
                self._cond.wait()
            idle, self._idle = self._idle, []
            self._slots -= len(idle)
        for slot in idle:
            slot.close()

    def __repr__(self) -> str:
        return f"TrtRunner({self.name!r}, device={self.device!r}, contexts={self._slots}/{self.max_contexts})"

    def __del__(self):
        try:
            if hasattr(self, "_cond"):
                self.close()
        except Exception:  # interpreter shutdown: CUDA may already be gone
            pass
