"""Pre- and post-processing as ONNX graphs, so every host (Python, C++, Triton) runs one definition,
on the GPU where there is one (as SAM's ONNX export puts mask post-processing in the graph).

    preprocess   rgb (H, W, 3) uint8, any size
                 -> image (1, 3, S, S) float32: letterboxed (top-left, padded with the mean) and normalised
                 -> letterbox (4,) int64: [H, W, h, w], h x w the resized image inside the square
    postprocess  pixel_probs (B, 1, S, S) float32, letterbox (4,) int64, threshold (1,) float32
                 -> probs (B, H, W) float32, mask (B, H, W) bool (probs > threshold),
                    score (B,) float32 (mean probability inside the mask, 0 when empty), area (B,) int64

They compute what `restr.runtime.transforms` does with Pillow (the training transform):
`Letterbox.fit` (the same float64 arithmetic and round-half-even), Pillow's bilinear resize, which
widens its filter when shrinking, as ONNX's Resize with `antialias=1`, `half_pixel` coordinates,
then rounding to uint8 as Pillow does; `Letterbox.invert` (crop, bilinear resize of float maps).
Built with onnx.helper at opset 18 (Resize's antialias); plain ONNX ops, FP32.

Written for photos of any size (a 12 MP photo is 36 MB of uint8 and 144 MB as float). The
preprocess graph resizes each channel on its own: it slices the channel from the uint8 photo, casts
that one to float and resizes it in two passes, the width with every row as a channel of its own
(so ONNX Runtime's threads share the rows), then the height. At most one channel is ever float at
full size, and the result is the same bits as resizing the float (1, 3, H, W) image at once (ONNX
Runtime's antialiased Resize computes each channel alone, the width first; a pass that keeps a size
weighs each pixel by exactly 1). On a 4000 x 3000 photo (CPU time, medians of 6, the shared 2-core
development machine): the first run of a session 0.23 s and 77 MB more peak RSS, a later run 0.15
s, where the earlier graph, which cast and transposed the whole photo in float, took 0.42 s and
279 MB, and 0.21 s. (Casting the whole photo after a uint8 transpose makes later runs 0.13 s but
the first 0.31 s and 172 MB: restr-predict makes one.)
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from restr.runtime.artifacts import TensorSpec
from restr.runtime.formats import BATCH

OPSET = 18
HEIGHT, WIDTH = "height", "width"


def processing_io(image_size: int) -> dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]]:
    """{graph: (inputs, outputs)} of the processing graphs (docs/artifacts.md)."""
    s = image_size
    letterbox = TensorSpec("letterbox", "int64", (4,))
    return {
        "preprocess": ((TensorSpec("rgb", "uint8", (HEIGHT, WIDTH, 3)),),
                       (TensorSpec("image", "float32", (1, 3, s, s)), letterbox)),
        "postprocess": ((TensorSpec("pixel_probs", "float32", (BATCH, 1, s, s)), letterbox, TensorSpec("threshold", "float32", (1,))),
                        (TensorSpec("probs", "float32", (BATCH, HEIGHT, WIDTH)), TensorSpec("mask", "bool", (BATCH, HEIGHT, WIDTH)),
                         TensorSpec("score", "float32", (BATCH,)), TensorSpec("area", "int64", (BATCH,)))),
    }


_ONNX_TYPES = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "uint8": TensorProto.UINT8, "bool": TensorProto.BOOL}


class _Builder:
    """A few helpers over onnx.helper: constants become initializers, nodes get readable names."""

    def __init__(self, name: str):
        self.name, self.nodes, self.inits, self.n = name, [], [], 0

    def const(self, value, dtype) -> str:
        self.n += 1
        name = f"c{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        self.n += 1
        out = out or f"{op_type.lower()}{self.n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"{op_type}_{self.n}", **attrs))
        return out

    def model(self, io) -> onnx.ModelProto:
        inputs, outputs = io
        vi = lambda t: helper.make_tensor_value_info(t.name, _ONNX_TYPES[t.dtype], list(t.shape))  # noqa: E731
        graph = helper.make_graph(self.nodes, self.name, [vi(t) for t in inputs], [vi(t) for t in outputs], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="restr")
        model.ir_version = 8  # ONNX Runtime >= 1.14 and TensorRT 10 read IR 8
        onnx.checker.check_model(model, full_check=True)
        return model


def _resize(b: _Builder, x: str, sizes: str) -> str:
    """Pillow-compatible bilinear resize of an NCHW float map to `sizes` (4,) int64."""
    return b.op("Resize", x, "", "", sizes, mode="linear", antialias=1, exclude_outside=1,
                coordinate_transformation_mode="half_pixel")  # exclude_outside: Pillow renormalises its taps at the edges


def preprocess_graph(image_size: int, mean, std) -> onnx.ModelProto:
    """The preprocess graph for an export of side `image_size` (see the module docstring)."""
    b, s = _Builder("restr_preprocess"), image_size
    hw = b.op("Gather", b.op("Shape", "rgb"), b.const([0, 1], np.int64), axis=0)  # [H, W]
    # Letterbox.fit: scale = S / max(H, W); h, w = clip(round(H * scale), 1, S), in float64 as Python does.
    hw_f = b.op("Cast", hw, to=TensorProto.DOUBLE)
    scale = b.op("Div", b.const(float(s), np.float64), b.op("ReduceMax", hw_f, keepdims=1))
    new_hw_f = b.op("Clip", b.op("Round", b.op("Mul", hw_f, scale)), b.const(1.0, np.float64), b.const(float(s), np.float64))
    new_hw = b.op("Cast", new_hw_f, to=TensorProto.INT64)
    b.op("Concat", hw, new_hw, axis=0, out="letterbox")
    # Each channel of (H, W, 3) uint8 in float, resized in two passes: the width with every row a channel
    # of its own, (1, H, 1, W) -> (1, H, 1, w), so ONNX Runtime shares the rows among its threads; then
    # the height, (1, 1, H, w) -> (1, 1, h, w); the three side by side (1, 3, h, w), rounded to uint8
    # values as Pillow's 8-bit output
    one = b.const([1], np.int64)
    height, width = (b.op("Slice", hw, b.const([i], np.int64), b.const([i + 1], np.int64)) for i in (0, 1))
    new_width = b.op("Slice", new_hw, one, b.const([2], np.int64))
    rows = b.op("Concat", one, height, one, width, axis=0)
    rows_resized = b.op("Concat", one, height, one, new_width, axis=0)
    plane = b.op("Concat", one, one, height, new_width, axis=0)
    sizes = b.op("Concat", one, one, new_hw, axis=0)
    channels = []
    for c in range(3):
        channel = b.op("Cast", b.op("Slice", "rgb", b.const([c], np.int64), b.const([c + 1], np.int64), b.const([2], np.int64)), to=TensorProto.FLOAT)
        narrow = _resize(b, b.op("Reshape", channel, rows), rows_resized)
        channels.append(_resize(b, b.op("Reshape", narrow, plane), sizes))
    x = b.op("Concat", *channels, axis=1)
    x = b.op("Clip", b.op("Round", x), b.const(0.0, np.float32), b.const(255.0, np.float32))
    # (x / 255 - mean) / std as one multiply-add per channel; the padding is 0, the mean's value
    a = (1.0 / (255.0 * np.asarray(std, np.float64))).reshape(1, 3, 1, 1)
    c = (-np.asarray(mean, np.float64) / np.asarray(std, np.float64)).reshape(1, 3, 1, 1)
    x = b.op("Add", b.op("Mul", x, b.const(a, np.float32)), b.const(c, np.float32))
    pad_end = b.op("Sub", b.const([s, s], np.int64), new_hw)
    pads = b.op("Concat", b.const([0, 0, 0, 0, 0, 0], np.int64), pad_end, axis=0)  # bottom and right
    b.op("Pad", x, pads, b.const(0.0, np.float32), out="image")
    return b.model(processing_io(image_size)["preprocess"])


def postprocess_graph(image_size: int) -> onnx.ModelProto:
    """The postprocess graph for an export of side `image_size` (see the module docstring)."""
    b = _Builder("restr_postprocess")
    # The geometry [B, 1, S, S, H, W, h, w] as one vector that starts at a Shape node: ONNX Runtime's
    # CUDA EP then computes all of it on the CPU (a shape subgraph) and reads the letterbox there,
    # with no copy between devices (which would forbid CUDA graph capture).
    geometry = b.op("Concat", b.op("Shape", "pixel_probs"), "letterbox", axis=0)

    def part(start, stop):
        return b.op("Slice", geometry, b.const([start], np.int64), b.const([stop], np.int64))

    crop = b.op("Slice", "pixel_probs", b.const([0, 0], np.int64), part(6, 8), b.const([2, 3], np.int64))
    sizes = b.op("Concat", part(0, 2), part(4, 6), axis=0)
    probs = b.op("Squeeze", _resize(b, crop, sizes), b.const([1], np.int64), out="probs")
    mask = b.op("Greater", probs, "threshold", out="mask")
    ones = b.op("Cast", mask, to=TensorProto.FLOAT)
    # The area counts in FP32 per row (exact below 2^24 pixels a row), then adds the rows in int64: an
    # int64 sum over every pixel ran 26x slower than FP32 on the CUDA EP (0.33 ms at 640x480, H200)
    # and 17x on the CPU EP.
    rows = b.op("ReduceSum", ones, b.const([2], np.int64), keepdims=0)
    area = b.op("ReduceSum", b.op("Cast", rows, to=TensorProto.INT64), b.const([1], np.int64), keepdims=0, out="area")
    inside = b.op("ReduceSum", b.op("Mul", probs, ones), b.const([1, 2], np.int64), keepdims=0)
    denom = b.op("Max", b.op("Cast", area, to=TensorProto.FLOAT), b.const(1.0, np.float32))
    b.op("Div", inside, denom, out="score")
    return b.model(processing_io(image_size)["postprocess"])
