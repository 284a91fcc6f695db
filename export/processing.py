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
development machine): the first run in a process 0.23 s and 77 MB more peak RSS, a later run 0.15
s, where the earlier graph, which cast and transposed the whole photo in float, took 0.42 s and
279 MB, and 0.21 s. (Casting the whole photo after a uint8 transpose makes later runs 0.13 s but
the first 0.31 s and 172 MB: restr-predict makes one.)
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from restr.runtime.formats import PROCESSING_GRAPHS, TensorSpec, graph_io
from restr.runtime.transforms import LOGIT_LIMIT, LOGIT_MARGIN, RESTR_TRANSFORM, ImageTransform

OPSET = 18


def processing_io(image_size: int) -> dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]]:
    """{graph: (inputs, outputs)} of the processing graphs, from the one table (formats.GRAPH_IO)."""
    return {g: graph_io(g, {"S": image_size}) for g in PROCESSING_GRAPHS}


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
        vi = lambda t: helper.make_tensor_value_info(t.name, _ONNX_TYPES[t.dtype], list(t.shape))
        graph = helper.make_graph(self.nodes, self.name, [vi(t) for t in inputs], [vi(t) for t in outputs], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="restr")
        model.ir_version = 8  # ONNX Runtime >= 1.14 and TensorRT 10 read IR 8
        onnx.checker.check_model(model, full_check=True)
        return model


def _resize(b: _Builder, x: str, sizes: str, antialias: bool = True) -> str:
    """Bilinear resize of an NCHW float map to `sizes` (4,) int64: Pillow's (antialiased when
    shrinking), or torch's F.interpolate without antialiasing (`align_corners=False`)."""
    if not antialias:  # half_pixel, the source coordinate clamped to the image: F.interpolate's
        return b.op("Resize", x, "", "", sizes, mode="linear", coordinate_transformation_mode="half_pixel")
    return b.op(
        "Resize", x, "", "", sizes, mode="linear", antialias=1, exclude_outside=1, coordinate_transformation_mode="half_pixel"
    )  # exclude_outside: Pillow renormalises its taps at the edges


def preprocess_graph(image_size: int, mean, std, transform: ImageTransform = RESTR_TRANSFORM) -> onnx.ModelProto:
    """The preprocess graph for an export of side `image_size` (see the module docstring)."""
    b, s = _Builder("restr_preprocess"), image_size
    hw = b.op("Gather", b.op("Shape", "rgb"), b.const([0, 1], np.int64), axis=0)  # [H, W]
    # Letterbox.fit: scale = S / max(H, W); h, w = clip(round(H * scale), 1, S), in float64 as Python does.
    hw_f = b.op("Cast", hw, to=TensorProto.DOUBLE)
    scale = b.op("Div", b.const(float(s), np.float64), b.op("ReduceMax", hw_f, keepdims=1))
    new_hw_f = b.op("Clip", b.op("Round", b.op("Mul", hw_f, scale)), b.const(1.0, np.float64), b.const(float(s), np.float64))
    new_hw = b.op("Cast", new_hw_f, to=TensorProto.INT64)
    b.op("Concat", hw, new_hw, axis=0, out="letterbox")
    x = _resized_photo(b, hw, new_hw, mean, std) if transform.antialias else _resized_float_photo(b, hw, new_hw, mean, std)
    pad_end = b.op("Sub", b.const([s, s], np.int64), new_hw)
    if transform.align == "top-left":
        pads = b.op("Concat", b.const([0, 0, 0, 0, 0, 0], np.int64), pad_end, axis=0)  # bottom and right
    else:  # the authors' resize_and_pad: floor((S - h) / 2) above, floor((S - w) / 2) left, the rest below and right
        pad_start = b.op("Div", pad_end, b.const([2, 2], np.int64))
        zeros = b.const([0, 0], np.int64)
        pads = b.op("Concat", zeros, pad_start, zeros, b.op("Sub", pad_end, pad_start), axis=0)
    b.op("Pad", x, pads, b.const(0.0, np.float32), out="image")
    return b.model(processing_io(image_size)["preprocess"])


