"""The predictor: set an image once, then ask with one or many expressions (as SAM's predictor).

    from restr.runtime import Predictor, save_mask

    predictor = Predictor.from_artifacts("runs/demo/export")
    predictor.set_image("photo.jpg")                    # path, PIL image or (H, W, 3) uint8 RGB array
    for p in predictor.predict(["the dog on the left", "the red car"]):
        print(p.text, p.area, p.score)                  # p.mask: (H, W) bool at the photo's size
        save_mask(f"{p.text}.png", p.mask)

Encode once, ask many: the vision graph runs once per image (its features are kept in a bounded
LRU cache keyed by a hash of the image's pixels and the letterbox), then the language and
fusion-decoder graphs run on the expressions in batches of the manifest's `max_batch`, the image's
features repeated along the batch.

Threads: one Predictor may be shared. `predict_image(image, texts)` is stateless; `set_image` /
`predict` keep the current image per thread (what thread A sets, thread B does not see). The
runners, the cache and the counters are thread-safe.

Pre-processing is `restr.runtime.transforms` (EXIF orientation, any mode to RGB, letterbox,
normalise), the code training uses; post-processing maps the probabilities back onto the
original image (`Letterbox.invert`) and thresholds them.
"""
from __future__ import annotations

import hashlib
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from restr.runtime.artifacts import END_TO_END, STAGES, Artifacts
from restr.runtime.runners import Runner, graph_key, make_runner
from restr.runtime.tokenizer import FUNCTION_WORDS, Encoded, Vocabulary, split_words
from restr.runtime.transforms import MAX_IMAGE_PIXELS, ImageError, Letterbox, load_image, mean_fill, normalize, to_rgb

MODES = ("auto", "split", "end_to_end")


class TextError(ValueError):
    """An expression that cannot be used (empty, or no expressions at all): one line, for users."""


class TextTruncatedWarning(UserWarning):
    """An expression longer than the model's N_l words; only the first N_l are used."""


@dataclass
class Prediction:
    """One expression's answer about one image.

    `score` is the mean pixel probability inside the mask (0.0 for an empty mask): how sure the
    model is of the pixels it selected. `patch_score` is the highest patch score y_p (eq. 9).
    `timings` are milliseconds: preprocess and vision belong to the image (0 on a cache hit);
    language and fusion_decoder (or end_to_end) are this expression's share of its batch.
    """

    text: str
    mask: np.ndarray  # (H, W) bool, original image resolution
    probs: np.ndarray  # (H, W) float32 pixel probabilities, original image resolution
    score: float
    area: int  # pixels in the mask
    patch_score: float
    unknown_words: list[str] = field(default_factory=list)
    truncated: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    # True when no content word of the expression (FUNCTION_WORDS aside) is in the model's vocabulary:
    # the mask is then a guess, however high its score.
    no_known_words: bool = False

    @property
    def area_fraction(self) -> float:
        """Fraction of the image covered by the mask."""
        return self.area / max(1, self.mask.size)


@dataclass(frozen=True, eq=False)  # holds arrays: compare by identity (or by `key`)
class ImageEmbedding:
    """An image prepared for the fusion decoder: what `set_image` computes and the cache holds.

    `features` is (1, N_v, D) visual features (split graphs), or the (1, 3, S, S) normalised
    letterboxed image when the predictor runs the end-to-end graph.
    """

    key: str  # hash of the RGB pixels and the letterbox
    letterbox: Letterbox
    features: np.ndarray
    timings: dict  # ms: preprocess, vision

    @property
    def size(self) -> tuple[int, int]:
        """The original image's (H, W)."""
        return self.letterbox.src_hw


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    maxsize: int
    currsize: int


