"""Scaled dot-product attention of eq. 3-5, and the forms it takes in an exported graph.

    SA(q, k, v) = softmax(q k^T * s + bias) v,   s = 1 / sqrt(D_h),   per head

In PyTorch it is `F.scaled_dot_product_attention`. While a graph is exported, `graph_form(...)`
chooses how the exporter writes it, so that every engine sees attention in the form it runs fastest
and no shape arithmetic reaches the graph (constant scale, reshapes with constant targets):

- "onnx": standard ONNX ops in the pattern TensorRT fuses into one attention kernel:
  Reshape [0, -1, H, D_h] -> Transpose -> MatMul -> Mul (constant s) -> Add (key bias) -> Softmax
  -> MatMul -> Transpose -> Reshape [0, -1, D].
- "ort": one `com.microsoft.MultiHeadAttention` node per layer, ONNX Runtime's fused attention
  (flash or memory-efficient kernels on CUDA; it runs on ONNX Runtime's CPU too), with the
  projection's bias folded in.

Key masks travel as one operand per encoder stack (`key_mask`), in the form's own type, with keys on
the last axis; `pad_keys` extends it with keys every query may attend to (the visual tokens and the
class seed of the fusion encoder).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from restr.modeling.graph_form import FORMS, current_form, graph_form  # noqa: F401  (re-exported)
from restr.modeling.ops import pad

MASKED = -10000.0  # additive bias of a padding key; exp(-10000) is 0 in FP32 and FP16 alike


def key_mask(pad_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, N) bool, True = padding -> the mask operand of the current form (keys on the last axis):

    torch: (B, 1, 1, N) bool, True = may be attended (SDPA's convention);
    onnx:  (B, 1, 1, N) float additive bias, 0 or MASKED;
    ort:   (B, N) float, 1 = may be attended; `layer_mask` makes it MultiHeadAttention's int32
           key_padding_mask once the keys are complete (ONNX Runtime's CUDA Pad has no int32 kernel).
    """
    if pad_mask is None:
        return None
    if current_form() == "ort":
        return 1.0 - pad_mask.to(torch.float32)
    if current_form() == "onnx":
        return (pad_mask.to(torch.float32) * MASKED)[:, None, None, :]
    return (~pad_mask)[:, None, None, :]


def layer_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A `key_mask` operand as the layers take it (once per encoder stack, after `pad_keys`)."""
    if mask is not None and current_form() == "ort":
        return mask.to(torch.int32)
    return mask


def pad_keys(mask: torch.Tensor | None, before: int = 0, after: int = 0) -> torch.Tensor | None:
    """Extend a `key_mask` operand with `before` and `after` keys that every query may attend to."""
    if mask is None:
        return None
    attend = 0.0 if current_form() == "onnx" else 1.0  # bias 0; True / 1 = attend
    return pad(mask, -1, before, after, attend)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, heads: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-head SA of eq. 3-5. q, k, v: (B, N, D) before the head split; `bias` (3D,) is added to
    them first (the qkv projection's bias, kept apart in the "ort" form only, so ONNX Runtime fuses it);
    mask from `key_mask`. Returns (B, N, D), heads concatenated."""
    form = current_form()
    if form == "torch":
        if bias is not None:
            q, k, v = (x + b for x, b in zip((q, k, v), bias.chunk(3)))
        return _sdpa(q, k, v, mask, heads)
    return _GraphAttention.apply(q, k, v, bias, mask, heads, int(q.shape[-1]), form)


def _sdpa(q, k, v, mask, heads):
    b, n, d = q.shape
    dh = d // heads
    split = lambda x: x.reshape(b, -1, heads, dh).transpose(1, 2)  # (B, H, N, D_h)
    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask, scale=dh**-0.5)
    return out.transpose(1, 2).reshape(b, n, d)


class _GraphAttention(torch.autograd.Function):
    """Attention as the exporter writes it: computed in PyTorch while tracing (the tracer needs
    values), written into the graph by `symbolic` in the chosen form. Inference only."""

    @staticmethod
    def forward(ctx, q, k, v, bias, mask, heads: int, width: int, form: str):
        if bias is not None:
            q, k, v = (x + b for x, b in zip((q, k, v), bias.chunk(3)))
        if mask is not None and form == "ort":
            mask = mask.bool()[:, None, None, :]
        return _sdpa(q, k, v, mask, heads)

    @staticmethod
    def symbolic(g, q, k, v, bias, mask, heads: int, width: int, form: str):
        d, dh = width, width // heads
        if form == "ort":
            if _is_none(bias):
                bias = g.op("Constant", value_t=torch.zeros(3 * d))
            inputs = (q, k, v, bias) + (() if _is_none(mask) else (mask,))
            return g.op(
                "com.microsoft::MultiHeadAttention", *inputs, num_heads_i=heads, scale_f=dh**-0.5, mask_filter_value_f=MASKED
            )
        if not _is_none(bias):  # the "onnx" form keeps the bias in the projection (Attention.forward)
            raise ValueError("the onnx attention form takes q, k, v with the projection's bias already added")
        const = lambda x: g.op("Constant", value_t=torch.tensor(x, dtype=torch.int64))
        heads_shape = const([0, -1, heads, dh])

        def split(x, perm):  # (B, N, D) -> (B, H, N, D_h), or (B, H, D_h, N) for keys
            return g.op("Transpose", g.op("Reshape", x, heads_shape), perm_i=perm)

        scores = g.op("MatMul", split(q, [0, 2, 1, 3]), split(k, [0, 2, 3, 1]))
        scores = g.op("Mul", scores, g.op("Constant", value_t=torch.tensor(dh**-0.5, dtype=torch.float32)))
        if not _is_none(mask):
            scores = g.op("Add", scores, mask)
        out = g.op("MatMul", g.op("Softmax", scores, axis_i=-1), split(v, [0, 2, 1, 3]))
        return g.op("Reshape", g.op("Transpose", out, perm_i=[0, 2, 1, 3]), const([0, -1, d]))


def _is_none(x) -> bool:
    return x is None or (hasattr(x, "node") and x.node().mustBeNone())