def _resized_photo(b: _Builder, hw: str, new_hw: str, mean, std) -> str:
    """restr's: the 8-bit photo resized as Pillow does, rounded to 8 bits, normalised (1, 3, h, w)."""
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
        channel = b.op("Cast", _channel(b, c), to=TensorProto.FLOAT)
        narrow = _resize(b, b.op("Reshape", channel, rows), rows_resized)
        channels.append(_resize(b, b.op("Reshape", narrow, plane), sizes))
    x = b.op("Concat", *channels, axis=1)
    x = b.op("Clip", b.op("Round", x), b.const(0.0, np.float32), b.const(255.0, np.float32))
    # (x / 255 - mean) / std as one multiply-add per channel; the padding is 0, the mean's value
    a = (1.0 / (255.0 * np.asarray(std, np.float64))).reshape(1, 3, 1, 1)
    c = (-np.asarray(mean, np.float64) / np.asarray(std, np.float64)).reshape(1, 3, 1, 1)
    return b.op("Add", b.op("Mul", x, b.const(a, np.float32)), b.const(c, np.float32))


def _resized_float_photo(b: _Builder, hw: str, new_hw: str, mean, std) -> str:
    """The authors': each channel normalised in float as their dataset does, (x - 255 mean) / (255 std)
    with the statistics rounded to 2 decimals, then resized without antialiasing (1, 3, h, w).
    Without antialiasing a resize reads 4 pixels per output pixel, so one 2-D Resize per channel
    costs little; the full-size work is the channel's Cast, Sub and Div."""
    one = b.const([1], np.int64)
    plane = b.op("Concat", one, one, hw, axis=0)  # (1, 1, H, W)
    sizes = b.op("Concat", one, one, new_hw, axis=0)
    m, sd = (np.round(255 * np.asarray(v, np.float64), 2) for v in (mean, std))
    channels = []
    for c in range(3):
        channel = b.op("Cast", _channel(b, c), to=TensorProto.FLOAT)
        x = b.op("Div", b.op("Sub", channel, b.const(m[c], np.float32)), b.const(sd[c], np.float32))
        channels.append(_resize(b, b.op("Reshape", x, plane), sizes, antialias=False))
    return b.op("Concat", *channels, axis=1)


def _channel(b: _Builder, c: int) -> str:
    """Channel c of (H, W, 3) rgb, (H, W, 1) uint8."""
    return b.op("Slice", "rgb", b.const([c], np.int64), b.const([c + 1], np.int64), b.const([2], np.int64))


def postprocess_graph(image_size: int, transform: ImageTransform = RESTR_TRANSFORM) -> onnx.ModelProto:
    """The postprocess graph for an export of side `image_size` (see the module docstring)."""
    b = _Builder("restr_postprocess")
    # The geometry [B, 1, S, S, H, W, h, w] as one vector that starts at a Shape node: ONNX Runtime's
    # CUDA EP then computes all of it on the CPU (a shape subgraph) and reads the letterbox there,
    # with no copy between devices (which would forbid CUDA graph capture).
    geometry = b.op("Concat", b.op("Shape", "pixel_probs"), "letterbox", axis=0)

    def part(start, stop):
        return b.op("Slice", geometry, b.const([start], np.int64), b.const([stop], np.int64))

    logits = transform.mask_from == "logits"
    x = "pixel_probs"
    if logits:  # log(p) - log(1 - p), p = 0 and 1 (infinite logits) clipped to what float32 tells apart
        x = b.op("Sub", b.op("Log", x), b.op("Log", b.op("Sub", b.const(1.0, np.float32), x)))
        x = b.op("Clip", x, b.const(-LOGIT_LIMIT, np.float32), b.const(LOGIT_LIMIT, np.float32))
    if transform.align == "top-left":  # the photo's h x w, resized to H x W
        crop = b.op("Slice", x, b.const([0, 0], np.int64), part(6, 8), b.const([2, 3], np.int64))
        x = _resize(b, crop, b.op("Concat", part(0, 2), part(4, 6), axis=0), transform.antialias)
    else:  # the authors' resize_and_crop: the whole square to max(H, W), then H x W from its centre
        photo_hw = part(4, 6)
        side = b.op("ReduceMax", photo_hw, keepdims=1)
        square = _resize(b, x, b.op("Concat", part(0, 2), side, side, axis=0), transform.antialias)
        start = b.op("Div", b.op("Sub", side, photo_hw), b.const([2, 2], np.int64))
        x = b.op("Slice", square, start, b.op("Add", start, photo_hw), b.const([2, 3], np.int64))
    if logits:
        resized = b.op("Squeeze", x, b.const([1], np.int64))
        probs = b.op("Sigmoid", resized, out="probs")
        t = "threshold"
        bound = b.op(
            "Add",
            b.op("Sub", b.op("Log", t), b.op("Log", b.op("Sub", b.const(1.0, np.float32), t))),
            b.const(LOGIT_MARGIN, np.float32),
        )
        mask = b.op("GreaterOrEqual", resized, bound, out="mask")
    else:
        probs = b.op("Squeeze", x, b.const([1], np.int64), out="probs")
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
