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

Many images: `predict_many(requests)` takes (image, texts) pairs and streams one `ImageResult` per
pair, in order: worker threads decode and prepare the next images while the model runs, the image
graph runs on up to max_batch photos at once, and expressions about different images share the
graphs after it (one image per row). A request that fails (an unreadable image, an empty
expression) is an `ImageResult` with its error; the others go on.

Where the data lives between the graphs is the predictor's execution path (`restr.runtime.paths`),
chosen once when it is made: the host (numpy arrays: the CPU, TensorRT), or on a GPU with every
graph in ONNX Runtime's CUDA execution provider the device (bound buffers, CUDA graphs, one
host-to-device copy of each photo and one device-to-host copy of the masks).

An embedding is tied to the export that made it: `predict_embedding` refuses one made by another
export's image graph (`EmbeddingError`), since its features mean nothing to this decoder.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import threading
import time
import warnings
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from restr.runtime.artifacts import END_TO_END, STAGES, Artifacts
from restr.runtime.formats import POSTPROCESS, PREPROCESS
from restr.runtime.paths import DevicePath, Features, HostPath
from restr.runtime.runners import Runner, graph_key, make_runner
from restr.runtime.tokenizer import FUNCTION_WORDS, Encoded, Vocabulary
from restr.runtime.transforms import MAX_IMAGE_PIXELS, ImageError, Letterbox, check_threshold, load_image, mean_fill, to_rgb

MODES = ("auto", "split", "end_to_end")


class TextError(ValueError):
    """An expression that cannot be used (empty, or no expressions at all): one line, for users."""


class EmbeddingError(ValueError):
    """An image embedding made by another export's image graph: one line, for users."""


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

    def figures(self, timings: dict[str, float] | None = None) -> dict:
        """The JSON fields every written record of a prediction shares (restr-predict's
        prediction.json, bulk predictions.jsonl): area, scores, word flags, timings (ms)."""
        return {
            "area": self.area,
            "area_fraction": round(self.area_fraction, 6),
            "score": round(self.score, 6),
            "patch_score": round(self.patch_score, 6),
            "unknown_words": self.unknown_words,
            "no_known_words": self.no_known_words,
            "truncated": self.truncated,
            "timings_ms": {n: round(v, 3) for n, v in (self.timings if timings is None else timings).items()},
        }


@dataclass(frozen=True, eq=False)  # holds arrays: compare by identity (or by `key`)
class ImageEmbedding:
    """An image prepared for the fusion decoder: what `embed` computes and the cache holds.

    `features` is (1, N_v, D) visual features (split graphs), or the (1, 3, S, S) normalised
    letterboxed image when the predictor runs the end-to-end graph; None while they are only on the
    device (the GPU path keeps them there, `store` says where). `source` names the graph that made
    them and its sha256: another export's predictor refuses the embedding.
    """

    key: str  # hash of the RGB pixels and the letterbox
    letterbox: Letterbox
    store: Features
    timings: dict  # ms: preprocess, vision
    source: tuple[str, str] = ("", "")  # (manifest key, sha256) of the image graph

    @property
    def features(self) -> np.ndarray | None:
        return self.store.host

    @property
    def size(self) -> tuple[int, int]:
        """The original image's (H, W)."""
        return self.letterbox.src_hw


@dataclass
class ImageResult:
    """One request of `predict_many`: its predictions, or the error that stopped it (the other
    requests go on). `size` is the image's (H, W) once it was read."""

    index: int  # the request's position in the input
    image: object  # the request's image, as given
    texts: list[str]
    predictions: list[Prediction]
    error: Exception | None = None
    size: tuple[int, int] | None = None


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


