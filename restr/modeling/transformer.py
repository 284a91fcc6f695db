"""The one transformer layer every ReSTR encoder is built from (paper eq. 1-5).

    z = z + MSA(LN(z))      (eq. 1)
    z = z + MLP(LN(z))      (eq. 2)

In training each residual branch may be dropped per sample (stochastic depth, `EncoderConfig.drop_path`).

Parameter names follow timm's ViT (`qkv`, `proj`, `norm1`, `mlp.fc1`, ...) so ImageNet checkpoints
load by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from restr.config import EncoderConfig
from restr.modeling.attention import attend, layer_mask
from restr.modeling.drop_path import DropPath, drop_path_rates
from restr.modeling.graph_form import current_form


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
    """Pre-norm transformer layer, eq. 1-2, with stochastic depth `drop_path` on both branches.

    `post_norm`: the authors' language layers instead, z = LN(z + MSA(z)); z = LN(z + MLP(z)).
    """

    def __init__(
        self, width: int, heads: int, mlp_width: int, drop_path: float = 0.0, eps: float = 1e-6, post_norm: bool = False
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_width)
        # Identity at rate 0: the exported graphs and the RNG stream of models without it are unchanged.
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.post_norm = post_norm

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """z: (B, N, D) -> (B, N, D); mask: a `key_mask` operand."""
        if self.post_norm:
            z = self.norm1(z + self.drop_path(self.attn(z, mask)))
            return self.norm2(z + self.drop_path(self.mlp(z)))
        z = z + self.drop_path(self.attn(self.norm1(z), mask))  # eq. 1
        return z + self.drop_path(self.mlp(self.norm2(z)))  # eq. 2


class Transformers(nn.Module):
    """`Transformers(z; theta)` of the paper: a stack of layers and a final LN.

    With `share_weights` one layer is applied `depth` times (the paper's CME' variant).
    `drop_path`: each layer's stochastic-depth rate (default: 0 rising to `cfg.drop_path` over the
    stack); a shared layer takes their mean. `eps`, `post_norm` and `final_norm=False` are the
    authors' switches (`ReSTRConfig.layer_norm_eps`, `language_norm`, `fusion_vl_norm`).
    """

    def __init__(
        self,
        cfg: EncoderConfig,
        depth: int | None = None,
        share_weights: bool = False,
        drop_path: list[float] | None = None,
        eps: float = 1e-6,
        post_norm: bool = False,
        final_norm: bool = True,
    ):
        super().__init__()
        self.depth = cfg.depth if depth is None else depth
        rates = drop_path_rates(cfg.drop_path, self.depth) if drop_path is None else list(drop_path)
        if len(rates) != self.depth:
            raise ValueError(f"{len(rates)} drop-path rates for {self.depth} layers")
        if share_weights:
            rates = [sum(rates) / max(1, len(rates))]
        self.blocks = nn.ModuleList(TransformerLayer(cfg.width, cfg.heads, cfg.mlp_width, rate, eps, post_norm) for rate in rates)
        self.norm = nn.LayerNorm(cfg.width, eps=eps) if final_norm else None

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """z: (B, N, D); mask: which keys may be attended, a `key_mask(pad_mask)` operand (made once
        per stack: every layer shares it). Returns (B, N, D)."""
        mask = layer_mask(mask)
        for i in range(self.depth):
            z = self.blocks[i % len(self.blocks)](z, mask)
        return z if self.norm is None else self.norm(z)
