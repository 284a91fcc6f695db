"""`restr-export --triton DIR`: a Triton Inference Server model repository from an export folder.

    DIR/restr_vision, restr_language, restr_fusion_decoder   the graphs: onnxruntime backend, or
                                        tensorrt_plan where the export has engines; dynamic batching
                                        up to the manifest's max_batch where every axis 0 is "batch"
    DIR/restr_preprocess, restr_postprocess                  the export's graphs of those names, or
                                        Python models doing the same (export/triton_python.py)
    DIR/restr                                                a Python BLS model chaining them, with the
                                        inputs and outputs of restr-serve's model (runtime/protocol.py),
                                        so restr.runtime.client and restr-predict --server work on both

Everything comes from the manifest (graph files, names, dtypes, shapes, max_batch); the graph files
are copied after their sha256 is checked. The folder is written beside DIR and renamed into place.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from restr.export.pipeline import ExportError, _publish, _staging
from restr.runtime import protocol, tokenizer, transforms
from restr.runtime.artifacts import ArtifactError, Artifacts, GraphInfo, TensorSpec
from restr.runtime.formats import PRECISIONS, PROCESSING_GRAPHS, STAGES, graph_file, graph_io, graph_key
from restr.runtime.protocol import ConfigError, Enum, metadata_parameters, model_io, parameter, pbtxt, tensor_config
from restr.runtime.transforms import mean_fill

PREFIX = "restr"
GRAPH_STEPS = STAGES  # required
OPTIONAL_STEPS = PROCESSING_GRAPHS  # a Python model when the export lacks the graph
PYTHON_SOURCES = {"restr_transforms.py": transforms, "restr_tokenizer.py": tokenizer, "restr_protocol.py": protocol}


@dataclass
class TritonOptions:
    """How the repository is laid out; the defaults suit one GPU server."""

    precision: str = "fp32"  # which ONNX graphs: fp32, fp16 or int8 (the FP16 or INT8 twins)
    engines: bool = True  # tensorrt_plan models where the export has engines
    device: str = "gpu"  # instance kind of the graph models: gpu or cpu
    instances: int = 1  # instances of each graph model
    bls_instances: int = 2  # instances of the Python models (requests in flight at once)
    max_queue_delay_us: int = 500  # the dynamic batcher's wait for more requests
    max_texts: int = 64  # most expressions in one request
    cache_size: int = 32  # images whose features the BLS model keeps
    python_graphs: bool = False  # run the ONNX graphs with onnxruntime in the Python backend (no onnxruntime backend)
    force: bool = False  # replace an existing repository


def write_repository(export_dir, out, options: TritonOptions | None = None) -> dict:
    """Write the model repository `out` for the export folder `export_dir`; returns {model: backend}."""
    o = options or TritonOptions()
    if o.precision not in PRECISIONS or o.device not in ("gpu", "cpu"):
        raise ExportError(
            f"precision must be one of {', '.join(PRECISIONS)} and device gpu or cpu, got {o.precision!r}, {o.device!r}"
        )
    out = Path(out)
    _check_out(out, o.force)
    try:
        art = Artifacts.open(export_dir)
    except ArtifactError as e:
        raise ExportError(str(e)) from None
    tmp = _staging(out)
    try:
        models = {}
        broadcast = False
        for step in GRAPH_STEPS + OPTIONAL_STEPS:
            info = _graph(art, step, o.precision)
            if info is None and step in OPTIONAL_STEPS:
                models[f"{PREFIX}_{step}"] = _python_step(tmp, art, step, o)
                continue
            if info is None:
                raise ExportError(f"{art.root}: the export has no {step!r} graph; the repository needs the split graphs")
            models[f"{PREFIX}_{step}"] = _graph_model(tmp, art, step, info, o)
            if step == "fusion_decoder":
                broadcast = _first_axis(info, "visual_features") == "image_batch"
        models[PREFIX] = _bls_model(tmp, art, o, broadcast)
        _publish(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, ArtifactError):  # a graph or vocabulary that fails its checksum
            raise ExportError(str(e)) from None
        raise
    return models


def _check_out(out: Path, force: bool) -> None:
    if not out.exists():
        return
    if not force:
        raise ExportError(f"{out} already exists; use --force to replace it")
    if not out.is_dir() or (any(out.iterdir()) and not (out / PREFIX / "config.pbtxt").is_file()):
        raise ExportError(f"{out} exists and is not a restr Triton repository; refusing to replace it")


def _graph(art: Artifacts, step: str, precision: str) -> GraphInfo | None:
    key = graph_key(step, precision)
    if step in OPTIONAL_STEPS:  # pre/post-processing exist in fp32 only
        return art.graphs.get(key) or art.graphs.get(step)
    if key not in art.graphs and step in art.graphs:
        raise ExportError(
            f"{art.root}: the export has no {precision} {step!r} graph (only {step!r}); "
            f"export with --precision {precision}, or write the repository in fp32"
        )
    return art.graphs.get(key)


def _first_axis(info: GraphInfo, name: str):
    return next((t.shape[0] for t in info.inputs if t.name == name and t.shape), None)


def _graph_model(root: Path, art: Artifacts, step: str, info: GraphInfo, o: TritonOptions) -> str:
    """One graph as an onnxruntime (or tensorrt_plan) model."""
    name = f"{PREFIX}_{step}"
    engine_key = graph_key(step, "fp16")  # engines are built from the FP16 graphs
    engine = art.engines.get(engine_key) if o.engines and not o.python_graphs else None
    if engine is not None:  # the engine was built from the fp16 graph: same inputs and outputs
        source = art.manifest["engines"][engine_key].get("source")
        info = next((g for k, g in art.graphs.items() if graph_file(k) == source), info)
        max_batch = int(art.manifest["engines"][engine_key].get("max_batch", art.max_batch))
        backend, file, data = "tensorrt_plan", "model.plan", art.read_verified(engine)
    else:
        max_batch = art.max_batch
        backend, file, data = ("python" if o.python_graphs else "onnxruntime"), "model.onnx", art.read_verified(info)
    batching = all(t.shape and t.shape[0] == "batch" for t in info.inputs + info.outputs)
    config = {"name": name}
    config.update({"platform": backend} if backend == "tensorrt_plan" else {"backend": backend})
    config["max_batch_size"] = max_batch if batching else 0
    config["input"] = [_tensor(t, batching) for t in info.inputs]
    config["output"] = [_tensor(t, batching) for t in info.outputs]
    if batching:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": o.max_queue_delay_us}
    kind = "KIND_CPU" if o.device == "cpu" or backend == "python" else "KIND_GPU"
    config["instance_group"] = [{"count": o.instances, "kind": Enum(kind)}]
    if backend == "python":
        config["parameters"] = [parameter("restr_step", "onnx")]
    version = _model_dir(root, name, config)
    (version / file).write_bytes(data)
    if backend == "python":
        _python_files(version, art, {})
    return backend


def _python_step(root: Path, art: Artifacts, step: str, o: TritonOptions) -> str:
    """The Python stand-in for a preprocess / postprocess graph the export does not have."""
    name = f"{PREFIX}_{step}"
    # The graphs' own contract, so the BLS model calls either without knowing which it got.
    inputs, outputs = graph_io(step, {"S": art.image_size})
    config = {
        "name": name,
        "backend": "python",
        "max_batch_size": 0,
        "input": [_tensor(t, False) for t in inputs],
        "output": [_tensor(t, False) for t in outputs],
        "instance_group": [{"count": o.bls_instances, "kind": Enum("KIND_CPU")}],
        "parameters": [parameter("restr_step", step)],
    }
    _python_files(_model_dir(root, name, config), art, {})
    return "python"


def _bls_model(root: Path, art: Artifacts, o: TritonOptions, broadcast: bool) -> str:
    config = {
        "name": PREFIX,
        "backend": "python",
        "max_batch_size": 0,
        **model_io(),
        "instance_group": [{"count": o.bls_instances, "kind": Enum("KIND_CPU")}],
        "parameters": [
            parameter("restr_step", "bls"),
            *metadata_parameters(art.model_name, art.max_words, art.threshold, art.vocabulary().itos),
        ],
    }
    version = _model_dir(root, PREFIX, config)
    extra = {
        "models": {s: f"{PREFIX}_{s}" for s in GRAPH_STEPS + OPTIONAL_STEPS},
        "threshold": art.threshold,
        "max_words": art.max_words,
        "max_batch": art.max_batch,
        "max_texts": o.max_texts,
        "cache_size": o.cache_size,
        "broadcast_image": broadcast,
        "model": art.model_name,
    }
    _python_files(version, art, extra)
    (version / "vocab.txt").write_bytes(art.vocab_path.read_bytes())
    art.vocabulary()  # checks vocab.txt against the manifest's sha256
    return "python"


def _python_files(version: Path, art: Artifacts, extra: dict) -> None:
    """model.py, the runtime files it imports and restr.json (the export's numbers it needs)."""
    shutil.copyfile(Path(__file__).with_name("triton_python.py"), version / "model.py")
    for target, module in PYTHON_SOURCES.items():
        shutil.copyfile(module.__file__, version / target)
    fill = (art.manifest.get("letterbox") or {}).get("fill", "mean")
    cfg = {
        "image_size": art.image_size,
        "mean": list(art.mean),
        "std": list(art.std),
        "fill": list(mean_fill(art.mean) if fill == "mean" else fill),
        "tokenizer": (art.manifest.get("vocab") or {}).get("tokenizer", "restr"),
        **extra,
    }
    (version / "restr.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def _model_dir(root: Path, name: str, config: dict) -> Path:
    version = root / name / "1"
    version.mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(pbtxt(config), encoding="utf-8")
    return version


def _tensor(t: TensorSpec, batching: bool) -> dict:
    shape = list(t.shape[1:] if batching else t.shape)
    try:
        return tensor_config(t.name, t.dtype, shape)
    except ConfigError as e:
        raise ExportError(str(e)) from None
