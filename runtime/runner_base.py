"""What every runner shares (runners.py's OrtRunner, trt_runner.py's TrtRunner, the benchmarks'
TorchRunner): the `Runner` protocol and `prepare_feeds`, the one check of a run's inputs.

Both runner modules import this one, so neither imports the other for it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from restr.runtime.formats import BATCH, IMAGE_BATCH, TensorSpec


class RunnerClosedError(RuntimeError):
    """`run` on a runner after `close()`."""


@runtime_checkable
class Runner(Protocol):
    """What the predictor, the benchmarks and the export verification need from a backend."""

    name: str  # the manifest key it runs, e.g. "vision_fp16"
    backend: str  # "onnxruntime", "tensorrt" or "pytorch"
    device: str  # "cpu" or "cuda:N"
    input_specs: tuple[TensorSpec, ...]
    output_specs: tuple[TensorSpec, ...]  # may be empty where the manifest names no outputs
    output_names: tuple[str, ...]
    max_batch: int | None  # the largest batch it takes; None: any

    def run(self, feeds: dict[str, np.ndarray], timings: dict | None = None) -> dict[str, np.ndarray]:
        """Named inputs -> named outputs (numpy, host memory). Thread-safe. `timings`, when given,
        gets the milliseconds of each phase added ("h2d", "compute", "d2h")."""
        ...

    def close(self) -> None:
        """Release the session or engine and its memory; idempotent. `run` then raises RunnerClosedError."""
        ...


def prepare_feeds(specs: tuple[TensorSpec, ...], feeds: dict[str, np.ndarray], where: str) -> tuple[dict[str, np.ndarray], int]:
    """Check `feeds` against `specs` and return contiguous arrays of the spec's dtypes and the batch.

    Raises ValueError naming the input on a missing name, a wrong fixed dimension or a batch that
    differs between inputs (all inputs share the batch axis, but an `image_batch` axis may also
    be 1: one image's features shared by the batch's expressions).
    """
    missing = [s.name for s in specs if s.name not in feeds]
    if missing:
        raise ValueError(f"{where}: missing inputs {missing} (expects {[s.name for s in specs]})")
    out, batch, shared = {}, None, []
    for s in specs:
        x = np.ascontiguousarray(feeds[s.name], dtype=np.dtype(s.dtype))
        if x.ndim != len(s.shape):
            raise ValueError(f"{where}: input {s.name!r} has shape {x.shape}, expected {list(s.shape)}")
        for got, want in zip(x.shape, s.shape):
            if not isinstance(want, str) and got != want:
                raise ValueError(f"{where}: input {s.name!r} has shape {x.shape}, expected {list(s.shape)}")
        out[s.name] = x
        if s.shape and s.shape[0] == IMAGE_BATCH:
            shared.append(s.name)
            continue
        if not s.shape or s.shape[0] != BATCH:  # no batch axis (the processing graphs' letterbox, rgb)
            continue
        if batch is not None and x.shape[0] != batch:
            raise ValueError(f"{where}: inputs disagree on the batch size ({batch} vs {x.shape[0]} for {s.name!r})")
        batch = x.shape[0]
    for name in shared:
        n = out[name].shape[0]
        if batch is None:
            batch = n
        elif n not in (1, batch):
            raise ValueError(f"{where}: input {name!r} has batch {n}: it must be 1 (shared) or the batch {batch}")
    return out, int(batch or 0)
