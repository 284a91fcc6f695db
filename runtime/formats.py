"""The export folder's contract in one table: graph names, precisions, attention forms, file names.

The exporter writes by it, the runtime and the benchmarks read by it (as Ultralytics' table of
export formats serves both its exporter and its loader); docs/artifacts.md describes it for people.

    model graphs        end_to_end, vision, language, fusion_decoder    one per precision: fp32, fp16
                                                                         (mixed precision), int8 (static
                                                                         QDQ, calibrated)
    processing graphs   preprocess, postprocess                          FP32; ONNX Runtime runs them
                                                                         whatever runs the model

Each graph's inputs and outputs (names, dtypes, shapes) are in `GRAPH_IO`; the C++ host reads the
same names from runtime/cpp/src/graph_io.hpp, written by `cpp_header` (tests/test_runtime.py checks
that the file is current).
"""

from __future__ import annotations

from dataclasses import dataclass

END_TO_END = "end_to_end"
STAGES = ("vision", "language", "fusion_decoder")  # the split graphs: encode once, ask many
MODEL_GRAPHS = (END_TO_END, *STAGES)
PREPROCESS, POSTPROCESS = "preprocess", "postprocess"
PROCESSING_GRAPHS = (PREPROCESS, POSTPROCESS)
PRECISIONS = ("fp32", "fp16", "int8")
BACKENDS = ("ort", "tensorrt")  # ONNX Runtime graphs, or native TensorRT engines
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


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. `shape` holds ints and names of dynamic axes ("batch")."""

    name: str
    dtype: str  # numpy dtype name: float32, int64, bool
    shape: tuple

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(name=str(d["name"]), dtype=str(d["dtype"]), shape=tuple(d["shape"]))

    def concrete(self, batch: int) -> tuple[int, ...]:
        """The shape with every dynamic axis set to `batch` (the only dynamic axis is the batch)."""
        return tuple(batch if isinstance(s, str) else int(s) for s in self.shape)


# Every graph's inputs and outputs, in the graph's order (hosts that pass tensors by position, the
# C++ one, rely on it). Shapes name their dynamic axes (batch, image_batch, height, width) and
# stand "S", "L", "N", "D" for the manifest's image_size, max_words, num_patches, feature_width.
HEIGHT, WIDTH = "height", "width"  # the photo's size: the processing graphs take any
SIZES = ("S", "L", "N", "D")
_IMAGE = TensorSpec("image", "float32", (BATCH, 3, "S", "S"))
_WORDS = TensorSpec("words", "int64", (BATCH, "L"))
_PAD_MASK = TensorSpec("pad_mask", "bool", (BATCH, "L"))
_LINGUISTIC = TensorSpec("linguistic_features", "float32", (BATCH, "L", "D"))
_PIXEL_PROBS = TensorSpec("pixel_probs", "float32", (BATCH, 1, "S", "S"))
_PROBS = (_PIXEL_PROBS, TensorSpec("patch_probs", "float32", (BATCH, "N")))
_LETTERBOX = TensorSpec("letterbox", "int64", (4,))
GRAPH_IO: dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]] = {
    END_TO_END: ((_IMAGE, _WORDS, _PAD_MASK), _PROBS),
    "vision": ((_IMAGE,), (TensorSpec("visual_features", "float32", (BATCH, "N", "D")),)),
    "language": ((_WORDS, _PAD_MASK), (_LINGUISTIC,)),
    "fusion_decoder": ((TensorSpec("visual_features", "float32", (IMAGE_BATCH, "N", "D")), _LINGUISTIC, _PAD_MASK), _PROBS),
    PREPROCESS: (
        (TensorSpec("rgb", "uint8", (HEIGHT, WIDTH, 3)),),
        (TensorSpec("image", "float32", (1, 3, "S", "S")), _LETTERBOX),
    ),
    POSTPROCESS: (
        (_PIXEL_PROBS, _LETTERBOX, TensorSpec("threshold", "float32", (1,))),
        (
            TensorSpec("probs", "float32", (BATCH, HEIGHT, WIDTH)),
            TensorSpec("mask", "bool", (BATCH, HEIGHT, WIDTH)),
            TensorSpec("score", "float32", (BATCH,)),
            TensorSpec("area", "int64", (BATCH,)),
        ),
    ),
}


def graph_io(graph: str, sizes: dict | None = None) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of `graph` (a model or processing graph, not a manifest key), with the
    sizes "S", "L", "N", "D" replaced by `sizes[...]` where given: ("vision", {"S": 80, "N": 100,
    "D": 64}) -> ((image (batch, 3, 80, 80),), (visual_features (batch, 100, 64),))."""
    sizes = sizes or {}

    def fill(t: TensorSpec) -> TensorSpec:
        return TensorSpec(t.name, t.dtype, tuple(sizes.get(d, d) if isinstance(d, str) else d for d in t.shape))

    inputs, outputs = GRAPH_IO[graph]
    return tuple(map(fill, inputs)), tuple(map(fill, outputs))


def graph_by_inputs(names) -> str | None:
    """The model graph whose input names are `names` (any order), or None."""
    names = set(names)
    return next((g for g in MODEL_GRAPHS if {t.name for t in GRAPH_IO[g][0]} == names), None)


def cpp_header() -> str:
    """runtime/cpp/src/graph_io.hpp: `GRAPH_IO`'s names for the C++ host, in the graphs' order."""

    def strings(xs) -> str:
        return "{" + ", ".join(f'"{x}"' for x in xs) + "}"

    def names(specs) -> str:
        return strings(t.name for t in specs)

    lines = [
        "// Generated from runtime/formats.py (cpp_header): do not edit; tests/test_runtime.py checks it is current.",
        "// Each graph's input and output names, in the graph's order (Graph::run passes tensors by position).",
        "#pragma once",
        "#include <map>",
        "#include <set>",
        "#include <string>",
        "#include <utility>",
        "#include <vector>",
        "",
        "namespace restr_impl {",
        "",
        "struct GraphIO {",
        "  std::vector<std::string> inputs, outputs;",
        "};",
        "",
        "namespace graph_io {",
    ]
    lines += [f"inline const GraphIO {g}{{{names(i)}, {names(o)}}};" for g, (i, o) in GRAPH_IO.items()]
    lines += [
        "",
        "// The model graphs (those the manifest check covers): their input and output names as sets.",
        "inline const std::map<std::string, std::pair<std::set<std::string>, std::set<std::string>>> model_graphs{",
    ]
    lines += [f'    {{"{g}", {{{names(GRAPH_IO[g][0])}, {names(GRAPH_IO[g][1])}}}}},' for g in MODEL_GRAPHS]
    dims = {t.name: t.shape[1:] for g in MODEL_GRAPHS for t in (*GRAPH_IO[g][0], *GRAPH_IO[g][1])}
    lines += [
        "};",
        "// Their tensors' shapes after the first axis: numbers, or S, L, N, D for the manifest's sizes.",
        "inline const std::map<std::string, std::vector<std::string>> tensor_dims{",
    ]
    lines += [f'    {{"{n}", {strings(shape)}}},' for n, shape in dims.items()]
    lines += ["};", "}  // namespace graph_io", "", "}  // namespace restr_impl", ""]
    return "\n".join(lines)
