"""TensorRT engines from the FP16 and INT8 ONNX graphs: strongly typed, one optimisation profile, a
shared timing cache, and a sidecar naming what the engine is tied to.

TensorRT 11 builds strongly typed networks only: the precision is the ONNX graph's own, so no
precision flag is set here. TensorRT 10 takes the same build with the STRONGLY_TYPED creation flag
(11 accepts and ignores it).

- FP16 graphs: FP16 through (restr.export.fp16).
- INT8 graphs (restr.export.int8): explicit quantization. The parser turns each QuantizeLinear /
  DequantizeLinear into a Quantize / Dequantize layer with its constant scale (zero point 0, per
  output channel for the weights), and the builder fuses each DQ -> MatMul into an INT8 kernel; no
  INT8 flag and no calibrator (both belong to implicit quantization, deprecated in 10 and gone in
  11). The float parts of these graphs are FP32. `trt_build` refuses an INT8 graph whose network
  holds no Quantize or Dequantize layer (explicit quantization lost in parsing). Not timed: no
  machine this project gets can install TensorRT.

Everything around the builder (profiles from the maximum batch, input specs from the manifest, the
sidecar, the cache path, the instructions printed where TensorRT is missing) is plain Python that
the tests run without a GPU. The functions named `trt_*` are the only ones that call TensorRT; they
are written to NVIDIA's documented Python API, and tests/test_tensorrt_api.py holds every attribute
they use against the names compiled into TensorRT's binding module.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from restr.export.manifest import sha256_file, utc_now, write_json
from restr.runtime.artifacts import TensorSpec
from restr.runtime.atomic import atomic_write
from restr.runtime.formats import engine_file, key_precision

ENGINE_PRECISION = "fp16-strongly-typed"
# Engine precision by the precision of the ONNX graph it is built from.
ENGINE_PRECISIONS = {"fp16": ENGINE_PRECISION, "int8": "int8-strongly-typed"}
ENGINE_SOURCE_PRECISIONS = tuple(ENGINE_PRECISIONS)  # which graphs get engines: never FP32
GIB = 1 << 30


class EngineUnavailable(RuntimeError):
    """TensorRT, cuda-python or a CUDA GPU is missing here; the message says what."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse or build a graph: one line with TensorRT's first error."""


# ------------------------------------------------------------------ shared, tested without a GPU


