"""Pre- and post-processing shared by training, evaluation and the runtime (torch-free).

Images are letterboxed (section 4.1): resized to fit a square keeping the aspect ratio, then padded
at the right and bottom with the normalisation mean, so padding is 0 after normalisation. The
transform is invertible: `Letterbox.invert` maps a prediction on the square back onto the original
image exactly (as CRIS does), so masks are scored at the original resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

# Pillow's own guard warns at ~89 MP and raises at twice that; an image beyond this is refused.
MAX_IMAGE_PIXELS = 64_000_000


class ImageError(ValueError):
    """An input that is not a usable image: one line, meant for users."""


def load_image(path) -> Image.Image:
    """Open an image file as RGB with its EXIF orientation applied. Raises ImageError.

    The decoded pixels are turned in place and an RGB file's image is returned as decoded: a 12 MP
    photo is not copied (leaving the `with` closes the file, not the loaded image)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w == 0 or h == 0:
                raise ImageError(f"{path}: image has zero size")
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageError(f"{path}: image of {w}x{h} pixels is larger than the {MAX_IMAGE_PIXELS:,} allowed")
            ImageOps.exif_transpose(im, in_place=True)  # loads the pixels
            return to_rgb(im)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except Exception as e:  # Pillow's plugins raise more than OSError on damaged files (OverflowError, TypeError, ...)
        raise ImageError(f"{path}: not a readable image ({e or type(e).__name__})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparent pixels are composed over black. An RGB image is returned
    as it is (not a copy)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # high bit depth greyscale: rescale to 8 bits
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())  # NaN if a pixel is NaN: then every pixel is 0
        with np.errstate(invalid="ignore"):
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.where(np.isfinite(a), a, 0).astype(np.uint8)).convert("RGB")  # infinite ones too
    return im.convert("RGB")


@dataclass(frozen=True)
class Letterbox:
    """Fit a (H, W) image into a size x size square; `invert` undoes it."""

    size: int
    src_hw: tuple[int, int]  # original (H, W)
    new_hw: tuple[int, int]  # resized (H, W) before padding

    @classmethod
    def fit(cls, src_hw: tuple[int, int], size: int) -> "Letterbox":
        h, w = src_hw
        scale = size / max(h, w)
        new_hw = (max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale))))
        return cls(size=size, src_hw=(int(h), int(w)), new_hw=new_hw)

    def image(self, im: Image.Image, fill: tuple[int, int, int]) -> np.ndarray:
        """RGB PIL image -> (size, size, 3) uint8, resized bilinearly and padded with `fill`."""
        nh, nw = self.new_hw
        out = np.empty((self.size, self.size, 3), dtype=np.uint8)
        out[...] = fill
        out[:nh, :nw] = np.asarray(im.resize((nw, nh), Image.BILINEAR))
        return out

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) binary mask -> (size, size) uint8 in {0, 1}, nearest-neighbour, padding 0."""
        nh, nw = self.new_hw
        out = np.zeros((self.size, self.size), dtype=np.uint8)
        small = Image.fromarray((mask > 0).astype(np.uint8) * 255).resize((nw, nh), Image.NEAREST)
        out[:nh, :nw] = np.asarray(small) > 127
        return out

    def invert(self, prob: np.ndarray) -> np.ndarray:
        """(size, size) float map -> (H, W) float32 on the original image (crop padding, resize)."""
        nh, nw = self.new_hw
        crop = np.ascontiguousarray(prob[:nh, :nw], dtype=np.float32)
        h, w = self.src_hw
        if (nh, nw) == (h, w):
            return crop
        return np.asarray(Image.fromarray(crop, mode="F").resize((w, h), Image.BILINEAR), dtype=np.float32)


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32, (x / 255 - mean) / std."""
    x = image.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.moveaxis(x, -1, -3).copy()


def mean_fill(mean) -> tuple[int, int, int]:
    """The padding colour that normalises to 0."""
    return tuple(int(round(m * 255)) for m in mean)
