"""INT8 ONNX: static QDQ graphs calibrated on the model's own data, laid out for TensorRT's explicit
quantization, run as they are by ONNX Runtime on a CPU.

ONNX Runtime's static quantizer (`onnxruntime.quantization.quantize_static`, QDQ format) writes
them; this module chooses what it quantizes, feeds it calibration data and checks the result:

- INT8: the matrix products with a weight (`MatMul` / `Gemm` whose second input is a constant)
  but the patch embedding (`KEEP_FLOAT`: measured on the demo model, keeping it float takes the
  end-to-end mask IoU against FP32 from 0.976 to 0.986 for 0.6% of restr-b16's MACs):
  weights per output channel, activations per tensor, both symmetric (zero point 0, as TensorRT
  requires), a QuantizeLinear -> DequantizeLinear pair on each input (TensorRT fuses them into
  its INT8 kernels; ONNX Runtime fuses them into its integer MatMul kernels).
- float: everything else. LayerNorm, Softmax, GELU (Erf), the residual Adds, the sigmoids and the
  L2 norms take float inputs; so do the attention products QK^T and AV (both inputs activations,
  one of them the Softmax's output). `QDQ_EXCEPTIONS` would list an op type measured to lose
  nothing when quantized: none so far. `check_int8` refuses a graph that breaks this layout.
- calibration: a few hundred images with their expressions from the checkpoint's data set
  (training split), run through the FP32 graphs; the fusion_decoder graph is calibrated on the
  FP32 vision and language graphs' features of the same samples. The method (`CALIBRATION_METHODS`)
  is recorded per graph in the manifest.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from restr.runtime.errors import first_line
from restr.runtime.formats import END_TO_END, graph_file

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# Chosen by measured accuracy against the FP32 graphs (README, "INT8"); restr-export --calibration-method overrides it.
DEFAULT_METHOD = "minmax"
DEFAULT_CALIBRATION_SIZE = 256  # samples (an image with one of its expressions each)
QUANTIZED_OPS = ("MatMul", "Gemm")  # with a constant weight
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Op types that stay float although a Q/DQ could go around them; listed in the manifest per graph.
FLOAT_OPS = ("LayerNormalization", "Softmax", "Erf", "Add", "Sigmoid", "ReduceL2")
# Weight products kept in float by name (a part of the node name): measured to cost accuracy in INT8.
KEEP_FLOAT: tuple[str, ...] = ("patch_embed",)  # the first product: pixels in (demo: mask IoU 0.976 -> 0.986)
QDQ_EXCEPTIONS: tuple[str, ...] = ()  # op types outside QUANTIZED_OPS measured to lose nothing quantized: none
QUANTIZER = (
    "onnxruntime.quantization.quantize_static (QDQ, per-channel symmetric INT8 weights, per-tensor symmetric INT8 activations)"
)


class CalibrationError(ValueError):
    """Calibration data that cannot be used (no data set named, no images, no expressions): one line."""


class INT8Error(RuntimeError):
    """An INT8 graph whose Q/DQ layout is not the one it must have: one line."""


@dataclass
class Calibration:
    """Model inputs of the calibration samples (image, words, pad_mask; N rows) and their description."""

    feeds: dict[str, np.ndarray]
    description: dict


# ------------------------------------------------------------------------------------ the data


def calibration_spec(spec: str | None, meta: dict) -> tuple[str, dict]:
    """The data set to calibrate on: `spec` ('synthetic', 'PATH', 'PATH:split'; the training split
    when none is named), or the one the checkpoint names. Returns (spec with split, build_dataset
    options). Raises CalibrationError when there is none."""
    from restr.data.dataset import parse_spec

    read = {}
    if spec is None:
        data = (meta or {}).get("data")
        if not data:
            raise CalibrationError(
                "INT8 needs calibration data and the model names no data set (random weights, or a "
                "checkpoint without one): give --calibration SPEC (a refer-layout folder, or synthetic for the demo)"
            )
        spec = str(data)
        read = {"split_by": meta.get("split_by"), "image_root": meta.get("image_root")}
    source, split = parse_spec(spec, "train")
    return f"{source}:{split}", read


def load_calibration(
    spec: str | None, meta: dict, cfg, vocab, size: int = DEFAULT_CALIBRATION_SIZE, seed: int = 0
) -> Calibration:
    """`size` samples of the calibration data set (each a different image where there are enough),
    letterboxed and tokenised as in training. Raises CalibrationError (one line) for a data set that
    cannot be read, has no images or no expressions."""
    from restr.data import DataError
    from restr.data.dataset import build_dataset, parse_spec

    if size < 1:
        raise CalibrationError(f"--calibration-size must be at least 1, got {size}")
    full, read = calibration_spec(spec, meta)
    source, split = parse_spec(full)
    try:
        ds = build_dataset(
            source,
            split,
            cfg.image_size,
            vocab,
            cfg.image_mean,
            cfg.image_std,
            cfg.max_words,
            **read,
            transform=cfg.image_transform,
        )
    except (DataError, OSError, ValueError) as e:
        raise CalibrationError(f"--calibration {full}: {first_line(e)}") from None
    if len(ds) == 0:
        raise CalibrationError(f"--calibration {full}: no samples")
    order = np.random.default_rng(seed).permutation(len(ds))
    by_image: dict = {}
    for i in order:  # one expression per image first, then more of the same images
        by_image.setdefault(ds.image_path(int(i)), []).append(int(i))
    picks = [ids[k] for k in range(max(map(len, by_image.values()))) for ids in by_image.values() if k < len(ids)][:size]
    picks = [i for i in picks if ds.text(i).strip()]
    if not picks:
        raise CalibrationError(f"--calibration {full}: the data set has no expressions (every sentence is empty)")
    items, unreadable = [], []
    for i in picks:
        try:
            items.append(ds.arrays(i))
        except (OSError, ValueError) as e:  # a missing or broken image file
            unreadable.append(f"{ds.image_path(i)} ({first_line(e)})")
    if not items:
        raise CalibrationError(f"--calibration {full}: no readable images (e.g. {unreadable[0]})")
    feeds = {k: np.stack([np.asarray(it[k]) for it in items]) for k in ("image", "words", "pad_mask")}
    feeds["pad_mask"] = feeds["pad_mask"].astype(bool)
    if feeds["pad_mask"].all():
        raise CalibrationError(f"--calibration {full}: no expression has a word the model reads")
    images = len({ds.image_path(i) for i in picks})
    return Calibration(
        feeds, {"data": full, "samples": len(items), "images": images, "seed": seed, "unreadable": len(unreadable)}
    )


# ------------------------------------------------------------------------------- quantizing


def _reader(feeds: dict[str, np.ndarray], batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """The calibration rows in batches; `set_range` lets the calibrator collect chunk by chunk
        (histogram calibrators hold every output of a chunk in memory)."""

        def __init__(self):
            self.n = len(next(iter(feeds.values())))
            self.set_range(0, len(self))

        def __len__(self):
            return math.ceil(self.n / batch)

        def set_range(self, start_index: int, end_index: int):
            self._next = iter(range(start_index, min(end_index, len(self))))

        def get_next(self):
            i = next(self._next, None)
            return None if i is None else {k: v[i * batch : (i + 1) * batch] for k, v in feeds.items()}

    return Reader()


def graph_calibration_feeds(graph: str, folder: Path, calibration: Calibration, threads: int = 0) -> dict[str, np.ndarray]:
    """The inputs graph `graph` is calibrated on: the samples themselves, or for fusion_decoder the
    FP32 vision and language graphs' features of them (from `folder`)."""
    f = calibration.feeds
    if graph == "vision":
        return {"image": f["image"]}
    if graph == "language":
        return {"words": f["words"], "pad_mask": f["pad_mask"]}
    if graph == END_TO_END:
        return dict(f)
    vision, language = (_cpu_session(folder / graph_file(g), threads) for g in ("vision", "language"))
    v = np.concatenate(
        [vision.run(["visual_features"], {"image": f["image"][i : i + 8]})[0] for i in range(0, len(f["image"]), 8)]
    )
    l = language.run(["linguistic_features"], {"words": f["words"], "pad_mask": f["pad_mask"]})[0]
    return {"visual_features": v, "linguistic_features": l, "pad_mask": f["pad_mask"]}


