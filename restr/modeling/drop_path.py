"""Stochastic depth ("drop path", Huang et al. 2016), as the authors' ViT and fusion layers use it.

In training, each sample's residual branch is dropped with probability p and kept ones are scaled
by 1 / (1 - p), so the expected output is unchanged; in evaluation (and in every export) it is the
identity. The paper does not mention it; the authors' code trains with a maximum rate of 0.1.
"""

from __future__ import annotations

import torch
from torch import nn


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
    """Per-layer rates rising linearly from 0 to `max_rate` over `depth` layers (timm's ViT schedule)."""
    if depth <= 1:
        return [max_rate] * depth
    return [max_rate * i / (depth - 1) for i in range(depth)]


class DropPath(nn.Module):
    """branch (B, ...) -> branch with whole samples zeroed at rate p (training only), shape unchanged."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return branch
        keep = 1.0 - self.p
        shape = (branch.shape[0],) + (1,) * (branch.ndim - 1)
        return branch * branch.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p:g}"