class FeatureCache:
    """A thread-safe LRU map of image key -> ImageEmbedding, at most `maxsize` entries (0: off).

    Two threads that miss on the same new image at the same moment may both encode it; the result
    is the same, and the lock is never held while a graph runs.
    """

    def __init__(self, maxsize: int = 8):
        self.maxsize = max(0, int(maxsize))
        self._items: OrderedDict[str, ImageEmbedding] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: str) -> ImageEmbedding | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
            else:
                self.hits += 1
                self._items.move_to_end(key)
            return item

    def put(self, key: str, item: ImageEmbedding) -> None:
        if not self.maxsize:
            return
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self.hits, self.misses, self.maxsize, len(self._items))


def as_rgb(image) -> Image.Image:
    """A path, PIL image or numpy array -> RGB PIL image, EXIF orientation applied. Raises ImageError.

    Arrays are (H, W) greyscale (uint8 or uint16), (H, W, 3) RGB or (H, W, 4) RGBA uint8, as SAM's
    predictor takes them. Images of zero size or above MAX_IMAGE_PIXELS are refused.
    """
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, np.ndarray):
        ok = (image.ndim == 2 and image.dtype in (np.uint8, np.uint16)) or (
            image.ndim == 3 and image.shape[-1] in (3, 4) and image.dtype == np.uint8
        )
        if not ok:
            raise ImageError(f"image array of shape {image.shape} and dtype {image.dtype}: expected (H, W) or (H, W, 3|4) uint8")
        _check_size(image.shape[1], image.shape[0], "image array")
        return to_rgb(Image.fromarray(np.ascontiguousarray(image)))
    if isinstance(image, Image.Image):
        _check_size(*image.size, "image")
        try:
            return to_rgb(ImageOps.exif_transpose(image))
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"image is not readable ({e})") from None
    raise ImageError(f"expected an image path, PIL image or numpy array, got {type(image).__name__}")


def _check_size(w: int, h: int, what: str) -> None:
    if w == 0 or h == 0:
        raise ImageError(f"{what} has zero size")
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageError(f"{what} of {w}x{h} pixels is larger than the {MAX_IMAGE_PIXELS:,} allowed")