def _cpu_session(path: Path, threads: int = 0):
    """A CPU ONNX Runtime session on a graph file just written, before any manifest names it (the
    runtime's runners read graphs through one); `threads` 0: ONNX Runtime's default."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def weight_matmuls(proto: onnx.ModelProto) -> list[str]:
    """Names of the QUANTIZED_OPS nodes whose second input is a constant (a weight)."""
    consts = {t.name for t in proto.graph.initializer} | {
        o for n in proto.graph.node if n.op_type == "Constant" for o in n.output
    }
    return [n.name for n in proto.graph.node if n.op_type in QUANTIZED_OPS and len(n.input) > 1 and n.input[1] in consts]


def quantize_graph(
    fp32_path: Path,
    feeds: dict[str, np.ndarray],
    method: str = DEFAULT_METHOD,
    batch: int = 1,
    keep_float: tuple[str, ...] | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """The INT8 QDQ twin of the FP32 graph at `fp32_path`, calibrated on `feeds` with `method`, checked
    (`check_int8`), and its layout summary."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    proto = onnx.load(str(fp32_path), load_external_data=False)
    keep_float = KEEP_FLOAT if keep_float is None else keep_float
    weights = weight_matmuls(proto)
    nodes = [n for n in weights if not any(k in n for k in keep_float)]
    kept = sorted(set(weights) - set(nodes))
    reader = _reader(feeds, batch)
    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "CalibStridedMinMax": 1,
        "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),  # outputs feed float ops (the bias Add)
        # per output channel: the N axis of a MatMul weight (K, N)
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
    }
    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[method]
    quant_log = logging.getLogger("root")  # the quantizer's advice on pre-processing is printed at WARNING
    level = quant_log.level
    quant_log.setLevel(logging.ERROR)
    try:  # the histogram calibrators print a line per chunk
        with tempfile.TemporaryDirectory(prefix="restr-int8-") as d, contextlib.redirect_stdout(io.StringIO()):
            out = Path(d) / "int8.onnx"
            quantize_static(
                str(fp32_path),
                str(out),
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_quantize=nodes,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=calibrate,
                extra_options=extra,
            )
            quantized = onnx.load(str(out))
    finally:
        quant_log.setLevel(level)
    quantized.producer_name, quantized.producer_version = proto.producer_name, proto.producer_version
    return quantized, {**check_int8(quantized), "kept_float": kept}


