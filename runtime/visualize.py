"""Mask and overlay PNGs, written atomically (a temporary file beside the target, then a rename).

An overlay tints the mask in the palette colour farthest from the region's own mean colour (a fixed
red vanished on red objects) and draws its outline solid; `contact_sheet` puts several overlays side
by side, each captioned with its expression.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from restr.runtime.atomic import atomic_write

# Saturated colours far apart from each other: whatever the region's colour, one is far from it.
PALETTE = ((255, 64, 32), (0, 220, 255), (60, 255, 60), (255, 0, 220), (255, 230, 0), (40, 80, 255))
DEFAULT_COLOR = None  # None: the palette colour that contrasts most with the region


def save_atomic(image: Image.Image, path, format: str = "PNG") -> Path:
    """Save a PIL image to `path` so that a reader never sees half a file."""
    with atomic_write(path) as f:
        image.save(f, format=format)
    return Path(path)


def mask_image(mask: np.ndarray) -> Image.Image:
    """(H, W) bool/0-1 mask -> 8-bit greyscale image, 255 inside the mask."""
    return Image.fromarray(np.asarray(mask).astype(bool).astype(np.uint8) * 255)


def contrasting_color(rgb: np.ndarray, mask: np.ndarray) -> tuple[int, int, int]:
    """The PALETTE colour farthest (RGB distance) from the mean colour of `rgb` (H, W, 3) inside `mask` (H, W)."""
    if not mask.any():
        return PALETTE[0]
    mean = rgb[mask].reshape(-1, 3).astype(np.float32).mean(0)
    return max(PALETTE, key=lambda c: float(((np.asarray(c, np.float32) - mean) ** 2).sum()))


def overlay(image, mask: np.ndarray, color=DEFAULT_COLOR, alpha: float = 0.5) -> Image.Image:
    """The RGB image with the mask tinted (opacity `alpha`) and its outline drawn solid.

    image: a path (EXIF orientation applied, as the predictor does), a PIL image, or an (H, W, 3)
    uint8 array, of the same size as mask (H, W). color: an RGB triple, or None for the palette
    colour that contrasts most with the masked region.
    """
    if isinstance(image, (str, Path)):
        from restr.runtime.transforms import load_image

        image = load_image(image)
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    mask = np.asarray(mask).astype(bool)
    if rgb.shape[:2] != mask.shape:
        raise ValueError(f"overlay: image is {rgb.shape[1]}x{rgb.shape[0]}, mask is {mask.shape[1]}x{mask.shape[0]}")
    tint = np.asarray(contrasting_color(rgb, mask) if color is None else color, np.float32)
    out = rgb.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * tint
    out[_outline(mask)] = tint
    return Image.fromarray(out.round().astype(np.uint8))


def save_mask(path, mask: np.ndarray) -> Path:
    """Write an (H, W) mask as a black-and-white PNG (0 / 255)."""
    return save_atomic(mask_image(mask), path)


def save_overlay(path, image, mask: np.ndarray, color=DEFAULT_COLOR, alpha: float = 0.5) -> Path:
    """Write `overlay(image, mask, color, alpha)` as a PNG; `image` may be a path."""
    return save_atomic(overlay(image, mask, color, alpha), path)


def contact_sheet(image, masks: list[np.ndarray], captions: list[str], tile: int = 320) -> Image.Image:
    """One image: the overlay of each mask on `image`, side by side (wrapping after 4), each captioned.

    Tiles are scaled so their longer side is `tile` pixels; captions are cut to fit a tile.
    """
    if isinstance(image, (str, Path)):
        from restr.runtime.transforms import load_image

        image = load_image(image)
    image = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    w, h = image.size
    scale = tile / max(w, h)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    font = ImageFont.load_default()
    line = 14
    cols = min(4, max(1, len(masks)))
    rows = -(-len(masks) // cols)
    sheet = Image.new("RGB", (cols * (tw + 8) + 8, rows * (th + 2 * line + 12) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (mask, caption) in enumerate(zip(masks, captions)):
        x, y = 8 + (k % cols) * (tw + 8), 8 + (k // cols) * (th + 2 * line + 12)
        sheet.paste(overlay(image, mask).resize((tw, th), Image.BILINEAR), (x, y))
        for i, text in enumerate(_wrap(caption, tw, font, draw)[:2]):
            draw.text((x, y + th + 4 + i * line), text, fill=(0, 0, 0), font=font)
    return sheet


def _wrap(text: str, width: int, font, draw) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if current and draw.textlength(trial, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = trial
    return lines + [current] if current else lines


def _outline(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner
