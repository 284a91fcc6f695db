"""PATH -> something to time (Polygraphy's loader idea): a runner for the model alone and a
`restr.runtime.Predictor` for the same model with pre- and post-processing.

    export folder      Predictor.from_artifacts (ONNX Runtime, or TensorRT engines with --backend tensorrt)
    graph.onnx         an OrtRunner; shapes and vocabulary from the manifest beside it, else from the graph
    model.pt           restr.checkpoint.load_checkpoint, PyTorch eager (the exporter's graph modules)
    model.trt / .plan  restr.runtime.trt_runner.TrtRunner (needs TensorRT and a CUDA GPU)

Every target's end-to-end path is the runtime's own Predictor (restr.runtime.transforms for the
letterbox and normalisation, `Letterbox.invert` and the threshold after), whatever runs the graph:
a PyTorch checkpoint is wrapped in a `TorchRunner` that honours the runner contract, so its
pre- and post-processing are exactly the deployed ones. The feature cache is off (cache_size=0):
every end-to-end run pre-processes and encodes the image again.

Errors are `LoadError`s: one line, naming the path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from restr.runtime.artifacts import END_TO_END, MANIFEST, STAGES, ArtifactError, Artifacts, GraphInfo, TensorSpec, sha256_file
from restr.runtime.errors import first_line
from restr.runtime.formats import graph_by_inputs, graph_key, key_precision
from restr.runtime.predictor import Predictor
from restr.runtime.runners import OrtRunner, prepare_feeds
from restr.runtime.tokenizer import Vocabulary
from restr.runtime.trt_runner import TrtRunner

ENGINE_SUFFIXES = (".trt", ".plan", ".engine")
KINDS = ("folder", "onnx", "pt", "tensorrt")
REAL_WORDS = 8  # words in a generated expression; the graphs compute all N_l positions anyway


class LoadError(ValueError):
    """A PATH that cannot be benchmarked: one line, meant for users."""


@dataclass
class LoadOptions:
    threads: int | None = None  # ONNX Runtime intra-op threads (PyTorch's are set process-wide)
    precision: str = "fp32"  # export folders: which graphs ("fp16" = the mixed-precision ones, "int8" = the QDQ ones)
    backend: str = "ort"  # export folders: "ort" or "tensorrt"
    providers: object = None  # ONNX Runtime execution providers (restr.runtime.choose_providers)
    image_size: int | None = None  # .pt only: rebuild for another input size; others must match
    config: str | None = None  # a named config for graphs without a manifest (for MACs)
    compile: bool = False  # .pt only: torch.compile(mode="reduce-overhead")


ENGINE_TAGS = {
    "fp32": ("precision", "fp32"),
    "fp16": ("precision", "fp16"),
    "int8": ("precision", "int8"),
    "cpu": ("providers", None),
    "cuda": ("providers", "cuda"),
    "compile": ("compile", True),
    "eager": ("compile", False),
    "ort": ("backend", "ort"),
    "tensorrt": ("backend", "tensorrt"),
}


def split_engine(spec: str, options: LoadOptions) -> tuple[Path, LoadOptions]:
    """PATH or PATH#tag,tag: per-engine options over the run's, so one run compares several ways to
    run a model (`runs/b16#fp16`, `runs/b16#int8`, `model.pt#fp16,compile`). Tags: fp32, fp16, int8, cpu, cuda, ort,
    tensorrt, eager, compile. Raises LoadError for an unknown tag."""
    path, _, tags = str(spec).partition("#")
    changes = {}
    for tag in filter(None, (t.strip().lower() for t in tags.split(","))):
        if tag not in ENGINE_TAGS:
            raise LoadError(f"{spec}: unknown engine tag {tag!r} (known: {', '.join(ENGINE_TAGS)})")
        key, value = ENGINE_TAGS[tag]
        changes[key] = value
    return Path(path), dataclasses.replace(options, **changes)


@dataclass
class Target:
    """One PATH, loaded. `runner` is the model alone (the `graph` it holds); `predictor` runs the
    end-to-end graph with pre- and post-processing (None unless `graph` is end_to_end); `split`
    builds a split-graph Predictor for `--queries` (None where the split graphs are missing)."""

    path: Path
    kind: str
    label: str
    backend: str
    precision: str
    graph: str
    runner: object
    predictor: Predictor | None
    split: Callable[[], Predictor] | None
    config: object  # ReSTRConfig or None (no manifest, no --config): no MACs then
    image_size: int | None
    vocab_size: int
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)

    def feeds(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Inputs of the model's graph at `batch`, generated from its input specs."""
        return make_feeds(self.runner.input_specs, batch, self.vocab_size, seed)


