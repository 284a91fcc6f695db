"""Two tensor operations ReSTR's stages share, written so an exported graph needs no shape arithmetic.

- `cat_broadcast`: concatenation where one side may have batch 1 and is shared by every row of the
  other (one image's visual features with K expressions). Exported, it is two constant Pads and an
  Add, which broadcasts the batch without a Shape -> Expand chain.
- `channel_linear`: a linear layer over the channels of an NCHW map, as one MatMul of the weight with
  the (B, C, H*W) map, so the decoder needs no NCHW <-> NHWC transposes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from restr.modeling.graph_form import current_form


def cat_broadcast(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """[a, b] along `dim` (1: tokens, -1: channels) of (B, N, D) tensors; a batch of 1 is broadcast."""
    if current_form() == "torch":
        n = max(a.shape[0], b.shape[0])
        return torch.cat([a.expand(n, -1, -1), b.expand(n, -1, -1)], dim)
    # Exported: zero-pad each to the joint size and add.
    na, nb = int(a.shape[dim]), int(b.shape[dim])
    return pad(a, dim, 0, nb) + pad(b, dim, na, 0)


def pad(x: torch.Tensor, dim: int, before: int, after: int, value: float = 0.0) -> torch.Tensor:
    """`x` padded along `dim` with `before` and `after` entries of `value`. Exported as one Pad with
    constant pads (F.pad's exporter builds its pads from ConstantOfShape, Concat and Slice nodes)."""
    rank, dim = x.dim(), dim % x.dim()
    if not torch.jit.is_tracing():
        return F.pad(x, [0, 0] * (rank - 1 - dim) + [before, after], value=value)
    return _ConstantPad.apply(x, rank, dim, before, after, value)


class _ConstantPad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rank: int, dim: int, before: int, after: int, value: float):
        return F.pad(x, [0, 0] * (rank - 1 - dim) + [before, after], value=value)

    @staticmethod
    def symbolic(g, x, rank: int, dim: int, before: int, after: int, value: float):
        pads = [0] * (2 * rank)  # ONNX order: every axis' begin, then every axis' end
        pads[dim], pads[rank + dim] = before, after
        fill = g.op("Cast", g.op("Constant", value_t=torch.tensor(value)), to_i=_onnx_dtype(x))
        return g.op("Pad", x, g.op("Constant", value_t=torch.tensor(pads, dtype=torch.int64)), fill)


def _onnx_dtype(x) -> int:
    from torch.onnx._internal.torchscript_exporter import _type_utils

    return _type_utils.JitScalarType.from_value(x).onnx_type()


def channel_linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`linear` over the channels of x: (B, C_in, h, w) -> (B, C_out, h, w)."""
    c, h, w = (int(s) for s in x.shape[1:])
    y = torch.matmul(linear.weight, x.reshape(-1, c, h * w))
    if linear.bias is not None:
        y = y + linear.bias[:, None]
    return y.reshape(-1, linear.out_features, h, w)