class Predictor:
    """Referring segmentation on a restr export folder, with ONNX Runtime or TensorRT.

    Build with `Predictor.from_artifacts(folder)`. `runners` maps "vision", "language" and
    "fusion_decoder" (split mode) or "end_to_end" to a `Runner`.
    """

    def __init__(
        self,
        artifacts: Artifacts,
        runners: dict[str, Runner],
        vocab: Vocabulary,
        threshold: float | None = None,
        cache_size: int = 8,
    ):
        self.artifacts = artifacts
        self.runners = runners
        self.vocab = vocab
        self.mode = "split" if all(s in runners for s in STAGES) else END_TO_END
        if self.mode == END_TO_END and END_TO_END not in runners:
            raise ValueError(f"runners must hold {STAGES} or {END_TO_END!r}, got {sorted(runners)}")
        self.threshold = artifacts.threshold if threshold is None else float(threshold)
        self.max_batch = min([artifacts.max_batch] + [r.max_batch for r in runners.values() if getattr(r, "max_batch", None)])
        fill = (artifacts.manifest.get("letterbox") or {}).get("fill", "mean")
        self.fill = mean_fill(artifacts.mean) if fill == "mean" else tuple(int(c) for c in fill)
        self.cache = FeatureCache(cache_size)
        self._local = threading.local()
        self._lock = threading.Lock()
        self.vision_runs = 0  # how often the image encoder ran (cache misses in split mode)

    @classmethod
    def from_artifacts(
        cls,
        folder,
        backend: str = "ort",
        precision: str = "fp32",
        providers=None,
        cache_size: int = 8,
        threshold: float | None = None,
        mode: str = "auto",
        threads: int | None = None,
    ) -> "Predictor":
        """Open an export folder and load the graphs one predictor needs.

        backend: "ort" (ONNX Runtime) or "tensorrt" (native engines; build them with restr-export
        on the target GPU). precision: "fp32" or "fp16" (the mixed-precision graphs; TensorRT
        engines are fp16). providers: ONNX Runtime execution providers (None: CPU; "auto":
        TensorRT, CUDA when this onnxruntime has them; or a list like ["cuda", "cpu"]).
        mode: "split" (encode once, ask many), "end_to_end" (the single graph) or "auto" (split
        when the export has the split graphs). threads: ONNX Runtime intra-op threads.
        Raises ArtifactError for a folder, manifest, graph or checksum that cannot be used.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        art = Artifacts.open(folder)
        table = art.engines if backend == "tensorrt" else art.graphs
        split = [graph_key(s, precision) for s in STAGES]
        if mode == "auto":  # split when it can; the end-to-end graph otherwise; errors name the split graphs
            mode = END_TO_END if graph_key(END_TO_END, precision) in table and not all(k in table for k in split) else "split"
        stages = STAGES if mode == "split" else (END_TO_END,)
        vocab = art.vocabulary()
        runners = {s: make_runner(art, graph_key(s, precision), backend, providers=providers, threads=threads) for s in stages}
        return cls(art, runners, vocab, threshold=threshold, cache_size=cache_size)

    # -- images ---------------------------------------------------------------------------------

    def embed(self, image) -> ImageEmbedding:
        """Pre-process an image and run the vision graph, or take both from the cache.

        image: path, PIL image or numpy array (see `as_rgb`).
        """
        t0 = time.perf_counter()
        rgb = as_rgb(image)
        lb = Letterbox.fit((rgb.height, rgb.width), self.artifacts.image_size)
        h = hashlib.blake2b(rgb.tobytes(), digest_size=16)
        h.update(repr((rgb.size, lb, self.mode, self.fill)).encode())
        key = h.hexdigest()
        cached = self.cache.get(key)
        if cached is not None:
            return ImageEmbedding(cached.key, cached.letterbox, cached.features, {"preprocess": _ms(t0), "vision": 0.0})
        x = normalize(lb.image(rgb, self.fill), self.artifacts.mean, self.artifacts.std)[None]  # (1, 3, S, S)
        t1 = time.perf_counter()
        timings = {"preprocess": _ms(t0, t1), "vision": 0.0}
        if self.mode == "split":
            x = self.runners["vision"].run({"image": x})["visual_features"]  # (1, N_v, D)
            timings["vision"] = _ms(t1)
            with self._lock:
                self.vision_runs += 1
        emb = ImageEmbedding(key, lb, x, timings)
        self.cache.put(key, emb)
        return emb

    def set_image(self, image) -> ImageEmbedding:
        """Make `image` this thread's current image for `predict` (its features computed or cached)."""
        self._local.embedding = self.embed(image)
        return self._local.embedding

    @property
    def embedding(self) -> ImageEmbedding | None:
        """This thread's current image, or None before `set_image`."""
        return getattr(self._local, "embedding", None)

    def reset_image(self) -> None:
        """Forget this thread's current image (the cache keeps its features)."""
        self._local.embedding = None

    def cache_info(self) -> CacheInfo:
        return self.cache.info()

    # -- expressions ----------------------------------------------------------------------------

    def encode_text(self, texts: str | list[str]) -> Encoded:
        """Tokenise expressions -> words (K, N_l) int64, pad_mask (K, N_l) bool, unknown words.

        Raises TextError for no expressions or an expression without words; warns
        (TextTruncatedWarning) for one longer than N_l words, which is truncated.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise TextError("no expression given")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not split_words(t):
                raise TextError(f"expression {i + 1} ({t!r}) is empty: it has no words")
        enc = self.vocab.encode(texts, self.artifacts.max_words)
        for t, cut in zip(texts, enc.truncated):
            if cut:
                n = len(split_words(t))
                warnings.warn(
                    f"expression {t[:60]!r}{'...' if len(t) > 60 else ''} has {n} words; only the first {self.artifacts.max_words} are used",
                    TextTruncatedWarning,
                    stacklevel=3,
                )
        return enc

    def decode(self, embedding: ImageEmbedding, words: np.ndarray, pad_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """The graphs after the image encoder, for K expressions about one image, in chunks of max_batch.

        words, pad_mask: (K, N_l). Returns pixel_probs (K, 1, S, S) on the letterboxed square,
        patch_probs (K, N_v) and the time spent per stage in ms (totals over the K expressions).
        """
        pixel, patch, times = [], [], {}
        for i in range(0, len(words), self.max_batch):
            w, m = words[i : i + self.max_batch], pad_mask[i : i + self.max_batch]
            k = len(w)
            feats = np.repeat(embedding.features, k, axis=0)
            if self.mode == "split":
                t0 = time.perf_counter()
                l = self.runners["language"].run({"words": w, "pad_mask": m})["linguistic_features"]
                t1 = time.perf_counter()
                out = self.runners["fusion_decoder"].run({"visual_features": feats, "linguistic_features": l, "pad_mask": m})
                times["language"] = times.get("language", 0.0) + _ms(t0, t1)
                times["fusion_decoder"] = times.get("fusion_decoder", 0.0) + _ms(t1)
            else:
                t0 = time.perf_counter()
                out = self.runners[END_TO_END].run({"image": feats, "words": w, "pad_mask": m})
                times[END_TO_END] = times.get(END_TO_END, 0.0) + _ms(t0)
            pixel.append(out["pixel_probs"])
            patch.append(out["patch_probs"])
        return np.concatenate(pixel), np.concatenate(patch), times

    def predict(self, texts: str | list[str], threshold: float | None = None) -> list[Prediction]:
        """Masks for one or many expressions about this thread's current image (`set_image` first)."""
        emb = self.embedding
        if emb is None:
            raise RuntimeError("no image set: call set_image(image) before predict(texts), or use predict_image")
        return self.predict_embedding(emb, texts, threshold)

    def predict_image(self, image, texts: str | list[str], threshold: float | None = None) -> list[Prediction]:
        """Stateless `set_image` + `predict`: safe to call from many threads at once."""
        return self.predict_embedding(self.embed(image), texts, threshold)

    def predict_embedding(self, embedding: ImageEmbedding, texts: str | list[str], threshold: float | None = None) -> list[Prediction]:
        """Masks for expressions about an image already embedded (`embed`)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        enc = self.encode_text(texts)
        thr = self.threshold if threshold is None else float(threshold)
        pixel, patch, times = self.decode(embedding, enc.words, enc.pad_mask)
        k = len(texts)
        shared = {**embedding.timings, **{name: ms / k for name, ms in times.items()}}
        preds = []
        for i, text in enumerate(texts):
            t0 = time.perf_counter()
            probs = embedding.letterbox.invert(pixel[i, 0])  # (H, W) on the original image
            mask = probs > thr
            area = int(mask.sum())
            score = float(probs[mask].mean()) if area else 0.0
            preds.append(
                Prediction(
                    text=text,
                    mask=mask,
                    probs=probs,
                    score=score,
                    area=area,
                    patch_score=float(patch[i].max()),
                    unknown_words=list(dict.fromkeys(enc.unknown[i])),  # each word once, in order
                    truncated=bool(enc.truncated[i]),
                    timings={**shared, "postprocess": _ms(t0)},
                    no_known_words=all(w in FUNCTION_WORDS or w in enc.unknown[i] for w in split_words(text)[: self.artifacts.max_words]),
                )
            )
        return preds

    def __repr__(self) -> str:
        runners = ", ".join(repr(r) for r in self.runners.values())
        return f"Predictor({self.artifacts.root}, model={self.artifacts.model_name}, mode={self.mode}, runners=[{runners}])"


def _ms(t0: float, t1: float | None = None) -> float:
    return ((time.perf_counter() if t1 is None else t1) - t0) * 1000.0


__all__ = [
    "CacheInfo",
    "FeatureCache",
    "ImageEmbedding",
    "Prediction",
    "Predictor",
    "TextError",
    "TextTruncatedWarning",
    "as_rgb",
]
