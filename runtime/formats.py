"""The export folder's contract in one table: graph names, precisions, attention forms, file names.

The exporter writes by it, the runtime and the benchmarks read by it (as Ultralytics' table of
export formats serves both its exporter and its loader); docs/artifacts.md describes it for people.

    model graphs        end_to_end, vision, language, fusion_decoder    one per precision: fp32, fp16
                                                                         (mixed precision), int8 (static
                                                                         QDQ, calibrated)
    processing graphs   preprocess, postprocess                          FP32; ONNX Runtime runs them
                                                                         whatever runs the model
"""
from __future__ import annotations

END_TO_END = "end_to_end"
STAGES = ("vision", "language", "fusion_decoder")  # the split graphs: encode once, ask many
MODEL_GRAPHS = (END_TO_END, *STAGES)
PREPROCESS, POSTPROCESS = "preprocess", "postprocess"
PROCESSING_GRAPHS = (PREPROCESS, POSTPROCESS)
PRECISIONS = ("fp32", "fp16", "int8")
# What restr-export writes unless asked: INT8 needs calibration data (restr.export.int8), so it is
# written on request only.
DEFAULT_PRECISIONS = ("fp32", "fp16")
BATCH = "batch"  # the dynamic axis every model graph has
IMAGE_BATCH = "image_batch"  # fusion_decoder's visual_features: 1 (one image, K expressions) or batch
# How attention is written in a graph (restr.modeling.attention): "onnx" is standard ONNX, the
# pattern TensorRT fuses (engines are built from it); "ort" is ONNX Runtime's fused
# com.microsoft.MultiHeadAttention.
ATTENTION_FORMS = ("onnx", "ort")


def graph_key(graph: str, precision: str) -> str:
    """Manifest key of a model graph at a precision: ("vision", "fp16") -> "vision_fp16"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return graph if precision == "fp32" else f"{graph}_{precision}"


def key_precision(key: str) -> str:
    """The precision of manifest key `key` by its name: "vision_int8" -> "int8", "vision" -> "fp32"."""
    return next((p for p in PRECISIONS[1:] if key.endswith(f"_{p}")), "fp32")


def base_graph(key: str) -> str:
    """The model graph a manifest key holds at any precision: "vision_int8" -> "vision"."""
    precision = key_precision(key)
    return key if precision == "fp32" else key.removesuffix(f"_{precision}")


def graph_file(key: str) -> str:
    """File name of the ONNX graph under manifest key `key`."""
    return f"{key}.onnx"


def engine_file(key: str) -> str:
    """File name of the TensorRT engine built from graph `key` (its sidecar adds .json)."""
    return f"{key}.engine"