def make_feeds(specs, batch: int, vocab_size: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for `specs` (TensorSpec) at `batch`: floats ~ N(0, 1); `words` ids in the
    vocabulary with REAL_WORDS real words and the rest padding (as `pad_mask` says); other integer
    inputs 0."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        shape = s.concrete(batch)
        dtype = np.dtype(s.dtype)
        if dtype == np.bool_:
            n = shape[-1] if shape else 0
            x = np.broadcast_to(np.arange(n) >= min(REAL_WORDS, n), shape).copy()
        elif np.issubdtype(dtype, np.floating):
            x = rng.standard_normal(shape).astype(dtype)
        elif s.name == "words":
            x = rng.integers(2, max(3, vocab_size), shape).astype(dtype)
            x[..., REAL_WORDS:] = 0  # <pad>, matching pad_mask
        else:
            x = np.zeros(shape, dtype)
        out[s.name] = x
    return out


def engine_kind(path) -> str:
    """Which kind of PATH (PATH#tags) this is, with cheap checks only. Raises LoadError."""
    p, _ = split_engine(path, LoadOptions())
    if not p.exists():
        raise LoadError(f"{p}: no such file or folder")
    if p.is_dir():
        if not (p / MANIFEST).is_file():
            raise LoadError(f"{p}: folder has no {MANIFEST} (not a restr export folder; make one with restr-export)")
        return "folder"
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".pt":
        return "pt"
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    raise LoadError(
        f"{p}: unknown engine type {p.suffix or '(no extension)'!r} (expected .trt/.plan/.engine, .onnx, .pt or an export folder)"
    )


def engine_label(spec) -> str:
    """An engine's name in tables: its folder and name with its tags, `demo/export#fp16`: two ways to
    run one model stay apart, and an export folder is not just `export`."""
    p = Path(str(spec))
    return p.name if p.parent.name in ("", ".") else f"{p.parent.name}/{p.name}"


def load_target(path, options: LoadOptions | None = None) -> Target:
    """Load PATH (or PATH#tags, see `split_engine`) for benchmarking. Raises LoadError (one line)
    for anything unusable."""
    p, options = split_engine(path, options or LoadOptions())
    kind = engine_kind(p)
    try:
        target = {"folder": _load_folder, "onnx": _load_file, "pt": _load_pt, "tensorrt": _load_file}[kind](p, options)
        target.label = engine_label(path)
        return target
    except LoadError:
        raise
    except (ArtifactError, ValueError) as e:  # ArtifactError, CheckpointError, bad sizes: already one line
        raise LoadError(first_line(e) if str(p) in str(e) else f"{p}: {first_line(e)}") from None


# -- export folders ------------------------------------------------------------------------------


def _load_folder(path: Path, o: LoadOptions) -> Target:
    art = Artifacts.open(path)
    _fixed_size(o.image_size, art.image_size, path)
    if o.backend == "tensorrt":
        _require_tensorrt(path)
    table = art.engines if o.backend == "tensorrt" else art.graphs
    key = graph_key(END_TO_END, o.precision)
    if key not in table:
        raise LoadError(f"{path}: the export has no {key!r} {'engine' if o.backend == 'tensorrt' else 'graph'} to time")
    predictor = Predictor.from_artifacts(
        path, backend=o.backend, precision=o.precision, providers=o.providers, cache_size=0, mode="end_to_end", threads=o.threads
    )
    runner = predictor.runners[END_TO_END]
    split = None
    if all(graph_key(s, o.precision) in table for s in STAGES):

        def split():
            return Predictor.from_artifacts(
                path,
                backend=o.backend,
                precision=o.precision,
                providers=o.providers,
                cache_size=0,
                mode="split",
                threads=o.threads,
            )

    return Target(
        path=path,
        kind="folder",
        label=path.name,
        backend=_backend_name(runner),
        precision=table[key].precision,
        graph=END_TO_END,
        runner=runner,
        predictor=predictor,
        split=split,
        config=_manifest_config(art),
        image_size=art.image_size,
        vocab_size=len(predictor.vocab),
        device=_device(runner),
    )


# -- single graph and engine files ------------------------------------------------------------


def _load_file(path: Path, o: LoadOptions) -> Target:
    """One .onnx graph or TensorRT engine: with the manifest beside it where that names it, else
    bare (`Artifacts.from_graphs`: shapes from the file, the rest from --config or defaults)."""
    engine = path.suffix.lower() in ENGINE_SUFFIXES
    if engine:
        _require_tensorrt(path)
    art, info = _beside(path, engines=engine)
    notes = []
    if info is None:
        info = _bare_info(path, engine)
        runner = _file_runner(_bare(info, engine), info, o)
        info = dataclasses.replace(
            info, inputs=runner.input_specs, outputs=runner.output_specs
        )  # an engine's, read by the runner
        cfg = _named_config(o.config, _bare(info, engine).image_size or None)
        art = _bare(info, engine, cfg)
        vocab = _vocab_beside(path)
        notes.append(
            f"no manifest beside {path.name}: shapes from the {'engine' if engine else 'graph'}, normalisation mean=std=0.5"
            + ("" if cfg else ", no MACs (give --config)")
        )
    else:
        runner = _file_runner(art, info, o)
        cfg, vocab = _manifest_config(art), art.vocabulary()
    _fixed_size(o.image_size, art.image_size or None, path)
    graph = graph_by_inputs(s.name for s in runner.input_specs) or "graph"
    predictor = Predictor(art, {END_TO_END: runner}, vocab, cache_size=0) if graph == END_TO_END else None
    split = None
    precision = key_precision(info.key)
    if (
        graph == END_TO_END
        and art.manifest
        and all(graph_key(s, precision) in (art.engines if engine else art.graphs) for s in STAGES)
    ):
        # the split graphs of the same precision and backend, from the same export
        how = {"backend": "tensorrt"} if engine else {"providers": o.providers, "threads": o.threads}

        def split():
            return Predictor.from_artifacts(art.root, precision=precision, cache_size=0, mode="split", **how)

    return Target(
        path=path,
        kind="tensorrt" if engine else "onnx",
        label=path.name,
        backend=_backend_name(runner),
        precision=info.precision,
        graph=graph,
        runner=runner,
        predictor=predictor,
        split=split,
        config=cfg,
        image_size=art.image_size or None,
        vocab_size=len(vocab),
        device=_device(runner),
        notes=notes,
    )


def _bare_info(path: Path, engine: bool) -> GraphInfo:
    """A graph or engine file beside no manifest, as a manifest entry would name it."""
    if engine:
        return GraphInfo(
            key=path.stem,
            path=path,
            sha256=sha256_file(path),
            precision="fp16-strongly-typed",
            sidecar=path.with_name(path.name + ".json"),
        )
    inputs, outputs, precision = onnx_io(path)
    return GraphInfo(key=path.stem, path=path, sha256=sha256_file(path), precision=precision, inputs=inputs, outputs=outputs)


def _bare(info: GraphInfo, engine: bool, cfg=None) -> Artifacts:
    """The Artifacts of one file without a manifest, listed where a manifest would list it."""
    return Artifacts.from_graphs(info.path.parent, **{"engines" if engine else "graphs": [info]}, **_config_sizes(cfg))


def _file_runner(art: Artifacts, info: GraphInfo, o: LoadOptions):
    if info.path.suffix.lower() in ENGINE_SUFFIXES:
        return TrtRunner(art, info, specs=art.graphs.get(info.key))
    return OrtRunner(art, info, providers=o.providers, threads=o.threads)


def onnx_io(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], str]:
    """(inputs, outputs, precision) of an ONNX file, read with `onnx` (weights not needed).

    Dynamic dimensions become "batch". precision is "int8" when the graph holds INT8 weights,
    "fp16" when it holds FP16 ones, else "fp32". Raises LoadError for a file that is not a readable ONNX graph.
    """
    import onnx
    from onnx import helper

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise LoadError(f"{path}: not a readable ONNX graph ({type(e).__name__}: {first_line(e)})") from None
    if not proto.graph.input and not proto.graph.output:
        raise LoadError(f"{path}: not a readable ONNX graph (no inputs or outputs)")
    init = {t.name for t in proto.graph.initializer}

    def spec(v) -> TensorSpec:
        t = v.type.tensor_type
        dims = tuple(int(d.dim_value) if d.HasField("dim_value") else "batch" for d in t.shape.dim)
        return TensorSpec(v.name, np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name, dims)

    try:
        inputs = tuple(spec(v) for v in proto.graph.input if v.name not in init)
        outputs = tuple(spec(v) for v in proto.graph.output)
    except (KeyError, TypeError, ValueError) as e:
        raise LoadError(f"{path}: graph inputs/outputs cannot be read ({first_line(e)})") from None
    types = {t.data_type for t in proto.graph.initializer}
    precision = "int8" if onnx.TensorProto.INT8 in types else "fp16" if onnx.TensorProto.FLOAT16 in types else "fp32"
    return inputs, outputs, precision