class _Job(NamedTuple):
    """One image's expressions, tokenised: what `_answer` batches."""

    emb: ImageEmbedding
    words: np.ndarray  # (K, N_l)
    pad: np.ndarray  # (K, N_l)


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
        self.source = _source(artifacts, runners["vision" if self.mode == "split" else END_TO_END])
        self._local = threading.local()
        self._lock = threading.Lock()
        self.vision_runs = 0  # how often the image encoder ran on an image (cache misses in split mode)
        self.path: HostPath | DevicePath = DevicePath.maybe(self) or HostPath(self)

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
        release_memory: bool = False,
    ) -> Predictor:
        """Open an export folder and load the graphs one predictor needs.

        backend: "ort" (ONNX Runtime) or "tensorrt" (native engines; build them with restr-export
        on the target GPU). precision: "fp32" or "fp16" (the mixed-precision graphs; TensorRT
        engines are fp16). providers: ONNX Runtime execution providers (None: CPU; "auto":
        TensorRT, CUDA when this onnxruntime has them; or a list like ["cuda", "cpu"]).
        mode: "split" (encode once, ask many), "end_to_end" (the single graph) or "auto" (split
        when the export has the split graphs). threads: ONNX Runtime intra-op threads.
        cuda_graph: on CUDA, capture each model graph's batch buckets as CUDA graphs.
        release_memory: the processing graphs give their photo-sized memory back after each run
        (for one photo, e.g. a 12 MP one; slower when many photos follow).
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
        runners = {
            s: make_runner(art, graph_key(s, precision), backend, providers=providers, threads=threads, cuda_graph=cuda_graph)
            for s in stages
        }
        # Pre- and post-processing run in ONNX Runtime on every backend, on the model's device.
        pp_providers = providers if backend == "ort" else (providers or "auto")
        processing = {
            k: make_runner(art, k, "ort", providers=pp_providers, threads=threads, release_memory=release_memory)
            for k in (PREPROCESS, POSTPROCESS)
            if k in art.graphs
        }
        return cls(art, runners, vocab, threshold=threshold, cache_size=cache_size, processing=processing)

    # -- images ---------------------------------------------------------------------------------

    def embed(self, image) -> ImageEmbedding:
        """Pre-process an image and run the vision graph, or take both from the cache.

        image: path, PIL image or numpy array (see `as_rgb`).
        """
        t0 = time.perf_counter()
        rgb = rgb_array(image)  # (H, W, 3) uint8, EXIF orientation applied
        key = self._key(rgb)
        cached = self._cached(key, t0)
        if cached is not None:
            return cached
        prepared = self.path.prepare(rgb)
        return self._encode([(key, prepared, _ms(t0))])[0]

    def embed_many(self, images: Iterable, workers: int = 2) -> Iterator[ImageEmbedding]:
        """`embed` for many images, in order: `workers` threads decode and prepare the next images
        while the image graph runs on up to max_batch of them at once. Raises ImageError at the
        first image that cannot be read (after yielding the ones before it)."""
        with _pool(workers) as pool:
            yield from self._embed_stream(images, pool)

    def _embed_stream(self, images: Iterable, pool) -> Iterator[ImageEmbedding]:
        for chunk in self._loaded(((image, None) for image in images), pool):
            for entry in chunk:
                if isinstance(entry.loaded, Exception):
                    raise entry.loaded
            yield from self._embed_loaded([e.loaded for e in chunk])

    def preprocess(self, rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """(H, W, 3) uint8 RGB -> the model's (1, 3, S, S) input and its letterbox, on the host."""
        return HostPath(self).prepare(rgb)

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

    def _key(self, rgb: np.ndarray) -> str:
        if not self.cache.maxsize:  # hashing a photo costs ~1 ms: only for a cache that can use it
            return ""
        h = hashlib.blake2b(rgb, digest_size=16)
        h.update(repr((rgb.shape, self.artifacts.image_size, self.mode, self.fill)).encode())
        return h.hexdigest()

    def _cached(self, key: str, t0: float) -> ImageEmbedding | None:
        cached = self.cache.get(key) if key else None
        if cached is None:
            return None
        return ImageEmbedding(cached.key, cached.letterbox, cached.store, {"preprocess": _ms(t0), "vision": 0.0}, cached.source)

    def _encode(self, loaded: list[tuple[str, object, float]]) -> list[ImageEmbedding]:
        """(key, prepared image, ms spent preparing it) for at most max_batch images -> their
        embeddings, the image graph run once on all of them; each is put in the cache."""
        times: dict = {}
        encoded = self.path.encode([prepared for _, prepared, _ in loaded], times)
        n = len(loaded)
        out = []
        for (key, _, ms), (lb, store) in zip(loaded, encoded):
            timings = {"preprocess": ms + times.get("preprocess", 0.0) / n, "vision": times.get("vision", 0.0) / n}
            emb = ImageEmbedding(key, lb, store, timings, self.source)
            self.cache.put(key, emb)
            out.append(emb)
        if self.mode == "split":
            with self._lock:
                self.vision_runs += n
        return out

    def _embed_loaded(self, loaded: list) -> list[ImageEmbedding]:
        """Embeddings of loaded images (`_load`'s outputs): cache hits as they are, the misses
        encoded together, in chunks of max_batch."""
        out: list = [hit for hit, _ in loaded]
        misses = [i for i, (hit, _) in enumerate(loaded) if hit is None]
        for s in range(0, len(misses), self.max_batch):
            part = misses[s : s + self.max_batch]
            for i, emb in zip(part, self._encode([loaded[i][1] for i in part])):
                out[i] = emb
        return out

    def _load(self, image) -> tuple[ImageEmbedding | None, tuple | None]:
        """What a worker does for one image: read it (EXIF, RGB), hash it, and either find it in the
        cache or prepare it for the image graph. Thread-safe."""
        t0 = time.perf_counter()
        rgb = rgb_array(image)
        key = self._key(rgb)
        cached = self._cached(key, t0)
        if cached is not None:
            return cached, None
        prepared = self.path.prepare(rgb)
        return None, (key, prepared, _ms(t0))

    def _loaded(self, requests: Iterable, pool) -> Iterator[list[_Loaded]]:
        """The requests (image, texts) in chunks of up to max_batch, each image loaded (`_load`) by
        the pool's threads ahead of the caller (at most two chunks ahead: memory stays flat on a
        long input). A request whose image fails to load carries the exception instead."""
        ahead: deque = deque()
        requests = iter(enumerate(requests))
        try:
            while True:
                while len(ahead) < 2 * self.max_batch:
                    nxt = next(requests, None)
                    if nxt is None:
                        break
                    index, request = nxt
                    ahead.append((index, request, _submit(pool, self._load, _image_of(request))))
                if not ahead:
                    return
                chunk = []
                while ahead and len(chunk) < self.max_batch:
                    index, request, future = ahead.popleft()
                    chunk.append(_Loaded(index, request, _outcome(future)))
                yield chunk
        finally:
            for _, _, future in ahead:
                if hasattr(future, "cancel"):
                    future.cancel()

    # -- expressions ----------------------------------------------------------------------------

    def encode_text(self, texts: str | list[str]) -> Encoded:
        """Tokenise expressions -> words (K, N_l) int64, pad_mask (K, N_l) bool, unknown words.

        Raises TextError for no expressions or an expression without words; warns
        (TextTruncatedWarning) for one longer than N_l words, which is truncated.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise TextError("no expression given")
        if len(texts) > self.max_expressions:
            raise TextError(f"{len(texts)} expressions in one call; at most {self.max_expressions} (max_expressions)")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not self.vocab.split(t):
                raise TextError(f"expression {i + 1} ({t!r}) is empty: it has no words")
        enc = self.vocab.encode(texts, self.artifacts.max_words)
        for t, cut in zip(texts, enc.truncated):
            if cut:
                n = len(self.vocab.split(t))
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
        self._check_source(embedding)
        pixel, patch, times = [], [], {}
        with self.path.lock:
            for s in range(0, len(words), self.path.expressions):
                dec = self.path.decode(
                    [embedding.store], words[s : s + self.path.expressions], pad_mask[s : s + self.path.expressions], times
                )
                pixel.append(dec.pixel_host())
                patch.append(dec.patch)
        return np.concatenate(pixel), np.concatenate(patch), times

    def predict(self, texts: str | list[str], threshold: float | None = None, probs: bool = True) -> list[Prediction]:
        """Masks for one or many expressions about this thread's current image (`set_image` first)."""
        emb = self.embedding
        if emb is None:
            raise RuntimeError("no image set: call set_image(image) before predict(texts), or use predict_image")
        return self.predict_embedding(emb, texts, threshold, probs)

    def predict_image(
        self, image, texts: str | list[str], threshold: float | None = None, probs: bool = True
    ) -> list[Prediction]:
        """Stateless `set_image` + `predict`: safe to call from many threads at once."""
        return self.predict_embedding(self.embed(image), texts, threshold, probs)

    def predict_embedding(
        self, embedding: ImageEmbedding, texts: str | list[str], threshold: float | None = None, probs: bool = True
    ) -> list[Prediction]:
        """Masks for expressions about an image already embedded (`embed`). `probs=False` leaves
        `Prediction.probs` None (and on a GPU, the probabilities on the device). Raises
        EmbeddingError for an embedding made by another export."""
        self._check_source(embedding)
        texts = [texts] if isinstance(texts, str) else list(texts)
        enc = self.encode_text(texts)
        thr = self.threshold if threshold is None else check_threshold(threshold)
        ((out, times),) = self._answer([_Job(embedding, enc.words, enc.pad_mask)], thr, probs)
        return self._predictions(embedding, texts, enc, out, times, probs)

    def predict_many(
        self, requests: Iterable, threshold: float | None = None, probs: bool = False, workers: int = 2
    ) -> Iterator[ImageResult]:
        """Masks for many (image, texts) requests, streamed: one `ImageResult` per request, in order.

        image: a path, PIL image or array (as `predict_image`); texts: one expression or a list.
        `workers` threads read and prepare the next images, and on the host postprocess the last
        batch, while the model runs (0: none); the image graph runs on up to max_batch images at
        once and expressions about different images share the later graphs. At most two batches
        are read ahead, so a long input streams in flat memory. A request whose image cannot be
        read or whose expressions cannot be used comes back with `error` set and no predictions;
        runtime failures (ONNX Runtime, CUDA) raise. `probs` defaults to False here: probability
        maps of many photos are large.
        """
        thr = self.threshold if threshold is None else check_threshold(threshold)
        with _pool(workers) as pool:
            waiting: deque = deque()  # batches answered whose postprocessing may still run in the pool
            for chunk in self._loaded(requests, pool):
                waiting.append(self._start(chunk, thr, probs, pool))
                if len(waiting) > 1:
                    yield from _finish(*waiting.popleft())
            while waiting:
                yield from _finish(*waiting.popleft())

    def _start(self, chunk: list[_Loaded], thr: float, probs: bool, pool) -> tuple[list[ImageResult], list]:
        """One batch of `predict_many`: its results, and per live request what fills them in (a
        future when the pool postprocesses, else the predictions' parts at once)."""
        results, live = [], []
        for entry in chunk:
            texts = entry.texts()
            result = ImageResult(entry.index, _image_of(entry.request), texts, [])
            results.append(result)
            try:
                if isinstance(entry.loaded, Exception):
                    raise entry.loaded
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", TextTruncatedWarning)  # `Prediction.truncated` says it
                    enc = self.encode_text(texts)
            except REQUEST_ERRORS as e:
                result.error = e
                continue
            live.append((result, entry.loaded, enc))
        embeddings = self._embed_loaded([loaded for _, loaded, _ in live])
        answers = self._answer(
            [_Job(emb, enc.words, enc.pad_mask) for emb, (_, _, enc) in zip(embeddings, live)], thr, probs, pool
        )
        fill = []
        for (result, _, enc), emb, answer in zip(live, embeddings, answers):
            result.size = emb.size
            fill.append((result, functools.partial(self._predictions, emb, result.texts, enc, probs=probs), answer))
        return results, fill

    def _answer(self, jobs: list[_Job], thr: float, probs: bool, pool=None) -> list:
        """Masks for each job's expressions: (outputs, ms per stage summed over its expressions), or
        with a pool on the host path futures of them (the postprocess graph then runs in the pool,
        beside the next batch's model runs; device buffers are postprocessed before they are reused).

        Batches are planned here, once for both execution paths (`_batches`)."""
        path = self.path
        deferred = pool is not None and path.detached
        parts: list[list] = [[] for _ in jobs]
        times: list[dict] = [{} for _ in jobs]
        with path.lock:
            for rows, stores, words, pad in self._batches(jobs):
                t: dict = {}
                dec = path.decode(stores, words, pad, t)
                for m, r, n in rows:
                    for name, ms in t.items():
                        times[m][name] = times[m].get(name, 0.0) + ms * n / len(words)
                    parts[m].append((dec, r, n) if deferred else self._postprocess(jobs[m], dec, r, n, thr, probs, times[m]))
        if not deferred:
            return [(_concat(p), t) for p, t in zip(parts, times)]
        return [pool.submit(self._postprocess_all, job, p, thr, probs, t) for job, p, t in zip(jobs, parts, times)]

    def _batches(self, jobs: list[_Job]) -> Iterator[tuple[list, list, np.ndarray, np.ndarray]]:
        """The model batches for `jobs`: (rows, stores, words, pad), rows listing (job, first row,
        count). Consecutive jobs of one expression each run together, one image per row, up to
        max_batch; a job of several expressions runs alone, its image's features shared, in chunks
        of the path's batch."""
        path, i = self.path, 0
        while i < len(jobs):
            j = i
            while path.rows and j < len(jobs) and j - i < self.max_batch and len(jobs[j].words) == 1:
                j += 1
            if j - i >= 2:
                group = jobs[i:j]
                yield (
                    [(m, m - i, 1) for m in range(i, j)],
                    [g.emb.store for g in group],
                    np.concatenate([g.words for g in group]),
                    np.concatenate([g.pad for g in group]),
                )
                i = j
                continue
            job, step = jobs[i], path.expressions
            for s in range(0, len(job.words), step):
                yield [(i, 0, len(job.words[s : s + step]))], [job.emb.store], job.words[s : s + step], job.pad[s : s + step]
            i += 1

    def _postprocess(self, job: _Job, dec, r: int, n: int, thr: float, probs: bool, times: dict) -> dict:
        """Rows [r, r+n) of a decoded batch onto the job's photo; adds the ms to times["postprocess"]."""
        t0 = time.perf_counter()
        out = {**self.path.postprocess(dec, r, n, job.emb.letterbox, thr, probs), "patch_probs": dec.patch[r : r + n]}
        times["postprocess"] = times.get("postprocess", 0.0) + _ms(t0)
        return out

    def _postprocess_all(self, job: _Job, parts: list, thr: float, probs: bool, times: dict) -> tuple[dict, dict]:
        return _concat([self._postprocess(job, dec, r, n, thr, probs, times) for dec, r, n in parts]), times

    def _predictions(
        self, emb: ImageEmbedding, texts: list[str], enc: Encoded, out: dict, times: dict, probs: bool
    ) -> list[Prediction]:
        k = len(texts)
        shared = {**emb.timings, **{name: ms / k for name, ms in times.items()}}
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
                no_known_words=all(
                    w in FUNCTION_WORDS or w in enc.unknown[i] for w in self.vocab.split(text)[: self.artifacts.max_words]
                ),
            )
            for i, text in enumerate(texts)
        ]

    def _check_source(self, embedding: ImageEmbedding) -> None:
        if embedding.source != self.source:
            (key, theirs), (_, ours) = embedding.source, self.source
            raise EmbeddingError(
                f"this image embedding was made by another export (its {key or 'image'} graph has sha256 {theirs[:12] or '?'}..., "
                f"this predictor's {ours[:12] or '?'}...): embed the image again with this predictor"
            )

    def __repr__(self) -> str:
        runners = ", ".join(repr(r) for r in self.runners.values())
        return f"Predictor({self.artifacts.root}, model={self.artifacts.model_name}, mode={self.mode}, runners=[{runners}])"


