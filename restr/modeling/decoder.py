"""Patch-level prediction (eq. 9) and the coarse-to-fine segmentation decoder (section 3.3, eq. 10)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from restr.modeling.ops import cat_broadcast, channel_linear


def patch_logits(z_v_fused: torch.Tensor, classifier: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """Eq. 9 before the sigmoid: z_v' e_s'^T / sqrt(D) (`scale=False`: the authors' z_v' e_s'^T).

    z_v_fused: (B, N_v, D); classifier e_s': (B, 1, D). Returns (B, N_v) logits; y_p = sigmoid(logits).
    """
    logits = (z_v_fused @ classifier.transpose(1, 2))[..., 0]  # not squeeze: it exports as an If
    return logits / math.sqrt(int(z_v_fused.shape[-1])) if scale else logits


class DecoderBlock(nn.Module):
    """x2 bilinear upsampling, then a linear layer halving the channels, then LeakyReLU.

    Upsample-then-linear is the authors' order and reproduces the paper's MACs. `linear_first` runs
    the linear layer on the coarse grid instead: the same function with the same weights (bilinear
    weights sum to 1, so interpolation commutes with an affine map) at a quarter of the MACs.
    """

    def __init__(self, in_width: int, slope: float, linear_first: bool = False, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_width, in_width // 2, bias=bias)
        self.act = nn.LeakyReLU(slope)
        self.linear_first = linear_first

    def _upsample(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        return channel_linear(self.linear, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C/2, 2h, 2w)."""
        if self.linear_first:
            return self.act(self._upsample(self._linear(x)))
        return self.act(self._linear(self._upsample(x)))


class CoarseToFineDecoder(nn.Module):
    """[z_v, z_masked] on the (H/P, W/P) grid -> pixel logits at (H, W), K = log2(P) blocks.

    The authors' switches: `gate="logit"` masks z_v' with the raw patch logit instead of sigma(y_p);
    `bias=False`, their 1x1 convolutions without bias.
    """

    def __init__(
        self,
        width: int,
        patch_size: int,
        slope: float = 0.01,
        linear_first: bool = False,
        gate: str = "sigmoid",
        bias: bool = True,
    ):
        super().__init__()
        k = int(math.log2(patch_size))
        in_width = 2 * width
        self.gate = gate
        self.blocks = nn.ModuleList(DecoderBlock(in_width // 2**i, slope, linear_first, bias) for i in range(k))
        self.head = nn.Linear(in_width // 2**k, 1, bias=bias)

    def forward(self, v: torch.Tensor, z_v_fused: torch.Tensor, patch_logit: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """v: projected visual features (B_v, N_v, D), B_v = B or 1 (shared); z_v_fused: z_v' (B, N_v, D);
        patch_logit: (B, N_v).

        Returns pixel logits (B, 1, P*h, P*w) where grid = (h, w).
        """
        gate = torch.sigmoid(patch_logit) if self.gate == "sigmoid" else patch_logit
        z_masked = z_v_fused * gate[..., None]  # eq. 10
        x = cat_broadcast(v, z_masked, -1)  # (B, N_v, 2D)
        x = x.transpose(1, 2).reshape(-1, int(x.shape[-1]), grid[0], grid[1])  # NCHW from here on
        for block in self.blocks:
            x = block(x)
        return channel_linear(self.head, x)
