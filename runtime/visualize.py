"""Mask and overlay PNGs, written atomically (a temporary file beside the target, then a rename)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from restr.runtime.atomic import atomic_write

DEFAULT_COLOR = (255, 64, 32)


def save_atomic(image: Image.Image, path, format: str = "PNG") -> Path:
    """Save a PIL image to `path` so that a reader never sees half a file."""
    with atomic_write(path) as f:
        image.save(f, format=format)
    return Path(path)


def mask_image(mask: np.ndarray) -> Image.Image:
    """(H, W) bool/0-1 mask -> 8-bit greyscale image, 255 inside the mask."""
    return Image.fromarray(np.asarray(mask).astype(bool).astype(np.uint8) * 255)


def overlay(image, mask: np.ndarray, color=DEFAULT_COLOR, alpha: float = 0.5) -> Image.Image:
    """The RGB image with the mask tinted in `color` (opacity `alpha`) and its outline drawn solid.

    image: PIL image or (H, W, 3) uint8 array of the same size as mask (H, W).
    """
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    mask = np.asarray(mask).astype(bool)
    if rgb.shape[:2] != mask.shape:
        raise ValueError(f"overlay: image is {rgb.shape[1]}x{rgb.shape[0]}, mask is {mask.shape[1]}x{mask.shape[0]}")
    out = rgb.astype(np.float32)
    tint = np.asarray(color, np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * tint
    out[_outline(mask)] = tint
    return Image.fromarray(out.round().astype(np.uint8))


def save_mask(path, mask: np.ndarray) -> Path:
    """Write an (H, W) mask as a black-and-white PNG (0 / 255)."""
    return save_atomic(mask_image(mask), path)


def save_overlay(path, image, mask: np.ndarray, color=DEFAULT_COLOR, alpha: float = 0.5) -> Path:
    """Write `overlay(image, mask, color, alpha)` as a PNG."""
    return save_atomic(overlay(image, mask, color, alpha), path)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner
