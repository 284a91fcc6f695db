"""Pre- and post-processing shared by training, evaluation and the runtime (torch-free).

Images are letterboxed (section 4.1): resized to fit a square keeping the aspect ratio, then padded
with the normalisation mean, so padding is 0 after normalisation. The transform is invertible:
`Letterbox.invert` maps a prediction on the square back onto the original image (as CRIS does), so
masks are scored at the original resolution.

Two transforms (`ImageTransform`; a model's config chooses, `ReSTRConfig.image_transform`):

- restr's (the default): the photo at the top-left, padded right and bottom; Pillow's bilinear
  resize (antialiased when shrinking) of the 8-bit photo, then normalised; back by cropping the
  photo's h x w and resizing the probabilities to H x W; mask = probabilities > threshold.
- the authors' evaluation transform (SouthFlame/restr at 371f102, `eval/evaluate.py` with
  `utils/torchutils.py` `resize_and_pad` / `resize_and_crop`): the photo normalised in float, resized
  bilinearly without antialiasing (torchvision 0.14's `TF.resize` on a tensor, i.e. `F.interpolate`,
  `align_corners=False`) and centred, `floor((S - h) / 2)` above and `floor((S - w) / 2)` left; back by
  resizing the whole S x S logits to max(H, W) square and cutting H x W from its centre; mask = those
  logits >= 1e-9 (at threshold 0.5). Here the logits are read from the probabilities
  (`probability_logits`) and the probabilities returned are their sigmoid.
"""

from __future__ import annotations

import math
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


ALIGNS = ("top-left", "centre")  # where the resized photo sits in the square
MASK_SOURCES = ("probabilities", "logits")  # what is resized back onto the photo and thresholded
# The authors' evaluation threshold on logits (eval/evaluate.py: THRESHOLD = 1e-9, `pred >= threshold`),
# added to logit(threshold): at threshold 0.5 their rule exactly.
LOGIT_MARGIN = 1e-9
# The logits that float32 probabilities carry: sigmoid rounds to 1 above 25 ln 2 in float32 (and ONNX
# Runtime's Sigmoid reaches 0 near -18), so the logits read from probabilities are clipped to +-this.
LOGIT_LIMIT = 25.0 * math.log(2.0)


@dataclass(frozen=True)
class ImageTransform:
    """How a photo becomes the model's square input and a prediction goes back onto the photo.

    align: "top-left" (restr) or "centre" (the authors': offsets floor((S - h) / 2), floor((S - w) / 2);
      back by resizing the whole square to max(H, W) and cutting the photo from its centre).
    antialias: True (restr): Pillow's bilinear resize of the 8-bit photo, antialiased when shrinking,
      rounded to 8 bits, then normalised; False (the authors'): the normalised float photo resized
      bilinearly without antialiasing (`resize_bilinear`, torch's F.interpolate), not rounded. Both
      directions, the prediction's way back too.
    mask_from: "probabilities" (restr): mask = resized probabilities > threshold; "logits" (the
      authors'): mask = resized logits >= logit(threshold) + 1e-9, probabilities = their sigmoid.
    """

    align: str = "top-left"
    antialias: bool = True
    mask_from: str = "probabilities"

    @classmethod
    def of_manifest(cls, manifest: dict) -> ImageTransform:
        """What an export's processing graphs compute: its manifest's `letterbox` and `mask_from`
        (restr's where absent, as in exports older than these fields)."""
        lb = manifest.get("letterbox") or {}
        return cls(lb.get("align", "top-left"), lb.get("antialias", True), manifest.get("mask_from", "probabilities"))

    def __post_init__(self):
        if self.align not in ALIGNS:
            raise ValueError(f"align must be one of {ALIGNS}, got {self.align!r}")
        if self.mask_from not in MASK_SOURCES:
            raise ValueError(f"mask_from must be one of {MASK_SOURCES}, got {self.mask_from!r}")


RESTR_TRANSFORM = ImageTransform()
AUTHORS_TRANSFORM = ImageTransform(align="centre", antialias=False, mask_from="logits")


