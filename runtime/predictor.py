"""The predictor: set an image once, then ask with one or many expressions (as SAM's predictor).

    from restr.runtime import Predictor, save_mask

    predictor = Predictor.from_artifacts("runs/demo/export")
    predictor.set_image("photo.jpg")                    # path, PIL image or (H, W, 3) uint8 RGB array
    for p in predictor.predict(["the dog on the left", "the red car"]):
        print(p.text, p.area, p.score)                  # p.mask: (H, W) bool at the photo's size
        save_mask(f"{p.text}.png", p.mask)

Encode once, ask many: the vision graph runs once per image (its features are kept in a bounded
LRU cache keyed by a hash of the image's pixels and the letterbox), then the language and
fusion-decoder graphs run on the expressions in batches of the manifest's `max_batch`, one image's
features shared by the batch.

Threads: one Predictor may be shared. `predict_image(image, texts)` is stateless; `set_image` /
`predict` keep the current image per thread (what thread A sets, thread B does not see). The
runners, the cache and the counters are thread-safe.

Pre- and post-processing are the export's `preprocess` and `postprocess` graphs (letterbox and
normalise; crop, resize back to the photo, threshold, score), run by ONNX Runtime whatever runs the
model, so every host computes the same; EXIF orientation and any mode to RGB come first, on the
host (`as_rgb`). Exports without those graphs use `restr.runtime.transforms`, the same computation
with Pillow.

On a GPU (ONNX Runtime's CUDA execution provider, every graph on it) the predictor keeps the data on
the device (`_DevicePath`): one host-to-device copy of the uint8 image, the preprocessed image and
the visual features in bound device buffers, each model graph replayed as a CUDA graph per batch
bucket, and one device-to-host copy of the masks (and of the probabilities when asked for).
"""
from __future__ import annotations

import hashlib
import itertools
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from restr.runtime.artifacts import END_TO_END, STAGES, Artifacts
from restr.runtime.formats import POSTPROCESS, PREPROCESS
from restr.runtime.runners import OrtRunner, Runner, graph_key, host, make_runner, pad_batch
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
    probs: np.ndarray | None  # (H, W) float32 pixel probabilities, original image resolution (None: not asked for)
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
    letterboxed image when the predictor runs the end-to-end graph. On the GPU path they live in
    the predictor's device buffer and `features` is None until another image takes that buffer
    while this embedding is still referenced: then they are copied to the host.
    """

    key: str  # hash of the RGB pixels and the letterbox
    letterbox: Letterbox
    features: np.ndarray | None
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


def rgb_array(image) -> np.ndarray:
    """`as_rgb` as a contiguous (H, W, 3) uint8 array; an RGB uint8 array is taken as it is."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3:
        _check_size(image.shape[1], image.shape[0], "image array")
        return np.ascontiguousarray(image)
    return np.asarray(as_rgb(image))


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
        processing: dict[str, Runner] | None = None,
        max_expressions: int = 256,
    ):
        self.artifacts = artifacts
        self.runners = runners
        self.processing = processing or {}  # "preprocess" / "postprocess" runners (ONNX Runtime)
        self.vocab = vocab
        self.max_expressions = int(max_expressions)
        self.mode = "split" if all(s in runners for s in STAGES) else END_TO_END
        if self.mode == END_TO_END and END_TO_END not in runners:
            raise ValueError(f"runners must hold {STAGES} or {END_TO_END!r}, got {sorted(runners)}")
        self.threshold = artifacts.threshold if threshold is None else check_threshold(threshold)
        self.max_batch = min([artifacts.max_batch] + [r.max_batch for r in runners.values() if getattr(r, "max_batch", None)])
        fill = (artifacts.manifest.get("letterbox") or {}).get("fill", "mean")
        self.fill = mean_fill(artifacts.mean) if fill == "mean" else tuple(int(c) for c in fill)
        self.cache = FeatureCache(cache_size)
        self._local = threading.local()
        self._lock = threading.Lock()
        self.vision_runs = 0  # how often the image encoder ran (cache misses in split mode)
        self._device = _DevicePath.maybe(self)

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
        cuda_graph: bool = True,
    ) -> "Predictor":
        """Open an export folder and load the graphs one predictor needs.

        backend: "ort" (ONNX Runtime) or "tensorrt" (native engines; build them with restr-export
        on the target GPU). precision: "fp32" or "fp16" (the mixed-precision graphs; TensorRT
        engines are fp16). providers: ONNX Runtime execution providers (None: CPU; "auto":
        TensorRT, CUDA when this onnxruntime has them; or a list like ["cuda", "cpu"]).
        mode: "split" (encode once, ask many), "end_to_end" (the single graph) or "auto" (split
        when the export has the split graphs). threads: ONNX Runtime intra-op threads.
        cuda_graph: on CUDA, capture each model graph's batch buckets as CUDA graphs.
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
        runners = {s: make_runner(art, graph_key(s, precision), backend, providers=providers, threads=threads, cuda_graph=cuda_graph)
                   for s in stages}
        # Pre- and post-processing run in ONNX Runtime on every backend, on the model's device.
        pp_providers = providers if backend == "ort" else (providers or "auto")
        processing = {k: make_runner(art, k, "ort", providers=pp_providers, threads=threads)
                      for k in (PREPROCESS, POSTPROCESS) if k in art.graphs}
        return cls(art, runners, vocab, threshold=threshold, cache_size=cache_size, processing=processing)

    # -- images ---------------------------------------------------------------------------------

    def embed(self, image) -> ImageEmbedding:
        """Pre-process an image and run the vision graph, or take both from the cache.

        image: path, PIL image or numpy array (see `as_rgb`).
        """
        t0 = time.perf_counter()
        rgb = rgb_array(image)  # (H, W, 3) uint8, EXIF orientation applied
        key = ""
        if self.cache.maxsize:  # hashing a photo costs ~1 ms: only for a cache that can use it
            h = hashlib.blake2b(rgb, digest_size=16)
            h.update(repr((rgb.shape, self.artifacts.image_size, self.mode, self.fill)).encode())
            key = h.hexdigest()
            cached = self.cache.get(key)
            if cached is not None:
                return ImageEmbedding(cached.key, cached.letterbox, cached.features, {"preprocess": _ms(t0), "vision": 0.0})
        if self._device is not None:
            emb = self._device.embed(key, rgb, t0)
        else:
            x, lb = self.preprocess(rgb)
            t1 = time.perf_counter()
            timings = {"preprocess": _ms(t0, t1), "vision": 0.0}
            if self.mode == "split":
                x = self.runners["vision"].run({"image": x})["visual_features"]  # (1, N_v, D)
                timings["vision"] = _ms(t1)
            emb = ImageEmbedding(key, lb, x, timings)
        if self.mode == "split":
            with self._lock:
                self.vision_runs += 1
        self.cache.put(key, emb)
        return emb

    def preprocess(self, rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """(H, W, 3) uint8 RGB -> the model's (1, 3, S, S) input and its letterbox, on the host."""
        if PREPROCESS in self.processing:
            x, letterbox = (self.processing[PREPROCESS].run({"rgb": rgb})[k] for k in ("image", "letterbox"))
            return x, letterbox_of(letterbox, self.artifacts.image_size)
        lb = Letterbox.fit(rgb.shape[:2], self.artifacts.image_size)
        return normalize(lb.image(Image.fromarray(rgb), self.fill), self.artifacts.mean, self.artifacts.std)[None], lb

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
        if self._device is not None:
            return self._device.decode(embedding, words, pad_mask)
        pixel, patch, times = [], [], {}
        for i in range(0, len(words), self.max_batch):
            w, m = words[i : i + self.max_batch], pad_mask[i : i + self.max_batch]
            if self.mode == "split":
                t0 = time.perf_counter()
                l = self.runners["language"].run({"words": w, "pad_mask": m})["linguistic_features"]
                t1 = time.perf_counter()
                # one image's features, shared by the chunk's expressions (image_batch 1)
                out = self.runners["fusion_decoder"].run({"visual_features": embedding.features, "linguistic_features": l, "pad_mask": m})
                times["language"] = times.get("language", 0.0) + _ms(t0, t1)
                times["fusion_decoder"] = times.get("fusion_decoder", 0.0) + _ms(t1)
            else:
                t0 = time.perf_counter()
                feats = np.repeat(embedding.features, len(w), axis=0)
                out = self.runners[END_TO_END].run({"image": feats, "words": w, "pad_mask": m})
                times[END_TO_END] = times.get(END_TO_END, 0.0) + _ms(t0)
            pixel.append(out["pixel_probs"])
            patch.append(out["patch_probs"])
        return np.concatenate(pixel), np.concatenate(patch), times

    def predict(self, texts: str | list[str], threshold: float | None = None, probs: bool = True) -> list[Prediction]:
        """Masks for one or many expressions about this thread's current image (`set_image` first)."""
        emb = self.embedding
        if emb is None:
            raise RuntimeError("no image set: call set_image(image) before predict(texts), or use predict_image")
        return self.predict_embedding(emb, texts, threshold, probs)

    def predict_image(self, image, texts: str | list[str], threshold: float | None = None, probs: bool = True) -> list[Prediction]:
        """Stateless `set_image` + `predict`: safe to call from many threads at once."""
        return self.predict_embedding(self.embed(image), texts, threshold, probs)

    def predict_embedding(self, embedding: ImageEmbedding, texts: str | list[str], threshold: float | None = None,
                          probs: bool = True) -> list[Prediction]:
        """Masks for expressions about an image already embedded (`embed`). `probs=False` leaves
        `Prediction.probs` None (and on a GPU, the probabilities on the device)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if len(texts) > self.max_expressions:
            raise TextError(f"{len(texts)} expressions in one call; at most {self.max_expressions} (max_expressions)")
        enc = self.encode_text(texts)
        thr = self.threshold if threshold is None else check_threshold(threshold)
        if self._device is not None:
            out, times = self._device.predict(embedding, enc.words, enc.pad_mask, thr, probs)
        else:
            out, times = self._predict_host(embedding, enc.words, enc.pad_mask, thr, probs)
        k = len(texts)
        shared = {**embedding.timings, **{name: ms / k for name, ms in times.items()}}
        return [
            Prediction(
                text=text,
                mask=out["mask"][i],
                probs=out["probs"][i] if probs else None,
                score=float(out["score"][i]),
                area=int(out["area"][i]),
                patch_score=float(out["patch_probs"][i].max()),
                unknown_words=list(dict.fromkeys(enc.unknown[i])),  # each word once, in order
                truncated=bool(enc.truncated[i]),
                timings=shared,
                no_known_words=all(w in FUNCTION_WORDS or w in enc.unknown[i] for w in split_words(text)[: self.artifacts.max_words]),
            )
            for i, text in enumerate(texts)
        ]

    def _predict_host(self, embedding, words, pad_mask, thr, probs) -> tuple[dict, dict]:
        pixel, patch, times = self.decode(embedding, words, pad_mask)
        t0 = time.perf_counter()
        lb = embedding.letterbox
        if POSTPROCESS in self.processing:
            out = self.processing[POSTPROCESS].run(
                {"pixel_probs": pixel, "letterbox": np.array([*lb.src_hw, *lb.new_hw]), "threshold": np.array([thr], np.float32)})
        else:
            p = np.stack([lb.invert(x[0]) for x in pixel])
            mask = p > thr
            area = mask.sum((1, 2))
            out = {"probs": p, "mask": mask, "area": area,
                   "score": np.array([p[i][mask[i]].mean() if area[i] else 0.0 for i in range(len(p))])}
        times["postprocess"] = _ms(t0)
        return {**out, "patch_probs": patch}, times

    def __repr__(self) -> str:
        runners = ", ".join(repr(r) for r in self.runners.values())
        return f"Predictor({self.artifacts.root}, model={self.artifacts.model_name}, mode={self.mode}, runners=[{runners}])"


def check_threshold(threshold) -> float:
    """A mask threshold: a number in [0, 1]; ValueError otherwise (NaN included)."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number between 0 and 1, got {threshold!r}") from None
    if not (0.0 <= t <= 1.0):  # also false for NaN
        raise ValueError(f"threshold must be between 0 and 1, got {threshold!r}")
    return t


