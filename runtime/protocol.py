"""The `restr` Triton model's contract: inputs, outputs, request checks and the response arrays.

Shared by `restr-serve` (runtime/serve.py), the client (runtime/client.py) and the BLS model of the
repository `restr-export --triton` writes, into which this file is copied (as restr_protocol.py,
beside restr_transforms.py): so it needs only numpy, Pillow and transforms.py.
"""
from __future__ import annotations

import io
import json

import numpy as np

try:
    from restr.runtime.transforms import ImageError, load_image
except ImportError:  # inside a generated Triton repository, where restr is not installed
    from restr_transforms import ImageError, load_image

MODEL = "restr"

# name -> (numpy dtype, shape; -1 = any). Triton checks dtypes and ranks before the model runs.
INPUTS = {
    "image": (np.bytes_, (1,)),  # an encoded image file (PNG, JPEG, ...); EXIF orientation applied
    "rgb": (np.uint8, (-1, -1, 3)),  # or the decoded pixels
    "texts": (np.bytes_, (-1,)),  # UTF-8 expressions about that image
    "threshold": (np.float32, (1,)),  # optional; the manifest's by default
}
OPTIONAL = ("image", "rgb", "threshold")
OUTPUTS = {
    "masks": (np.bool_, (-1, -1, -1)),  # (K, H, W) at the image's resolution
    "probs": (np.float32, (-1, -1, -1)),  # (K, H, W); ask for it only when needed (K*H*W*4 bytes)
    "scores": (np.float32, (-1,)),
    "areas": (np.int64, (-1,)),
    "patch_scores": (np.float32, (-1,)),
    "unknown_words": (np.bytes_, (-1,)),  # one JSON list per expression
    "truncated": (np.bool_, (-1,)),
    "used_threshold": (np.float32, (1,)),  # the request's threshold, or the manifest's
}


class RequestError(ValueError):
    """A request the model cannot answer: a Triton error for that request only, one line."""


def read_request(get, max_texts: int):
    """`get(name)` -> array or None for each input -> (rgb PIL image or uint8 HxWx3 array, texts, threshold or None)."""
    encoded, rgb = get("image"), get("rgb")
    if (encoded is None) == (rgb is None):
        raise RequestError("send exactly one of the inputs 'image' (encoded file bytes) and 'rgb' (uint8 HxWx3)")
    if rgb is not None:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
            raise RequestError(f"'rgb' must be a non-empty uint8 HxWx3 array, got shape {tuple(rgb.shape)}")
        image = np.ascontiguousarray(rgb)
    else:
        blob = np.asarray(encoded, dtype=np.object_).reshape(-1)
        if blob.size != 1 or not isinstance(blob[0], (bytes, bytearray)) or not blob[0]:
            raise RequestError("'image' must hold one encoded image file (bytes)")
        try:
            image = load_image(_RequestBytes(blob[0]))
        except ImageError as e:
            raise RequestError(str(e)) from None
    raw = get("texts")
    raw = np.asarray([] if raw is None else raw, dtype=np.object_).reshape(-1)
    if raw.size == 0:
        raise RequestError("'texts' holds no expression")
    if raw.size > max_texts:
        raise RequestError(f"{raw.size} expressions in one request; this server takes at most {max_texts}")
    try:
        texts = [t.decode("utf-8") if isinstance(t, (bytes, bytearray)) else str(t) for t in raw]
    except UnicodeDecodeError:
        raise RequestError("'texts' must be UTF-8") from None
    threshold = get("threshold")
    if threshold is not None:
        threshold = float(np.asarray(threshold).reshape(-1)[0])
        if not 0.0 < threshold < 1.0:
            raise RequestError(f"threshold must be in (0, 1), got {threshold}")
    return image, texts, threshold


def response(masks, probs, scores, areas, patch_scores, unknown_words, truncated, threshold: float) -> dict:
    """The output arrays, in OUTPUTS' dtypes; masks and probs (K, H, W), the rest per expression."""
    return {
        "masks": np.asarray(masks, dtype=np.bool_),
        "probs": np.asarray(probs, dtype=np.float32),
        "scores": np.asarray(scores, dtype=np.float32),
        "areas": np.asarray(areas, dtype=np.int64),
        "patch_scores": np.asarray(patch_scores, dtype=np.float32),
        "unknown_words": np.array([json.dumps(list(u)).encode() for u in unknown_words], dtype=np.object_),
        "truncated": np.asarray(truncated, dtype=np.bool_),
        "used_threshold": np.array([threshold], dtype=np.float32),
    }


class _RequestBytes(io.BytesIO):
    """Image bytes that read as 'request image' in error messages (load_image names its source)."""

    def __str__(self) -> str:
        return "request image"

    __repr__ = __str__  # Pillow's "cannot identify image file <...>" uses repr