def check_int8(proto: onnx.ModelProto) -> dict:
    """The layout TensorRT's explicit quantization and ONNX Runtime's QDQ fusions need; raises
    INT8Error. Every DequantizeLinear feeds QUANTIZED_OPS (or QDQ_EXCEPTIONS) only, every
    QuantizeLinear a DequantizeLinear only; zero points are 0 and INT8; weights are per output
    channel; a quantized product has both inputs dequantized. Returns the summary for the manifest:
    {op type: {"int8": n, "float": m}} and the Q/DQ counts."""
    inits = {t.name: t for t in proto.graph.initializer}
    consumers: dict[str, list] = {}
    producer = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
        for o in n.output:
            producer[o] = n
    allowed = set(QUANTIZED_OPS) | set(QDQ_EXCEPTIONS)
    counts = {q: 0 for q in QDQ_OPS}
    for n in proto.graph.node:
        if n.op_type not in QDQ_OPS:
            continue
        counts[n.op_type] += 1
        users = {u.op_type for u in consumers.get(n.output[0], [])}
        if n.op_type == "QuantizeLinear" and users - {"DequantizeLinear"}:
            raise INT8Error(
                f"INT8 graph: QuantizeLinear {n.name} feeds {sorted(users - {'DequantizeLinear'})}, not a DequantizeLinear"
            )
        if n.op_type == "DequantizeLinear" and users - allowed:
            raise INT8Error(
                f"INT8 graph: DequantizeLinear {n.name} feeds {sorted(users - allowed)}: Q/DQ around an op that stays float"
            )
        if len(n.input) < 3 or n.input[2] not in inits:
            raise INT8Error(f"INT8 graph: {n.op_type} {n.name} has no constant zero point")
        zp = inits[n.input[2]]
        if zp.data_type != TensorProto.INT8 or numpy_helper.to_array(zp).any():
            raise INT8Error(f"INT8 graph: {n.op_type} {n.name} is not symmetric INT8 (zero point must be int8 0 for TensorRT)")
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:  # a weight: one scale per output channel
            weight, scale = inits[n.input[0]], inits[n.input[1]]
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if len(scale.dims) != 1 or scale.dims[0] != weight.dims[axis] or axis != len(weight.dims) - 1:
                raise INT8Error(f"INT8 graph: weight {weight.name} of {n.name} is not quantized per output channel")
    summary: dict[str, dict[str, int]] = {}
    for n in proto.graph.node:
        if n.op_type in QUANTIZED_OPS or n.op_type in FLOAT_OPS:
            sources = [producer.get(i) for i in n.input[:2]] if n.op_type in QUANTIZED_OPS else []
            dq = [s is not None and s.op_type == "DequantizeLinear" for s in sources]
            if any(dq) and not all(dq):
                raise INT8Error(f"INT8 graph: {n.op_type} {n.name} has one input quantized and one float")
            kind = "int8" if dq and all(dq) else "float"
            summary.setdefault(n.op_type, {}).setdefault(kind, 0)
            summary[n.op_type][kind] += 1
    if not summary.get("MatMul", {}).get("int8") and not summary.get("Gemm", {}).get("int8"):
        raise INT8Error("INT8 graph: no matrix product is quantized")
    return {"ops": dict(sorted(summary.items())), **counts}