def letterbox_of(letterbox: np.ndarray, size: int) -> Letterbox:
    """The preprocess graph's letterbox output [H, W, h, w] as a `Letterbox`."""
    h, w, nh, nw = (int(v) for v in np.asarray(letterbox).reshape(-1))
    return Letterbox(size=size, src_hw=(h, w), new_hw=(nh, nw))


OWNER = "predictor"  # the GPU path's own device bindings, apart from the runners' `run`
# Photo sizes whose processing graphs get bindings of their own, replayed as CUDA graphs (a camera
# or a service sees few sizes); further sizes run the same graphs unbound. A binding lives as long
# as the predictor: its CUDA graph was captured on its buffers.
PHOTO_SIZES = 4
_PATHS = itertools.count()


@dataclass
class _Photo:
    """One photo size on the GPU path: its preprocess binding and, after the first run, its letterbox
    (as a `Letterbox`, and as the host value the postprocess bindings of this size read)."""

    pre: object  # DeviceBinding
    letterbox: Letterbox | None = None
    letterbox_value: object = None  # OrtValue


class _DevicePath:
    """The predictor's GPU path: every graph in ONNX Runtime's CUDA EP, data kept on the device.

    The preprocess graph reads the photo from a device buffer of its size and writes the image into
    the first model graph's bound input; the postprocess graph reads the last model graph's
    outputs and writes into buffers of the photo's size; both are replayed as CUDA graphs for up
    to PHOTO_SIZES photo sizes (further sizes run them unbound). The vision
    graph writes the features into one device buffer (`slot`) that every fusion-decoder bucket
    reads, and the language graph writes into the buffers the fusion-decoder bucket of the same
    size reads. The model graphs' buckets replay as CUDA graphs. The slot holds one image's
    features at a time: when another image takes it, the previous embedding (if still referenced)
    gets a host copy, which is copied back when it is asked about again. A lock serialises calls:
    the buffers are shared and the GPU runs one stream.
    """

    def __init__(self, predictor: "Predictor"):
        self.p = predictor
        self.lock = threading.Lock()
        self.owner = None  # weakref to the ImageEmbedding whose data is in the slot
        self.pre, self.post = predictor.processing[PREPROCESS], predictor.processing[POSTPROCESS]
        self.photos: dict[tuple[int, int], _Photo] = {}
        # The processing bindings take this path's buffers (its image input, its threshold): keyed apart
        # from another predictor's on the same runners.
        self.key = (OWNER, next(_PATHS))
        self.threshold = self.post.value(np.zeros(1, np.float32))  # read by every postprocess binding
        r = predictor.runners
        if predictor.mode == "split":
            self.vision = r["vision"].binding(1, owner=OWNER)
            self.slot = self.vision.outputs["visual_features"]  # (1, N_v, D)
        else:
            self.slot = r[END_TO_END].binding(1, owner=OWNER).inputs["image"]  # (1, 3, S, S)
        self.image_in = self.vision.inputs["image"] if predictor.mode == "split" else self.slot

    @classmethod
    def maybe(cls, predictor: "Predictor") -> "_DevicePath | None":
        runners = [*predictor.runners.values(), *predictor.processing.values()]
        ok = (all(isinstance(r, OrtRunner) for r in runners)
              and all(r.bound and r.max_batch for r in predictor.runners.values())
              and all(r.on_cuda == predictor.runners[next(iter(predictor.runners))].on_cuda for r in runners)
              and {PREPROCESS, POSTPROCESS} <= set(predictor.processing))
        return cls(predictor) if ok else None

    def _take_slot(self, emb: "ImageEmbedding | None") -> None:
        """Before the slot changes hands: a host copy for the embedding that leaves it, if alive."""
        old = self.owner() if self.owner is not None else None
        if old is not None and old is not emb and old.features is None:
            object.__setattr__(old, "features", host(self.slot))
        self.owner = weakref.ref(emb) if emb is not None else None

    def _photo(self, rgb: np.ndarray) -> Letterbox:
        """Preprocess `rgb` into the first model graph's input (call under the lock): the photo's one
        host-to-device copy. Its size's own binding (and CUDA graph) when it has or can get one."""
        h, w = rgb.shape[:2]
        if (h, w) not in self.photos and self.pre.bound and len(self.photos) < PHOTO_SIZES:
            binding = self.pre.fixed_binding((*self.key, h, w), {"rgb": (h, w, 3), "letterbox": (4,)},
                                             {"image": self.image_in}, on_host=("letterbox",))
            self.photos[(h, w)] = _Photo(binding)
        if (h, w) not in self.photos:
            out = self.pre.run_device({"rgb": rgb}, {"image": self.image_in, "letterbox": "cpu"})
            return letterbox_of(out["letterbox"].numpy(), self.p.artifacts.image_size)
        photo = self.photos[(h, w)]
        photo.pre.inputs["rgb"].update_inplace(rgb)
        photo.pre.run()
        if photo.letterbox is None:  # the same for every photo of this size: read once
            lb = host(photo.pre.outputs["letterbox"])
            photo.letterbox = letterbox_of(lb, self.p.artifacts.image_size)
            # on the host, where the postprocess graph's shape arithmetic reads it (ONNX Runtime
            # copies a bound input it wants elsewhere when binding, so it must be in place by then)
            photo.letterbox_value = self.post.value(lb, on_host=True)
        return photo.letterbox

    def _postprocess(self, emb: ImageEmbedding, last, n: int, probs: bool) -> dict:
        """Postprocess the first n results in `last`'s outputs (call under the lock): masks, scores and
        areas (and the probabilities when asked for) in one device-to-host copy each."""
        h, w = emb.letterbox.src_hw
        given = {"pixel_probs": last.outputs["pixel_probs"], "threshold": self.threshold}
        photo = self.photos.get((h, w))
        if photo is not None:
            b = last.batch
            shapes = {"probs": (b, h, w), "mask": (b, h, w), "score": (b,), "area": (b,)}
            binding = self.post.fixed_binding((*self.key, h, w, b), shapes, {**given, "letterbox": photo.letterbox_value})
            binding.run()
            out = binding.outputs
        else:
            letterbox = np.array([h, w, *emb.letterbox.new_hw], np.int64)
            out = self.post.run_device({**given, "letterbox": self.post.value(letterbox, on_host=True)},
                                       {"mask": "cpu", "score": "cpu", "area": "cpu", "probs": "cpu" if probs else "cuda"})
        return {k: host(v)[:n] for k, v in out.items() if k != "probs" or probs}

    def embed(self, key: str, rgb: np.ndarray, t0: float) -> ImageEmbedding:
        with self.lock:
            self._take_slot(None)
            lb = self._photo(rgb)
            t1 = time.perf_counter()
            timings = {"preprocess": _ms(t0, t1), "vision": 0.0}
            if self.p.mode == "split":
                self.vision.run()
                timings["vision"] = _ms(t1)
            emb = ImageEmbedding(key, lb, None, timings)
            self.owner = weakref.ref(emb)
            return emb

    def _bring(self, emb: ImageEmbedding) -> None:
        """Make the slot hold `emb`'s data (call under the lock)."""
        if self.owner is not None and self.owner() is emb:
            return
        if emb.features is None:  # cannot happen: a live embedding gets its host copy when it leaves the slot
            raise RuntimeError("this image embedding's features are no longer on the device; embed the image again")
        self._take_slot(emb)
        self.slot.update_inplace(np.ascontiguousarray(emb.features, dtype=np.float32))

    def _model(self, words: np.ndarray, pad: np.ndarray):
        """The bound model graphs for one chunk, its words and mask copied in: [(stage, binding)], the
        last binding's outputs holding the probabilities."""
        r, n = self.p.runners, len(words)
        if self.p.mode == "split":
            lang = r["language"].binding(n, owner=OWNER)
            fd = r["fusion_decoder"].binding(n, owner=OWNER, inputs={"visual_features": self.slot, "pad_mask": lang.inputs["pad_mask"],
                                                                     "linguistic_features": lang.outputs["linguistic_features"]})
            stages = [("language", lang), ("fusion_decoder", fd)]
        else:
            stages = [(END_TO_END, r[END_TO_END].binding(n, owner=OWNER))]  # n is 1 (`_run_chunks`)
        first = stages[0][1]
        first.inputs["words"].update_inplace(pad_batch(words, first.batch))
        first.inputs["pad_mask"].update_inplace(pad_batch(pad, first.batch))
        return stages

    def _run_chunks(self, emb: ImageEmbedding, words: np.ndarray, pad: np.ndarray, times: dict):
        """Run the model graphs over the expressions in chunks (call under the lock); yields each
        chunk's size and the binding holding its probabilities. The split graphs take max_batch
        expressions at a time; the end-to-end graph's image buffer holds one image, so one at a time."""
        self._bring(emb)
        step = self.p.max_batch if self.p.mode == "split" else 1
        for i in range(0, len(words), step):
            t0 = time.perf_counter()
            stages = self._model(words[i : i + step], pad[i : i + step])
            for name, binding in stages:
                binding.run()
                times[name] = times.get(name, 0.0) + _ms(t0)
                t0 = time.perf_counter()
            yield len(words[i : i + step]), stages[-1][1]

    def decode(self, emb: ImageEmbedding, words: np.ndarray, pad: np.ndarray):
        """Predictor.decode on the device; the probabilities come back to the host."""
        pixel, patch, times = [], [], {}
        with self.lock:
            for n, last in self._run_chunks(emb, words, pad, times):
                pixel.append(host(last.outputs["pixel_probs"])[:n])
                patch.append(host(last.outputs["patch_probs"])[:n])
        return np.concatenate(pixel), np.concatenate(patch), times

    def predict(self, emb: ImageEmbedding, words: np.ndarray, pad: np.ndarray, thr: float, probs: bool) -> tuple[dict, dict]:
        parts, times = [], {}
        with self.lock:
            self.threshold.update_inplace(np.array([thr], np.float32))
            for n, last in self._run_chunks(emb, words, pad, times):
                t0 = time.perf_counter()
                part = self._postprocess(emb, last, n, probs)
                part["patch_probs"] = host(last.outputs["patch_probs"])[:n]
                times["postprocess"] = times.get("postprocess", 0.0) + _ms(t0)
                parts.append(part)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, times

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
