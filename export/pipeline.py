"""The export, start to end: checkpoint -> ONNX graphs (FP32 and FP16, pre/post-processing) -> verification ->
TensorRT engines where possible -> `manifest.json`; all in a temporary sibling folder that is
renamed into place only when complete, so a half-written artifact folder never exists.

`export_artifacts` is a sequence of small steps over one `ExportContext`, each testable alone:
`check_options` (makes the context, writes nothing), then `STEPS` (the model, the vocabulary, the
graphs, the INT8 graphs, the processing graphs, the manifest, the verification, the engines), then
`publish`.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from restr.export.int8 import DEFAULT_CALIBRATION_SIZE, DEFAULT_METHOD, QUANTIZER, CalibrationError, load_calibration
from restr.export.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    check_checksums,
    graph_entry,
    json_safe,
    sha256_file,
    utc_now,
    versions,
    write_manifest,
)
from restr.export.onnx_export import GRAPHS, MIN_OPSET, ExportCheckError, graph_io, graph_summary
from restr.export.tensorrt_build import (
    ENGINE_SOURCE_PRECISIONS,
    EngineUnavailable,
    build_engines,
    engine_instructions,
    engine_support,
)
from restr.export.verify import (
    Tolerances,
    VerificationError,
    check_processing,
    cuda_placement,
    format_graphs,
    format_table,
    verification_inputs,
    verify,
)
from restr.runtime.artifacts import ArtifactError, Artifacts
from restr.runtime.formats import (  # PRECISIONS: re-exported
    ATTENTION_FORMS,
    DEFAULT_PRECISIONS,
    PRECISIONS,
    PROCESSING_GRAPHS,
    base_graph,
    graph_file,
    graph_key,
)
from restr.runtime.tokenizer import Vocabulary

PLACEHOLDER_VOCAB_SIZE = 1000  # random-weight exports: any word maps to <unk> or a placeholder id


class ExportError(ValueError):
    """A bad request (file, config, size, folder): one line, meant for users; nothing was written."""


@dataclass
class ExportOptions:
    max_batch: int = 8  # TensorRT profiles: batch 1..max_batch (ONNX graphs take any batch)
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS  # "int8" too on request: it needs calibration data
    # INT8 (restr.export.int8): the calibration data set (None: the checkpoint's, its training split;
    # "synthetic" for the demo), how many samples, and the calibration method.
    calibration: str | None = None
    calibration_size: int = DEFAULT_CALIBRATION_SIZE
    calibration_method: str = DEFAULT_METHOD
    int8_samples: int = 16  # verification samples when INT8 graphs are written (the gate is a mask IoU)
    engine: bool | None = None  # None: build where TensorRT and a GPU are present; True: required
    engine_graphs: tuple[str, ...] = GRAPHS  # which graphs get an engine (their FP16 twins are built)
    timing_cache: Path | None = None  # default: per TensorRT version and GPU under ~/.cache/restr/tensorrt
    workspace_gib: float = 4.0
    opset: int = MIN_OPSET
    # How attention is written (restr.modeling.attention): "onnx", standard ONNX (TensorRT builds
    # from it); "ort", ONNX Runtime's fused MultiHeadAttention (ONNX Runtime only).
    attention: str = "onnx"
    # Each decoder block's linear before its upsampling: the same function with the same weights
    # (bilinear weights sum to 1), a quarter of the decoder's MACs. Recorded in the manifest's config.
    decoder_linear_first: bool = True
    verify: bool = True
    samples: int = 3  # verification batch; batch 1 is checked too
    seed: int = 0
    tolerances: Tolerances = field(default_factory=Tolerances)
    masks_meaningful: bool | None = None  # None: yes for a checkpoint that names its data set
    force: bool = False
    progress: bool = True
    threads: int = 0  # CPU threads for PyTorch and ONNX Runtime; 0 = their defaults


@dataclass
class Source:
    """What is exported: a model in eval mode with its config and vocabulary."""

    model: object  # ReSTR
    vocab: object  # Vocabulary
    meta: dict
    checkpoint: Path | None  # None: random weights from a named config
    random_weights: bool

    @property
    def cfg(self):
        return self.model.cfg


def _log(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)  # above the progress bar, not through it


def check_image_size(image_size: int, patch_size: int, name: str) -> None:
    if image_size <= 0 or image_size % patch_size:
        raise ExportError(f"unsupported image size {image_size}: {name} needs a positive multiple of its patch size {patch_size}")


def load_source(
    ckpt: str | Path | None = None, config: str | None = None, image_size: int | None = None, seed: int = 0
) -> Source:
    """The model to export: from a checkpoint, or randomly initialised from a named config (for
    benchmarking before training). Raises ExportError (one line) for every bad input."""
    import torch

    from restr.checkpoint import CheckpointError, load_checkpoint, resize_model
    from restr.config import get_config
    from restr.modeling import ReSTR

    if (ckpt is None) == (config is None):
        raise ExportError("give either --ckpt FILE or --config NAME")
    if ckpt is not None:
        try:
            ck = load_checkpoint(ckpt)
        except CheckpointError as e:
            raise ExportError(str(e)) from None
        except Exception as e:  # torch.load's unpickler raises KeyError and more on foreign bytes
            detail = (str(e).strip().splitlines() or [""])[0][:200]
            raise ExportError(f"{ckpt}: not a readable checkpoint ({type(e).__name__}: {detail})") from None
        model = ck.model
        if image_size is not None and image_size != ck.config.image_size:
            check_image_size(image_size, ck.config.patch_size, ck.config.name)
            model = resize_model(model, image_size)
        return Source(model.eval(), ck.vocab, dict(ck.meta), Path(ckpt), random_weights=False)
    try:
        cfg = get_config(config)
    except KeyError as e:
        raise ExportError(str(e.args[0])) from None
    if image_size is not None:
        check_image_size(image_size, cfg.patch_size, cfg.name)
        cfg = cfg.replace(image_size=image_size)
    vocab = Vocabulary([f"word{i}" for i in range(PLACEHOLDER_VOCAB_SIZE - 2)])
    torch.manual_seed(seed)
    return Source(ReSTR(cfg, len(vocab)).eval(), vocab, {}, None, random_weights=True)


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse an existing output unless `force`, and never replace something that is not an export."""
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise ExportError(f"{out} already exists; use --force to replace it")
    if not out.is_dir() or out.is_symlink():
        raise ExportError(f"{out} exists and is not a folder; refusing to replace it")
    if any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ExportError(f"{out} exists and is not a restr export folder (no {MANIFEST}); refusing to replace it")


