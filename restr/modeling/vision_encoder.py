"""Vision encoder (section 3.1, eq. 6): linear patch embedding + learnable 1-D position + transformers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from restr.config import POSITION_CODES, EncoderConfig
from restr.modeling.ops import cat_broadcast
from restr.modeling.transformer import Transformers


def patchify(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N_v, C*P*P), patches in row-major order, features ordered (C, P_h, P_w).

    The (C, P_h, P_w) order is the flattening of a stride-P conv kernel, so timm checkpoints load as is.
    Sizes are Python ints and the batch is -1, so an exported graph reshapes to constant targets.
    """
    c, h, w = (int(s) for s in image.shape[1:])
    p = patch_size
    x = image.reshape(-1, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(-1, (h // p) * (w // p), c * p * p)


def resize_pos_embed(
    pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], mode: str = "bicubic"
) -> torch.Tensor:
    """(1, h*w, D) on `old_grid` -> (1, h'*w', D) on `new_grid`, bicubic in 2-D (or `mode="bilinear"`,
    the authors' forward pass; both with half-pixel centres, no antialiasing)."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    d = pos_embed.shape[-1]
    grid = pos_embed.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid if grid.dtype == torch.float64 else grid.float(), size=tuple(new_grid), mode=mode, align_corners=False
    )
    return grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d).to(pos_embed.dtype)


def sincos_2d(grid: tuple[int, int], width: int) -> torch.Tensor:
    """(h*w, width) 2-D sin-cos position code (MAE's): half the channels encode rows, half columns."""
    from restr.modeling.language_encoder import sinusoidal_position_encoding

    h, w = grid
    half = width // 2
    rows = sinusoidal_position_encoding(h, half)  # (h, half)
    cols = sinusoidal_position_encoding(w, width - half)  # (w, width - half)
    return torch.cat([rows[:, None].expand(h, w, half), cols[None].expand(h, w, width - half)], -1).reshape(h * w, width)


class PatchEmbed(nn.Module):
    """x^p = flatten(patches) W_E: a linear projection of non-overlapping P x P patches."""

    def __init__(self, patch_size: int, width: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(in_chans * patch_size * patch_size, width)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N_v, D_v)."""
        return self.proj(patchify(image, self.patch_size))


class VisionEncoder(nn.Module):
    """z_v = Transformers(x^p + E_pos; theta_v), eq. 6. No class token.

    `class_token`: the authors' ViT instead, which runs a class token (with its own position) in
    front of the patches through every layer and drops it afterwards. `resize`: how the position grid
    is interpolated for another input size (bicubic; the authors' forward pass: bilinear).
    """

    def __init__(
        self,
        cfg: EncoderConfig,
        image_size: int,
        patch_size: int,
        pos_embed: str = "learned",
        class_token: bool = False,
        eps: float = 1e-6,
        resize: str = "bicubic",
    ):
        super().__init__()
        self.patch_size = patch_size
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.resize = resize
        self.patch_embed = PatchEmbed(patch_size, cfg.width)
        code = sincos_2d(self.grid, cfg.width)[None]
        if pos_embed == "learned":
            # Learnable (section 3.1); started from a 2-D sin-cos code so a model trained from scratch
            # knows where patches are from the first step. Pretrained ViT weights replace it.
            self.pos_embed = nn.Parameter(0.1 * code)
        elif pos_embed == "sincos":
            # Fixed, as MAE's: rows and columns keep equal shares of the code (restr-tiny; config.py
            # has the measurement that chose it).
            self.pos_embed = nn.Parameter(code, requires_grad=False)
        else:
            raise ValueError(f"pos_embed must be one of {POSITION_CODES}, got {pos_embed!r}")
        if class_token:  # timm's names and initialisation; the token's position is kept apart from the grid's
            self.class_token = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, 1, cfg.width), std=0.02))
            self.class_pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, 1, cfg.width), std=0.02))
        else:
            self.class_token = self.class_pos_embed = None
        self.encoder = Transformers(cfg, eps=eps)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image: (B, 3, H, W) normalised, H and W divisible by P. Returns z_v: (B, N_v, D_v)."""
        h, w = int(image.shape[-2]) // self.patch_size, int(image.shape[-1]) // self.patch_size
        pos = self.pos_embed
        if (h, w) != self.grid:  # another input size: interpolate the position grid on the fly
            pos = resize_pos_embed(pos, self.grid, (int(h), int(w)), self.resize)
        z = self.patch_embed(image) + pos
        if self.class_token is None:
            return self.encoder(z)
        z = cat_broadcast(self.class_token + self.class_pos_embed, z, 1)
        return self.encoder(z)[:, 1:]