# -- PyTorch checkpoints -------------------------------------------------------------------------


class TorchRunner:
    """One of the exported graphs' modules (restr.export.onnx_export) run in PyTorch, behind the
    runtime's Runner protocol: numpy in, numpy out, inputs checked by `prepare_feeds`.

    device "cuda" moves the module there; precision "fp16" runs it in half precision (float inputs
    cast); `compile` wraps it in `torch.compile(mode="reduce-overhead")` (CUDA graphs), the
    strongest PyTorch peer. On CUDA, `timings` gets "h2d", "compute" (forward and synchronise) and
    "d2h" milliseconds."""

    backend = "pytorch"

    def __init__(
        self,
        name: str,
        module,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        device: str = "cpu",
        precision: str = "fp32",
        compile: bool = False,
    ):
        import torch

        self.name = name
        self.input_specs = inputs
        self.output_specs = outputs
        self.output_names = tuple(s.name for s in outputs)
        self.device = "cuda:0" if device == "cuda" else device
        self.max_batch = None
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        module = module.to(self.device, self._dtype).eval()
        self.module = torch.compile(module, mode="reduce-overhead") if compile else module

    def run(self, feeds: dict[str, np.ndarray], timings: dict | None = None) -> dict[str, np.ndarray]:
        import time

        import torch

        feeds, _ = prepare_feeds(self.input_specs, feeds, self.name)
        cuda = self.device.startswith("cuda")
        t0 = time.perf_counter()
        with torch.inference_mode():
            xs = [torch.from_numpy(feeds[s.name]).to(self.device) for s in self.input_specs]
            xs = [x.to(self._dtype) if x.is_floating_point() else x for x in xs]
            if cuda:
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            outs = self.module(*xs)
            outs = outs if isinstance(outs, tuple) else (outs,)
            if cuda:
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            result = {n: t.float().cpu().numpy() for n, t in zip(self.output_names, outs)}
        if timings is not None:
            for phase, a, b in (("h2d", t0, t1), ("compute", t1, t2), ("d2h", t2, time.perf_counter())):
                timings[phase] = timings.get(phase, 0.0) + (b - a) * 1000.0
        return result

    def close(self) -> None:
        self.module = None

    def __repr__(self) -> str:
        return f"TorchRunner({self.name!r}, device={self.device!r})"