def profiles(inputs, max_batch: int) -> dict[str, dict[str, list[int]]]:
    """One optimisation profile: per input, min / opt / max shapes with batch 1 / 1 / `max_batch`.

    `inputs`: TensorSpecs or the manifest's input dicts. An `image_batch` axis (fusion_decoder's
    shared visual features) is pinned to 1, so the graph's broadcast over the batch is static.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    from restr.runtime.runners import bucket_shape  # the runtime's buffers and the engine's profile agree

    specs = [t if isinstance(t, TensorSpec) else TensorSpec.from_dict(t) for t in inputs]
    return {t.name: {k: list(bucket_shape(t, b)) for k, b in (("min", 1), ("opt", 1), ("max", max_batch))} for t in specs}


def sidecar(graph_key: str, source: dict, profile: dict, tensorrt_version: str, gpu: dict) -> dict:
    """The `X.engine.json` beside an engine: what it was built from and what it only runs on.

    `source`: the manifest entry of the ONNX graph; `gpu`: {"gpu_name", "compute_capability"}.
    """
    return {
        "graph": graph_key,
        "tensorrt_version": str(tensorrt_version),
        "gpu_name": gpu["gpu_name"],
        "compute_capability": gpu["compute_capability"],
        "precision": ENGINE_PRECISIONS[key_precision(graph_key)],
        "profiles": profile,
        "max_batch": max(p["max"][0] for p in profile.values()),
        "source": {"file": source["file"], "sha256": source["sha256"]},
        "inputs": source["inputs"],
        "outputs": source["outputs"],
        "created": utc_now(),
    }


def timing_cache_path(tensorrt_version: str, gpu: dict, cache_dir: str | Path | None = None) -> Path:
    """Where builds on this TensorRT version and GPU share their timing cache (one file per pair,
    so a cache from another version or GPU is never offered)."""
    root = (
        Path(cache_dir) if cache_dir else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "restr" / "tensorrt"
    )
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{gpu['gpu_name']}-sm{gpu['compute_capability']}").strip("-")
    return root / f"timing-trt{tensorrt_version}-{slug}.cache"


def engine_instructions(folder: str | Path, reason: str, exported: bool = True) -> str:
    """One line: why no engines were built and exactly what to install and run on a GPU machine."""
    steps = f"pip install 'tensorrt>=10' 'cuda-python>=12.6' (or pip install 'restr[tensorrt]'), then run: restr-export --build-engines {folder}"
    if exported:
        return f"TensorRT engines not built ({reason}). On a machine with an NVIDIA GPU and driver: {steps}"
    return (
        f"cannot build TensorRT engines here ({reason}). Export without --engine here, then on a machine "
        f"with an NVIDIA GPU and driver: {steps}"
    )


def engine_support():
    """(tensorrt module, {"gpu_name", "compute_capability"}), or EngineUnavailable saying what is missing.

    Shares the runtime's backend import and GPU description, so sidecars match what it checks.
    """
    from restr.runtime.trt_runner import TensorRTUnavailable, describe_gpu, import_backends

    try:
        trt, cudart = import_backends()
        return trt, describe_gpu(cudart)
    except TensorRTUnavailable as e:
        raise EngineUnavailable(str(e).splitlines()[0]) from None


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def build_engines(
    folder: Path,
    manifest: dict,
    graph_keys,
    max_batch: int,
    timing_cache: Path | None = None,
    workspace_gib: float = 4.0,
    log=print,
    backends=None,
) -> dict[str, dict]:
    """Build an engine for each FP16 or INT8 graph in `graph_keys` into `folder`; returns the
    manifest's `engines` entries. The timing cache is read before and written after every build."""
    trt, gpu = backends or engine_support()
    cache_path = Path(timing_cache) if timing_cache else timing_cache_path(trt.__version__, gpu)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache = cache_path.read_bytes() if cache_path.is_file() else b""
    entries = {}
    for key in graph_keys:
        source = manifest["graphs"][key]
        profile = profiles(source["inputs"], max_batch)
        log(f"building TensorRT engine {key}.engine (TensorRT {trt.__version__}, {gpu['gpu_name']}, batch 1..{max_batch})")
        explicit = key_precision(key) == "int8"
        plan, cache = trt_build(trt, folder / source["file"], profile, cache, int(workspace_gib * GIB), explicit)
        _write_bytes_atomic(cache_path, cache)
        name = engine_file(key)
        _write_bytes_atomic(folder / name, plan)
        write_json(folder / f"{name}.json", sidecar(key, source, profile, trt.__version__, gpu))
        entries[key] = {
            "file": name,
            "sha256": sha256_file(folder / name),
            "sidecar": f"{name}.json",
            "precision": ENGINE_PRECISIONS[key_precision(key)],
            "source": source["file"],
            "tensorrt_version": str(trt.__version__),
            "gpu_name": gpu["gpu_name"],
            "compute_capability": gpu["compute_capability"],
            "max_batch": max_batch,
        }
    return entries


# ------------------------------------------------------------ the TensorRT calls (GPU machines only)


def trt_build(
    trt, onnx_path: Path, profile: dict, timing_cache: bytes, workspace_bytes: int, explicit_quantization: bool = False
) -> tuple[bytes, bytes]:
    """Parse `onnx_path` into a strongly typed network and build it. Returns (serialized engine,
    updated serialized timing cache). `explicit_quantization`: an INT8 QDQ graph, whose network must
    hold Quantize and Dequantize layers. Raises EngineBuildError."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"{onnx_path}: TensorRT could not parse the graph: {errors[0] if errors else 'unknown error'}")
    if explicit_quantization:
        qdq = {trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE}
        if not any(network.get_layer(i).type in qdq for i in range(network.num_layers)):
            raise EngineBuildError(
                f"{onnx_path}: an INT8 graph parsed without Quantize/Dequantize layers (explicit quantization lost)"
            )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    cache = config.create_timing_cache(timing_cache)
    # a cache TensorRT cannot read, or one from another GPU or TensorRT build (set_timing_cache is
    # False with ignore_mismatch=False): start afresh rather than fail after the build
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise EngineBuildError(f"{onnx_path}: TensorRT could not set up a timing cache (see TensorRT's messages above)")
    opt_profile = builder.create_optimization_profile()
    for name, shapes in profile.items():
        opt_profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    if config.add_optimization_profile(opt_profile) < 0:  # -1: TensorRT found the profile invalid
        raise EngineBuildError(
            f"{onnx_path}: TensorRT refused the optimisation profile {profile} (see TensorRT's messages above)"
        )
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT failed to build the engine (see TensorRT's messages above)")
    return bytes(plan), bytes(config.get_timing_cache().serialize())
