"""Multimodal fusion encoder (section 3.2, Fig. 3) and its variants.

All variants take the visual features z_v (B, N_v, D_v) and linguistic features z_l (B, N_l, D_l),
normalise each token (L2), project both to width D and return

    z_v'  (B, N_v, D)  patch-wise multimodal features
    e_s'  (B, 1, D)    the adaptive classifier

CME (default):   [z_v', z_l'] = Transformers([z_v, z_l]; theta_vl)     (eq. 7)
                 e_s'         = Transformers([z_l', e_s]; theta_ls)    (eq. 8)
CME-shared:      the same with the layers of each encoder sharing weights (CME' in Table 3b).
VME:             [z_v', z_l', e_s'] = Transformers([z_v, z_l, e_s])   (4 layers together).
IME:             z_v' as eq. 7; e_s' = Transformers([z_l, e_s]) from the projected z_l,
                 so the classifier never sees the image.

The authors' switches (`ReSTRConfig`): no key masks, the padded words' l zeroed instead
(`zero_padding`); no final LN after eq. 7 (`vl_norm=False`); two D x D projections of z_v' and e_s'
(`patch_projections`, their P_patch and P_cls); each stack its own drop-path ramp.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from restr.config import EncoderConfig
from restr.modeling.attention import key_mask, pad_keys
from restr.modeling.drop_path import drop_path_rates
from restr.modeling.ops import cat_broadcast
from restr.modeling.transformer import Transformers


def l2_normalize(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """z / max(||z||, eps) per token, as F.normalize, whose export expands the norm to z's shape
    (Shape -> Expand); here the division broadcasts."""
    return z / z.norm(dim=-1, keepdim=True).clamp_min(eps)


def _stack_rates(max_rate: float, depth: int, built: int, ramp: str, joint: list[float]) -> list[float]:
    """Drop-path rates of one fusion stack of `depth` layers: its part of the joint ramp, or (the
    authors') torch.linspace(0, max_rate, built) over the `built` layers it holds (one when shared)."""
    if ramp == "joint":
        return joint
    rates = [max_rate * i / (built - 1) if built > 1 else 0.0 for i in range(built)]
    return rates * (depth // built)


class FusionEncoder(nn.Module):
    def __init__(
        self,
        cfg: EncoderConfig,
        vision_width: int,
        language_width: int,
        variant: str = "cme",
        eps: float = 1e-6,
        mask_padding: bool = True,
        zero_padding: bool = False,
        vl_norm: bool = True,
        patch_projections: bool = False,
        drop_path_ramp: str = "joint",
    ):
        super().__init__()
        self.variant = variant
        self.mask_padding, self.zero_padding = mask_padding, zero_padding
        self.vision_proj = nn.Linear(vision_width, cfg.width)
        self.language_proj = nn.Linear(language_width, cfg.width)
        self.class_seed = nn.Parameter(torch.zeros(1, 1, cfg.width))  # e_s
        nn.init.trunc_normal_(self.class_seed, std=0.02)
        if patch_projections:  # z_v' P_patch and e_s' P_cls, initialised as the authors' D^-1/2 N(0, 1)
            self.patch_proj = nn.Parameter(torch.randn(cfg.width, cfg.width) / math.sqrt(cfg.width))
            self.classifier_proj = nn.Parameter(torch.randn(cfg.width, cfg.width) / math.sqrt(cfg.width))
        else:
            self.patch_proj = self.classifier_proj = None
        half = cfg.depth // 2
        rates = drop_path_rates(cfg.drop_path, cfg.depth)  # one ramp over the 4 fusion layers, as one stack
        if variant == "vme":
            self.joint = Transformers(cfg, drop_path=rates, eps=eps)
        else:
            shared = variant == "cme-shared"
            first, second = (
                _stack_rates(cfg.drop_path, d, 1 if shared else d, drop_path_ramp, part)
                for d, part in ((half, rates[:half]), (cfg.depth - half, rates[half:]))
            )
            self.visual_linguistic = Transformers(
                cfg, depth=half, share_weights=shared, drop_path=first, eps=eps, final_norm=vl_norm
            )
            self.linguistic_seed = Transformers(cfg, depth=cfg.depth - half, share_weights=shared, drop_path=second, eps=eps)

    def project_visual(self, z_v: torch.Tensor) -> torch.Tensor:
        """z_v (B, N_v, D_v) -> v (B, N_v, D): per-token L2 normalisation, then a linear layer."""
        return self.vision_proj(l2_normalize(z_v))

    def project_linguistic(self, z_l: torch.Tensor) -> torch.Tensor:
        """z_l (B, N_l, D_l) -> l (B, N_l, D): per-token L2 normalisation, then a linear layer."""
        return self.language_proj(l2_normalize(z_l))

    def forward(self, v: torch.Tensor, l: torch.Tensor, pad_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """v: projected z_v (B_v, N_v, D); l: projected z_l (B, N_l, D); pad_mask: (B, N_l) bool, True = padding.
        B_v is B, or 1: one image's features shared by B expressions.

        Returns z_v' (B, N_v, D) and e_s' (B, 1, D).
        """
        n_v = int(v.shape[1])
        if self.zero_padding:  # the authors: padded words enter as zeros, and are attended
            l = l * (~pad_mask)[..., None].to(l.dtype)
        words_mask = key_mask(pad_mask) if self.mask_padding else None  # the visual tokens and the seed are never masked
        if self.variant == "vme":
            z = self.joint(cat_broadcast(cat_broadcast(v, l, 1), self.class_seed, 1), pad_keys(words_mask, n_v, 1))
            return self._project(z[:, :n_v], z[:, -1:])
        z = self.visual_linguistic(cat_broadcast(v, l, 1), pad_keys(words_mask, n_v, 0))  # eq. 7
        z_v_fused, z_l_attended = z[:, :n_v], z[:, n_v:]
        words = l if self.variant == "ime" else z_l_attended
        e = self.linguistic_seed(cat_broadcast(words, self.class_seed, 1), pad_keys(words_mask, 0, 1))  # eq. 8
        return self._project(z_v_fused, e[:, -1:])

    def _project(self, z_v_fused: torch.Tensor, classifier: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.patch_proj is None:
            return z_v_fused, classifier
        return z_v_fused @ self.patch_proj, classifier @ self.classifier_proj