def _load_pt(path: Path, o: LoadOptions) -> Target:
    from restr.checkpoint import load_checkpoint
    from restr.export.onnx_export import GRAPHS, graph_io, graph_module

    ck = load_checkpoint(path, image_size=o.image_size)  # CheckpointError / ValueError: one line
    cfg = ck.config
    io = graph_io(cfg)
    device = "cuda" if _wants_cuda(o.providers) else "cpu"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise LoadError(f"{path}: --providers cuda, but this PyTorch sees no CUDA GPU")
    runners = {
        g: TorchRunner(
            g, graph_module(ck.model, g), *io[g], device=device, precision=o.precision, compile=o.compile and g == END_TO_END
        )
        for g in GRAPHS
    }
    art = Artifacts.from_graphs(path.parent, **_config_sizes(cfg))
    predictor = Predictor(art, {END_TO_END: runners[END_TO_END]}, ck.vocab, cache_size=0)

    def split():
        return Predictor(art, {s: runners[s] for s in STAGES}, ck.vocab, cache_size=0)

    import torch

    mode = "torch.compile(mode='reduce-overhead')" if o.compile else "eager"
    return Target(
        path=path,
        kind="pt",
        label=path.name,
        backend=f"pytorch {torch.__version__} {mode}",
        precision=o.precision,
        graph=END_TO_END,
        runner=runners[END_TO_END],
        predictor=predictor,
        split=split,
        config=cfg,
        image_size=cfg.image_size,
        vocab_size=len(ck.vocab),
        device=device,
    )