@dataclass(frozen=True)
class Letterbox:
    """Fit a (H, W) image into a size x size square; `invert` undoes it."""

    size: int
    src_hw: tuple[int, int]  # original (H, W)
    new_hw: tuple[int, int]  # resized (H, W) before padding
    transform: ImageTransform = RESTR_TRANSFORM

    @classmethod
    def fit(cls, src_hw: tuple[int, int], size: int, transform: ImageTransform = RESTR_TRANSFORM) -> Letterbox:
        # the authors' min(S / H, S / W) is this S / max(H, W) to the bit (division is monotonic)
        h, w = src_hw
        scale = size / max(h, w)
        new_hw = (max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale))))
        return cls(size=size, src_hw=(int(h), int(w)), new_hw=new_hw, transform=transform)

    @property
    def offset(self) -> tuple[int, int]:
        """(top, left) of the resized photo in the square."""
        if self.transform.align == "top-left":
            return 0, 0
        return (self.size - self.new_hw[0]) // 2, (self.size - self.new_hw[1]) // 2

    def _place(self, small: np.ndarray, fill) -> np.ndarray:
        """(h, w, ...) -> (size, size, ...) with `fill` around it, at `offset`."""
        out = np.empty((self.size, self.size, *small.shape[2:]), dtype=small.dtype)
        out[...] = fill
        (top, left), (nh, nw) = self.offset, self.new_hw
        out[top : top + nh, left : left + nw] = small
        return out

    def image(self, im: Image.Image, fill: tuple[int, int, int]) -> np.ndarray:
        """RGB PIL image -> (size, size, 3) uint8, resized with Pillow's bilinear filter and padded with
        `fill` (the 8-bit transform: `input` gives the model's input for either)."""
        nh, nw = self.new_hw
        return self._place(np.asarray(im.resize((nw, nh), Image.BILINEAR)), fill)

    def input(self, im: Image.Image, mean, std) -> np.ndarray:
        """RGB PIL image -> the model's input (3, size, size) float32, normalised, padding 0."""
        if self.transform.antialias:
            return normalize(self.image(im, mean_fill(mean)), mean, std)
        # the authors' dataset: (x - 255 mean) / (255 std), the statistics rounded to 2 decimals, in float32
        m, s = (np.round(255 * np.asarray(v, np.float64), 2).astype(np.float32) for v in (mean, std))
        x = np.moveaxis((np.asarray(im, np.float32) - m) / s, -1, 0)
        out = np.zeros((3, self.size, self.size), np.float32)
        (top, left), (nh, nw) = self.offset, self.new_hw
        out[:, top : top + nh, left : left + nw] = resize_bilinear(x, self.new_hw)
        return out

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) binary mask -> (size, size) uint8 in {0, 1}, nearest-neighbour, padding 0."""
        nh, nw = self.new_hw
        small = Image.fromarray((mask > 0).astype(np.uint8) * 255).resize((nw, nh), Image.NEAREST)
        return self._place((np.asarray(small) > 127).astype(np.uint8), 0)

    def _back(self, x: np.ndarray) -> np.ndarray:
        """(size, size) float32 map -> (H, W) float32 on the photo, by this transform's geometry and resize."""
        h, w = self.src_hw
        if self.transform.align == "top-left":
            nh, nw = self.new_hw
            x, out_hw = np.ascontiguousarray(x[:nh, :nw], dtype=np.float32), (h, w)
        else:  # the whole square to max(H, W), then the photo from its centre
            side = max(h, w)
            x, out_hw = np.asarray(x, dtype=np.float32), (side, side)
        if x.shape != out_hw:
            if self.transform.antialias:
                x = np.asarray(Image.fromarray(x, mode="F").resize(out_hw[::-1], Image.BILINEAR), dtype=np.float32)
            else:
                x = resize_bilinear(x, out_hw)
        top, left = (out_hw[0] - h) // 2, (out_hw[1] - w) // 2
        return x[top : top + h, left : left + w]

    def invert(self, prob: np.ndarray) -> np.ndarray:
        """(size, size) probabilities -> (H, W) float32 on the original image (the postprocess graph's `probs`)."""
        if self.transform.mask_from == "probabilities":
            return self._back(prob)
        return sigmoid(self._back(probability_logits(prob)))

    def invert_mask(self, prob: np.ndarray, threshold: float) -> np.ndarray:
        """(size, size) probabilities -> the (H, W) bool mask (the postprocess graph's `mask`)."""
        if self.transform.mask_from == "probabilities":
            return self._back(prob) > threshold
        return self._back(probability_logits(prob)) >= logit_threshold(threshold)


def resize_bilinear(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(..., H, W) -> (..., h, w) float32, bilinear without antialiasing as torch's F.interpolate
    (`align_corners=False`): source x = (i + 0.5) in / out - 0.5, at least 0, the last pixel repeated
    beyond the edge; the width first, then the height, in float32."""
    x = np.asarray(x, np.float32)
    (r0, r1, ry), (c0, c1, rx) = (_taps(n, m) for n, m in zip(x.shape[-2:], out_hw))
    x = x[..., c0] * (1 - rx) + x[..., c1] * rx
    return x[..., r0, :] * (1 - ry)[:, None] + x[..., r1, :] * ry[:, None]


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two source indices and the second's weight of each output pixel (torch's upsample_bilinear2d)."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), np.clip(src - i0, 0, 1).astype(np.float32)


def probability_logits(prob: np.ndarray) -> np.ndarray:
    """Probabilities -> logits in float32, log(p) - log(1 - p), clipped to +-LOGIT_LIMIT (p = 0 and 1 included)."""
    p = np.asarray(prob, np.float32)
    with np.errstate(divide="ignore"):
        return np.clip(np.log(p) - np.log(np.float32(1) - p), -LOGIT_LIMIT, LOGIT_LIMIT).astype(np.float32)


def logit_threshold(threshold: float) -> np.float32:
    """The logit a mask from logits must reach: logit(threshold) + 1e-9 in float32 (1e-9 at 0.5, the authors')."""
    t = np.float32(threshold)
    with np.errstate(divide="ignore"):
        return np.float32(np.log(t) - np.log(np.float32(1) - t)) + np.float32(LOGIT_MARGIN)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-np.asarray(x, np.float32)))).astype(np.float32)


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32, (x / 255 - mean) / std."""
    x = image.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.moveaxis(x, -1, -3).copy()


def mean_fill(mean) -> tuple[int, int, int]:
    """The padding colour that normalises to 0."""
    return tuple(int(round(m * 255)) for m in mean)


def check_threshold(threshold) -> float:
    """A mask threshold: a number in [0, 1]; ValueError otherwise (NaN included)."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number between 0 and 1, got {threshold!r}") from None
    if not (0.0 <= t <= 1.0):  # also false for NaN
        raise ValueError(f"threshold must be between 0 and 1, got {threshold!r}")
    return t
