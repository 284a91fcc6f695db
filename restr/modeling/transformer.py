"""The one transformer layer every ReSTR encoder is built from (paper eq. 1-5).

    z = z + MSA(LN(z))      (eq. 1)
    z = z + MLP(LN(z))      (eq. 2)

Parameter names follow timm's ViT (`qkv`, `proj`, `norm1`, `mlp.fc1`, ...) so ImageNet checkpoints
load by name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from restr.config import EncoderConfig
from restr.modeling.attention import attend, current_form, layer_mask


class Attention(nn.Module):
    """Multi-headed self-attention, eq. 3-5: A = softmax(q k^T / sqrt(D_h)), SA = A v (`attend`)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)  # W_MSA

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """z: (B, N, D); mask: a `key_mask` operand. Returns (B, N, D)."""
        if current_form() == "ort":  # the bias goes into the fused attention node
            q, k, v = F.linear(z, self.qkv.weight).split(self.proj.in_features, dim=-1)
            return self.proj(attend(q, k, v, mask, self.heads, self.qkv.bias))
        q, k, v = self.qkv(z).split(self.proj.in_features, dim=-1)  # split, not chunk: chunk exports shape arithmetic
        return self.proj(attend(q, k, v, mask, self.heads))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(z)))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer, eq. 1-2."""

    def __init__(self, width: int, heads: int, mlp_width: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = MLP(width, mlp_width)

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """z: (B, N, D) -> (B, N, D); mask: a `key_mask` operand."""
        z = z + self.attn(self.norm1(z), mask)  # eq. 1
        return z + self.mlp(self.norm2(z))  # eq. 2


class Transformers(nn.Module):
    """`Transformers(z; theta)` of the paper: a stack of layers and a final LN.

    With `share_weights` one layer is applied `depth` times (the paper's CME' variant).
    """

    def __init__(self, cfg: EncoderConfig, depth: int | None = None, share_weights: bool = False):
        super().__init__()
        self.depth = cfg.depth if depth is None else depth
        n_layers = 1 if share_weights else self.depth
        self.blocks = nn.ModuleList(TransformerLayer(cfg.width, cfg.heads, cfg.mlp_width) for _ in range(n_layers))
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """z: (B, N, D); mask: which keys may be attended, a `key_mask(pad_mask)` operand (made once
        per stack: every layer shares it). Returns (B, N, D)."""
        mask = layer_mask(mask)
        for i in range(self.depth):
            z = self.blocks[i % len(self.blocks)](z, mask)
        return self.norm(z)
