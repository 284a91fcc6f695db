"""Patch labels (eq. 11) and the training loss (eq. 12)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_labels(mask: torch.Tensor, patch_size: int, tau: float, rule: str = "mean") -> torch.Tensor:
    """Eq. 11: a patch is positive when the mask's average over it exceeds tau.

    `rule="sum"`: the authors' label instead, the patch's pixel sum > tau (for tau < 1 and a binary
    mask: any foreground pixel). mask: (B, 1, H, W) in {0, 1}. Returns (B, N_v) float labels,
    patches in row-major order.
    """
    pooled = F.avg_pool2d(mask.float(), patch_size, divisor_override=1 if rule == "sum" else None)
    return (pooled > tau).flatten(1).float()


def restr_loss(
    pixel_logits: torch.Tensor,
    patch_logit: torch.Tensor,
    mask: torch.Tensor,
    patch_size: int,
    tau: float,
    lam: float,
    rule: str = "mean",
) -> dict[str, torch.Tensor]:
    """Eq. 12: L = lambda * BCE(y_p, patch labels) + BCE(Y_m, mask), both as BCE-with-logits.

    pixel_logits: (B, 1, H, W); patch_logit: (B, N_v); mask: (B, 1, H, W); `rule`: `patch_labels`'.
    Returns the total and both terms.
    """
    mask = mask.to(pixel_logits.dtype)  # BCE computes in the target's precision: float32 targets would round float64 logits
    patch = F.binary_cross_entropy_with_logits(patch_logit, patch_labels(mask, patch_size, tau, rule).to(patch_logit.dtype))
    pixel = F.binary_cross_entropy_with_logits(pixel_logits, mask)
    return {"loss": lam * patch + pixel, "patch_loss": patch, "pixel_loss": pixel}