# What fails one request of `predict_many` and not the others: an unreadable image, unusable text.
REQUEST_ERRORS = (ImageError, TextError, OSError)


class _Loaded(NamedTuple):
    index: int
    request: object
    loaded: object  # `Predictor._load`'s (cached embedding, prepared) or the exception it raised

    def texts(self) -> list[str]:
        texts = self.request[1] if isinstance(self.request, tuple) and len(self.request) == 2 else None
        return [texts] if isinstance(texts, str) else list(texts or [])


@contextlib.contextmanager
def _pool(workers: int):
    """A thread pool of `workers` threads for the duration (None for 0), shut down on the way out."""
    if workers <= 0:
        yield None
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="restr-bulk")
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _finish(results: list[ImageResult], fill: list):
    """Yield a batch's results once each live request's predictions are made."""
    for result, predictions, answer in fill:
        out, times = answer.result() if hasattr(answer, "result") else answer
        result.predictions = predictions(out=out, times=times)
    yield from results


def _concat(parts: list[dict]) -> dict:
    return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _image_of(request):
    """The image of an (image, texts) request (a bare image for `embed_many`)."""
    return request[0] if isinstance(request, tuple) and len(request) == 2 else request


def _submit(pool, fn, *args):
    if pool is None:
        return _outcome_now(fn, *args)
    return pool.submit(fn, *args)


def _outcome_now(fn, *args):
    try:
        return fn(*args)
    except REQUEST_ERRORS as e:
        return e


def _outcome(future):
    """A future's result, or the request error it raised (other exceptions propagate)."""
    if not hasattr(future, "result"):
        return future
    try:
        return future.result()
    except REQUEST_ERRORS as e:
        return e


def _source(artifacts: Artifacts, runner) -> tuple[str, str]:
    """(manifest key, sha256) of the graph or engine a runner runs: what an embedding's features came from."""
    name = str(getattr(runner, "name", ""))
    table = artifacts.engines if getattr(runner, "backend", "") == "tensorrt" else artifacts.graphs
    info = table.get(name) or artifacts.graphs.get(name)
    return name, info.sha256 if info is not None else ""


def _ms(t0: float, t1: float | None = None) -> float:
    return ((time.perf_counter() if t1 is None else t1) - t0) * 1000.0


__all__ = [
    "CacheInfo",
    "EmbeddingError",
    "FeatureCache",
    "ImageEmbedding",
    "ImageResult",
    "Prediction",
    "Predictor",
    "TextError",
    "TextTruncatedWarning",
    "as_rgb",
]