def _wants_cuda(providers) -> bool:
    if providers is None:
        return False
    names = providers.split(",") if isinstance(providers, str) else list(providers)
    return any(str(n).strip().lower() in ("cuda", "auto", "cudaexecutionprovider", "tensorrt") for n in names)


# -- TensorRT engines ----------------------------------------------------------------------------


def _require_tensorrt(path: Path) -> None:
    from restr.runtime.trt_runner import TensorRTUnavailable, describe_gpu, import_backends

    try:
        _, cudart = import_backends()
        describe_gpu(cudart)
    except TensorRTUnavailable as e:
        raise LoadError(f"{path}: TensorRT engines cannot be timed on this machine ({e})") from None


# -- shared helpers ------------------------------------------------------------------------------


def _config_sizes(cfg) -> dict:
    """`Artifacts.from_graphs`' keywords from a ReSTRConfig (None: {})."""
    if cfg is None:
        return {}
    return dict(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        max_words=cfg.max_words,
        num_patches=cfg.num_patches,
        feature_width=cfg.fusion.width,
        mean=tuple(cfg.image_mean),
        std=tuple(cfg.image_std),
    )


def _beside(path: Path, engines: bool) -> tuple[Artifacts | None, GraphInfo | None]:
    """The export folder's Artifacts and this file's entry, when a manifest beside it names it."""
    if not (path.parent / MANIFEST).is_file():
        return None, None
    art = Artifacts.open(path.parent)
    table = art.engines if engines else art.graphs
    target = path.resolve()
    for info in table.values():
        if info.path.resolve() == target:
            return art, info
    return None, None


def _vocab_beside(path: Path) -> Vocabulary:
    try:
        return Vocabulary.load(path.parent / "vocab.txt")
    except (OSError, ValueError):
        return Vocabulary([])  # every word is <unk>: timing does not depend on the ids


def _manifest_config(art: Artifacts):
    from restr.config import ReSTRConfig

    try:
        return ReSTRConfig.from_dict((art.manifest.get("model") or {})["config"])
    except (KeyError, TypeError, ValueError):
        return None


def _named_config(name: str | None, image_size: int | None):
    if not name:
        return None
    from restr.config import get_config

    try:
        cfg = get_config(name)
    except KeyError as e:
        raise LoadError(str(e.args[0])) from None
    return cfg.replace(image_size=image_size) if image_size else cfg


def _fixed_size(wanted: int | None, have: int | None, path: Path) -> None:
    if wanted is not None and have and wanted != have:
        raise LoadError(
            f"{path}: the graph is fixed at {have}x{have}; --image-size {wanted} needs a re-export (restr-export --image-size {wanted})"
        )


def _backend_name(runner) -> str:
    if runner.backend == "tensorrt":
        import tensorrt as trt

        return f"tensorrt {trt.__version__}"
    if runner.backend == OrtRunner.backend:
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__} {','.join(p.removesuffix('ExecutionProvider') for p in runner.providers)}"
    return type(runner).__name__


def _device(runner) -> str:
    return "cuda" if str(getattr(runner, "device", "cpu")).startswith("cuda") else "cpu"