def _staging(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    os.chmod(tmp, 0o755)
    return tmp


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place (replacing an old export: rename it away first)."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


class _Steps:
    """A tqdm bar over the export's steps (to stderr), or nothing."""

    def __init__(self, total: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(
            total=total, desc="export", unit="step", disable=None if enabled else True, leave=False, file=sys.stderr
        )  # None: only on a terminal

    def __call__(self, what: str):
        self.bar.set_description(what)
        self.bar.update(1)

    def close(self):
        self.bar.close()


@dataclass
class ExportContext:
    """One export on its way: what is exported and how, and what has been written so far. Each step
    of `export_artifacts` reads and extends it; `check_options` makes it."""

    source: Source
    out: Path  # the folder the export is published as
    options: ExportOptions
    vocab: Vocabulary  # in the model's tokenizer
    log: Callable[[str], None] = _log
    calibration: object | None = None  # INT8 calibration samples (restr.export.int8.Calibration)
    backends: tuple | None = None  # (tensorrt, gpu): checked up front when engines are required
    folder: Path | None = None  # the staging folder everything is written into
    graphs: dict[str, dict] = field(default_factory=dict)  # manifest entries of the graphs written, by key
    manifest: dict | None = None
    tick: Callable[[str], None] = lambda what: None  # the progress bar's step

    @property
    def cfg(self):
        return self.source.cfg

    @property
    def fp16(self) -> bool:
        return "fp16" in self.options.precisions

    @property
    def int8(self) -> bool:
        return "int8" in self.options.precisions

    @functools.cached_property
    def io(self) -> dict:
        """{graph: (inputs, outputs)} of every graph this export can write (model and processing)."""
        from restr.export.processing import processing_io

        return {**graph_io(self.cfg), **processing_io(self.cfg.image_size)}

    def path(self, key: str) -> Path:
        """Where graph `key` is written."""
        return self.folder / graph_file(key)


def check_options(source: Source, out: str | Path, options: ExportOptions | None = None, log=_log) -> ExportContext:
    """Refuse a bad request before anything is written, and read up front what could still refuse it:
    the INT8 calibration data, TensorRT where engines are required. Raises ExportError, or
    EngineUnavailable when engines are required but cannot be built here."""
    options = options or ExportOptions()
    out = Path(out)
    cfg = source.cfg
    bad = set(options.precisions) - set(PRECISIONS)
    if bad or "fp32" not in options.precisions:
        raise ExportError(f"precisions must include fp32 and be among {PRECISIONS}, got {list(options.precisions)}")
    if options.max_batch < 1:
        raise ExportError(f"--max-batch must be at least 1, got {options.max_batch}")
    if options.samples < 1:
        raise ExportError(f"--samples must be at least 1, got {options.samples}")
    if options.opset < MIN_OPSET:
        raise ExportError(f"--opset {options.opset} is too old: LayerNormalization needs opset {MIN_OPSET} or newer")
    if options.attention not in ATTENTION_FORMS:
        raise ExportError(f"--attention must be one of {ATTENTION_FORMS}, got {options.attention!r}")
    if options.engine and options.attention != "onnx":
        raise ExportError("TensorRT engines are built from standard ONNX graphs: use --attention onnx")
    check_image_size(cfg.image_size, cfg.patch_size, cfg.name)
    check_out_dir(out, options.force)
    ctx = ExportContext(source, out, options, source.vocab, log)
    if ctx.vocab.tokenizer != cfg.tokenizer:  # the model's config says how its expressions are split
        ctx.vocab = Vocabulary(ctx.vocab.itos, cfg.tokenizer)
    if ctx.int8:  # read now: a data set with no images or no expressions is refused before anything is written
        try:
            ctx.calibration = load_calibration(
                options.calibration, source.meta, cfg, ctx.vocab, options.calibration_size, options.seed
            )
        except CalibrationError as e:
            raise ExportError(str(e)) from None
    if options.engine:  # asked for explicitly: fail now, before any work, if it cannot be done
        if not (ctx.fp16 or ctx.int8):
            raise ExportError("TensorRT engines are built from the FP16 or INT8 graphs: add --precision fp16 (or int8)")
        try:
            ctx.backends = engine_support()
        except EngineUnavailable as e:
            raise EngineUnavailable(engine_instructions(out, str(e), exported=False)) from None
    if source.random_weights:
        log(
            f"WARNING: exporting RANDOMLY INITIALISED weights of {cfg.name} (no --ckpt): the masks mean nothing; "
            "use this export for benchmarking only"
        )
    return ctx


def prepare_model(ctx: ExportContext) -> None:
    """The options that change how the model runs: PyTorch's threads, the decoder's form (in place)."""
    if ctx.options.threads > 0:
        import torch

        torch.set_num_threads(ctx.options.threads)
    if ctx.options.decoder_linear_first:
        set_decoder_linear_first(ctx.source.model)


def add_graph(ctx: ExportContext, key: str, proto, precision: str, started: float, **extra) -> None:
    """Check `proto` by the ONNX standard, write it as graph `key` and record its manifest entry;
    `started` is when its making began (for the log)."""
    import onnx

    try:  # the standard's full check (sorted nodes, types, shapes) on every graph written
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportCheckError(f"{graph_file(key)}: not valid ONNX ({str(e).splitlines()[0]})") from None
    onnx.save(proto, str(ctx.path(key)))
    inputs, outputs = ctx.io[base_graph(key)]
    ctx.graphs[key] = graph_entry(
        ctx.folder, graph_file(key), inputs, outputs, precision, opset_of(proto), op_counts=graph_summary(proto), **extra
    )
    ctx.tick(f"wrote {graph_file(key)}")
    ctx.log(f"wrote {graph_file(key)} ({time.perf_counter() - started:.1f} s)")


def write_graphs(ctx: ExportContext) -> None:
    """The model graphs in FP32 and, where asked, their FP16 twins."""
    from restr.export.fp16 import convert_fp16
    from restr.export.onnx_export import export_graph

    attention = ctx.options.attention
    for g in GRAPHS:
        t0 = time.perf_counter()
        proto = export_graph(ctx.source.model, g, ctx.path(g), ctx.options.opset, attention)
        add_graph(ctx, g, proto, "fp32", t0, attention=attention)
        if ctx.fp16:
            t0 = time.perf_counter()
            half, summary = convert_fp16(proto)
            add_graph(ctx, graph_key(g, "fp16"), half, "fp16", t0, attention=attention, compute_precision=summary)


def write_int8_graphs(ctx: ExportContext) -> None:
    """Where asked, the INT8 twins of the FP32 graphs, calibrated; after the FP32 graphs, whose
    features fusion_decoder is calibrated on."""
    if not ctx.int8:
        return
    from restr.export.int8 import graph_calibration_feeds, quantize_graph

    method = ctx.options.calibration_method
    for g in GRAPHS:
        t0 = time.perf_counter()
        feeds = graph_calibration_feeds(g, ctx.folder, ctx.calibration, ctx.options.threads)
        quantized, summary = quantize_graph(ctx.path(g), feeds, method)
        add_graph(
            ctx,
            graph_key(g, "int8"),
            quantized,
            "int8",
            attention=ctx.options.attention,
            started=t0,
            quantization={
                "format": "QDQ",
                "method": method,
                "weights": "int8, per output channel, symmetric",
                "activations": "int8, per tensor, symmetric",
                **summary,
            },
        )


def write_processing_graphs(ctx: ExportContext) -> None:
    """The pre- and post-processing graphs (photo -> model input, probabilities -> the photo's mask)."""
    from restr.export.processing import postprocess_graph, preprocess_graph

    cfg = ctx.cfg
    t0 = time.perf_counter()
    add_graph(ctx, "preprocess", preprocess_graph(cfg.image_size, cfg.image_mean, cfg.image_std, cfg.image_transform), "fp32", t0)
    t0 = time.perf_counter()
    add_graph(ctx, "postprocess", postprocess_graph(cfg.image_size, cfg.image_transform), "fp32", t0)


def write_vocabulary(ctx: ExportContext) -> None:
    ctx.vocab.save(ctx.folder / "vocab.txt")


def make_manifest(ctx: ExportContext) -> None:
    """The manifest of what has been written (docs/artifacts.md): no engines and no verification yet."""
    cfg, source, options, vocab = ctx.cfg, ctx.source, ctx.options, ctx.vocab
    ctx.manifest = {
        "format_version": FORMAT_VERSION,
        "model": {
            "name": cfg.name,
            "config": cfg.to_dict(),
            "random_weights": source.random_weights,
            "checkpoint": None
            if source.checkpoint is None
            else {"file": source.checkpoint.name, "sha256": sha256_file(source.checkpoint), "meta": json_safe(source.meta)},
        },
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "max_words": cfg.max_words,
        "num_patches": cfg.num_patches,
        "feature_width": cfg.fusion.width,
        "normalization": {"mean": list(cfg.image_mean), "std": list(cfg.image_std)},
        # what the processing graphs compute (docs/artifacts.md); hosts run the graphs and need none of it
        "letterbox": {"align": cfg.letterbox_align, "fill": "mean", "antialias": cfg.resize_antialias},
        "threshold": options.tolerances.threshold,
        "mask_from": cfg.mask_from,
        "vocab": {
            "file": "vocab.txt",
            "size": len(vocab),
            "sha256": sha256_file(ctx.folder / "vocab.txt"),
            "placeholder": source.random_weights,
            "tokenizer": vocab.tokenizer,
        },
        "max_batch": options.max_batch,
        "graphs": ctx.graphs,
        "engines": {},
        "tensorrt": {"status": "not requested"},
        "verification": {"enabled": False},
        **(
            {
                "int8": {
                    "calibration": {**ctx.calibration.description, "method": options.calibration_method},
                    "quantizer": QUANTIZER,
                }
            }
            if ctx.int8
            else {}
        ),
        "versions": versions(),
        "created": utc_now(),
    }


def verify_export(ctx: ExportContext) -> None:
    """Where asked, verify the export through the runtime itself: the manifest as it will ship, read
    by restr.runtime, its runners and the predictor's split chain (export.verify), and the processing
    graphs against restr.runtime.transforms. Records the result in the manifest; raises
    VerificationError (one line) when a check fails."""
    options, cfg, source = ctx.options, ctx.cfg, ctx.source
    if not options.verify:
        return
    write_manifest(ctx.folder, json_safe(ctx.manifest))
    art = Artifacts.open(ctx.folder)
    t0 = time.perf_counter()
    samples = max(options.samples, options.int8_samples) if ctx.int8 else options.samples
    feeds, inputs = verification_inputs(cfg, ctx.vocab, source.meta, samples, options.seed)
    meaningful = options.masks_meaningful
    if meaningful is None:
        meaningful = not source.random_weights and bool(source.meta.get("data"))
    verification = {
        "enabled": True,
        "inputs": inputs,
        **verify(source.model, art, feeds, options.tolerances, meaningful, tuple(dict.fromkeys((samples, 1))), options.threads),
    }
    processing = check_processing(art, cfg, options.seed)
    verification["processing"] = processing
    verification["graphs"] = {k: {**g["op_counts"], **(cuda_placement(ctx.path(k)) or {})} for k, g in ctx.graphs.items()}
    if not processing["passed"]:
        verification["passed"] = False
        verification["failures"].append("processing graphs vs restr.runtime.transforms: " + "; ".join(processing["failures"]))
    ctx.tick("verified")
    ctx.log(
        f"verification ({time.perf_counter() - t0:.1f} s) on {inputs['source']} inputs"
        + (f" [{inputs['note']}]" if inputs.get("note") else "")
        + ":\n"
        + format_table(verification)
        + "\n"
        + format_graphs(verification)
    )
    if not verification["passed"]:
        raise VerificationError("verification failed: " + "; ".join(verification["failures"]))
    ctx.manifest["verification"] = verification


def write_engines(ctx: ExportContext) -> None:
    """TensorRT engines from the FP16 (and INT8) graphs, unless refused (--no-engine); where TensorRT
    is missing and engines were not required, what to do on a GPU machine instead."""
    if ctx.options.engine is not False and (ctx.fp16 or ctx.int8):
        _engines_into(ctx.folder, ctx.manifest, ctx.options, ctx.out, ctx.log, ctx.backends)


def publish(ctx: ExportContext) -> dict:
    """Write the final manifest and rename the staging folder into place as `out`; returns the
    manifest exactly as the file holds it."""
    ctx.manifest = json_safe(ctx.manifest)
    write_manifest(ctx.folder, ctx.manifest)
    ctx.tick("manifest written")
    _publish(ctx.folder, ctx.out)
    return ctx.manifest


# What `export_artifacts` does after `check_options` and before `publish`, in order.
STEPS = (
    prepare_model,
    write_vocabulary,
    write_graphs,
    write_int8_graphs,
    write_processing_graphs,
    make_manifest,
    verify_export,
    write_engines,
)


def export_artifacts(source: Source, out: str | Path, options: ExportOptions | None = None, log=_log) -> dict:
    """Write the export folder `out` (see docs/artifacts.md); returns the manifest.

    Raises ExportError for a bad request (nothing written), EngineUnavailable when engines are
    required but cannot be built here (nothing written), VerificationError when a tolerance is
    exceeded (nothing written).
    """
    options = options or ExportOptions()
    ctx = check_options(source, out, options, log)
    progress = _Steps(len(GRAPHS) * (1 + ctx.fp16 + ctx.int8) + len(PROCESSING_GRAPHS) + options.verify + 1, options.progress)
    ctx.tick = progress
    ctx.folder = _staging(ctx.out)
    try:
        for step in STEPS:
            step(ctx)
        manifest = publish(ctx)
    except BaseException:
        shutil.rmtree(ctx.folder, ignore_errors=True)
        raise
    finally:
        progress.close()
    log(f"export written to {ctx.out}")
    return manifest


def _engines_into(folder: Path, manifest: dict, options: ExportOptions, shown_folder: Path, log, backends=None) -> None:
    """Build the engines into `folder` and record them (or, where TensorRT is missing and engines
    were not required, record and print what to do on a GPU machine)."""
    try:
        backends = backends or engine_support()
    except EngineUnavailable as e:
        if options.engine:
            raise EngineUnavailable(engine_instructions(shown_folder, str(e))) from None
        message = engine_instructions(shown_folder, str(e))
        manifest["tensorrt"] = {"status": "not built", "reason": str(e), "how": message}
        log(message)
        return
    keys = engine_keys(manifest["graphs"], options.engine_graphs)
    manifest["engines"].update(
        build_engines(folder, manifest, keys, manifest["max_batch"], options.timing_cache, options.workspace_gib, log, backends)
    )
    manifest["tensorrt"] = {"status": "built", "tensorrt_version": str(backends[0].__version__), **backends[1]}


def engine_keys(graphs: dict, engine_graphs) -> list[str]:
    """The graphs engines are built from: the FP16 and INT8 twins of `engine_graphs` that exist."""
    return [graph_key(g, p) for p in ENGINE_SOURCE_PRECISIONS for g in engine_graphs if graph_key(g, p) in graphs]


def set_decoder_linear_first(model) -> None:
    """Switch the decoder of `model` to linear-then-upsample in place (same function and weights)."""
    for block in model.decoder.blocks:
        block.linear_first = True
    model.cfg = model.cfg.replace(decoder_linear_first=True)


def opset_of(proto) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def add_engines(folder: str | Path, options: ExportOptions | None = None, max_batch: int | None = None, log=_log) -> dict:
    """Build TensorRT engines into an existing export folder (exported on a machine without a GPU).

    The folder is copied to a temporary sibling (hard links where possible), the engines and the
    updated manifest are written there (engines from an earlier build are replaced), and it is
    renamed into place. Returns the new manifest.
    `max_batch` None keeps the manifest's. Raises ExportError for a folder that is not a complete
    export, EngineUnavailable where TensorRT or a GPU is missing.
    """
    options = options or ExportOptions(engine=True)
    folder = Path(folder)
    if max_batch is not None and max_batch < 1:
        raise ExportError(f"--max-batch must be at least 1, got {max_batch}")
    if not folder.is_dir():
        raise ExportError(f"{folder}: no {MANIFEST} (not a restr export folder)")
    try:
        manifest = dict(Artifacts.open(folder).manifest)  # engines and max_batch are replaced below
    except ArtifactError as e:
        raise ExportError(str(e)) from None
    keys = engine_keys(manifest["graphs"], options.engine_graphs)
    missing = [
        graph_key(g, "fp16") for g in options.engine_graphs if not any(graph_key(g, p) in keys for p in ENGINE_SOURCE_PRECISIONS)
    ]
    if missing:
        raise ExportError(f"{folder}: the export has no {', '.join(missing)} graph (re-export with --precision fp16)")
    fused = [k for k in keys if manifest["graphs"][k].get("attention", "onnx") != "onnx"]
    if fused:
        raise ExportError(
            f"{folder}: {', '.join(fused)} use ONNX Runtime's fused attention, which TensorRT cannot parse "
            "(re-export with --attention onnx)"
        )
    bad = check_checksums(folder, manifest)
    if bad:
        raise ExportError(f"{folder}: files do not match the manifest: {', '.join(bad)}")
    try:
        backends = engine_support()
    except EngineUnavailable as e:
        raise EngineUnavailable(engine_instructions(folder, str(e))) from None
    if max_batch is not None:
        manifest["max_batch"] = max_batch
    tmp = _staging(folder)
    try:
        for f in folder.iterdir():
            if f.is_file() and not f.name.endswith((".engine", ".engine.json")) and f.name != MANIFEST:
                try:
                    os.link(f, tmp / f.name)
                except OSError:
                    shutil.copy2(f, tmp / f.name)
        manifest["engines"] = {}
        _engines_into(tmp, manifest, options, folder, log, backends)
        manifest = json_safe(manifest)
        write_manifest(tmp, manifest)
        _publish(tmp, folder)  # the old folder is replaced as a whole
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
