"""Execution paths: where a predictor's data lives between its graphs, chosen once per predictor.

    HostPath    numpy arrays between runs: ONNX Runtime on the CPU, TensorRT engines, any Runner
    DevicePath  ONNX Runtime's CUDA EP with every graph on the device: the data stays in bound
                device buffers, each model graph's batch buckets replayed as CUDA graphs

Both answer the same calls, so the Predictor writes encode-once-ask-many and batching across
images once, for both:

    prepare(rgb)                       what may run in a worker thread beside the model
    encode(prepared, times)            up to max_batch photos through the preprocess and image graphs
    decode(stores, words, pad, times)  the graphs after the image encoder, for one batch
    postprocess(decoded, i, n, ...)    rows [i, i+n) of a decoded batch, back onto one photo

A batch ("stores") is either one image's features shared by up to max_batch expressions
(image_batch 1) or one image per expression, up to max_batch of them.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np
from PIL import Image

from restr.runtime.formats import END_TO_END, POSTPROCESS, PREPROCESS
from restr.runtime.runners import OrtRunner, Region, host, pad_batch
from restr.runtime.transforms import Letterbox, normalize


class Features:
    """Where one image's features are (`ImageEmbedding.store`): a host array `host` (1, N_v, D),
    or (1, 3, S, S) the image itself for the end-to-end graph; on the device path also, or instead,
    row `row` of a device buffer `block`. Only the path that made it moves the data, under its lock:
    before a block is written again, the live stores in it get their host copy."""

    __slots__ = ("host", "block", "row", "__weakref__")

    def __init__(self, host: np.ndarray | None = None, block=None, row: int = 0):
        self.host, self.block, self.row = host, block, row


@dataclass
class Decoded:
    """One batch through the graphs after the image encoder: `n` expressions, their pixel
    probabilities `pixel` ((>= n, 1, S, S): a host array, or the device buffer of the bucket) and
    patch probabilities `patch` (n, N_v) on the host."""

    n: int
    pixel: object
    patch: np.ndarray

    def pixel_host(self) -> np.ndarray:
        return (self.pixel if isinstance(self.pixel, np.ndarray) else host(self.pixel))[: self.n]


def letterbox_of(letterbox: np.ndarray, size: int) -> Letterbox:
    """The preprocess graph's letterbox output [H, W, h, w] as a `Letterbox`."""
    h, w, nh, nw = (int(v) for v in np.asarray(letterbox).reshape(-1))
    return Letterbox(size=size, src_hw=(h, w), new_hw=(nh, nw))


def _ms(t0: float, t1: float | None = None) -> float:
    return ((time.perf_counter() if t1 is None else t1) - t0) * 1000.0


def _add(times: dict, name: str, t0: float) -> float:
    """Add the ms since t0 to times[name]; returns now."""
    t1 = time.perf_counter()
    times[name] = times.get(name, 0.0) + (t1 - t0) * 1000.0
    return t1


class HostPath:
    """numpy arrays between the runs of any runners (ONNX Runtime on the CPU, TensorRT)."""

    def __init__(self, predictor):
        self.p = predictor
        self.split = predictor.mode == "split"
        self.lock = contextlib.nullcontext()  # the runners are thread-safe and the data is the caller's
        self.rows = True  # one image per row: expressions about different images in one batch
        self.expressions = predictor.max_batch  # expressions about one image in one batch
        self.detached = True  # decoded batches are host arrays of their own: postprocess them anywhere

    def prepare(self, rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """The preprocess graph (or Pillow) on the host: thread-safe, so bulk runs it in workers."""
        p = self.p
        if PREPROCESS in p.processing:
            x, letterbox = (p.processing[PREPROCESS].run({"rgb": rgb})[k] for k in ("image", "letterbox"))
            return x, letterbox_of(letterbox, p.artifacts.image_size)
        lb = Letterbox.fit(rgb.shape[:2], p.artifacts.image_size)
        return normalize(lb.image(Image.fromarray(rgb), p.fill), p.artifacts.mean, p.artifacts.std)[None], lb

    def encode(self, prepared: list, times: dict) -> list[tuple[Letterbox, Features]]:
        """Prepared photos (`prepare`'s outputs, at most max_batch) -> their letterboxes and features."""
        x = np.concatenate([x for x, _ in prepared])
        if self.split:
            t0 = time.perf_counter()
            x = self.p.runners["vision"].run({"image": x})["visual_features"]  # (B, N_v, D)
            _add(times, "vision", t0)
        return [(lb, Features(host=x[i : i + 1].copy())) for i, (_, lb) in enumerate(prepared)]

    def decode(self, stores: list[Features], words: np.ndarray, pad: np.ndarray, times: dict) -> Decoded:
        feats = stores[0].host if len(stores) == 1 else np.concatenate([s.host for s in stores])
        r = self.p.runners
        t0 = time.perf_counter()
        if self.split:
            lang = r["language"].run({"words": words, "pad_mask": pad})["linguistic_features"]
            t0 = _add(times, "language", t0)
            out = r["fusion_decoder"].run({"visual_features": feats, "linguistic_features": lang, "pad_mask": pad})
            _add(times, "fusion_decoder", t0)
        else:
            image = feats if len(feats) == len(words) else np.repeat(feats, len(words), axis=0)
            out = r[END_TO_END].run({"image": image, "words": words, "pad_mask": pad})
            _add(times, END_TO_END, t0)
        return Decoded(len(words), out["pixel_probs"], out["patch_probs"])

    def postprocess(self, dec: Decoded, i: int, n: int, lb: Letterbox, thr: float, probs: bool) -> dict:
        pixel = dec.pixel[i : i + n]
        if POSTPROCESS in self.p.processing:
            return self.p.processing[POSTPROCESS].run(
                {"pixel_probs": pixel, "letterbox": np.array([*lb.src_hw, *lb.new_hw]), "threshold": np.array([thr], np.float32)},
                outputs=None if probs else ("mask", "score", "area"),
            )
        prob = np.stack([lb.invert(x[0]) for x in pixel])
        mask = prob > thr
        area = mask.sum((1, 2))
        return {
            "probs": prob,
            "mask": mask,
            "area": area,
            "score": np.array([prob[k][mask[k]].mean() if area[k] else 0.0 for k in range(len(prob))]),
        }


OWNER = "predictor"  # the device path's own bindings, apart from the runners' `run`
# Photo sizes whose processing graphs get bindings of their own, replayed as CUDA graphs (a camera
# or a service sees few sizes); further sizes run the same graphs unbound. A binding lives as long
# as the predictor: its CUDA graph was captured on its buffers.
PHOTO_SIZES = 4
_PATHS = itertools.count()


@dataclass
class _Photo:
    """One photo size on the device path: its preprocess binding and, after the first run, its
    letterbox (as a `Letterbox`, and as the host value the postprocess bindings of this size read)."""

    pre: object  # DeviceBinding
    letterbox: Letterbox | None = None
    letterbox_value: object = None  # OrtValue


class DevicePath:
    """Every graph in ONNX Runtime's CUDA EP, the data kept on the device.

    Photos are copied to the device once (uint8); the preprocess graph writes each into its row of
    the image graph's bound input for the batch's bucket, and the image graph's output buffer of
    that bucket (a "block") holds the batch's features, one row per photo, as the embeddings'
    `Features`. The fusion decoder reads a block's rows in place for one expression per image; for
    one image's many expressions it reads the batch-1 block (`slot`), where the image's features are
    brought first. Before a block is written again, the live embeddings whose rows it holds get a
    host copy (brought back when asked about again). The language graph writes into the buffers the
    fusion decoder's bucket reads; the postprocess graph reads the decoder's output rows and returns
    masks, scores and areas (and probabilities when asked for) in one device-to-host copy each. The
    model graphs' buckets, and the processing graphs of up to PHOTO_SIZES photo sizes, replay as
    CUDA graphs. A lock serialises calls: the buffers are shared and the GPU runs one stream.
    """

    def __init__(self, predictor):
        self.p = predictor
        self.split = predictor.mode == "split"
        self.lock = threading.Lock()
        self.rows = self.split  # the end-to-end graph's image buffer holds one image: no rows
        self.expressions = predictor.max_batch if self.split else 1
        self.detached = False  # decoded batches are device buffers the next batch overwrites
        self.pre, self.post = predictor.processing[PREPROCESS], predictor.processing[POSTPROCESS]
        self.photos: dict[tuple[int, int], _Photo] = {}
        self.residents: dict[int, list] = {}  # id(block) -> weakrefs to the Features whose rows it holds
        # The processing bindings take this path's buffers (its image input, its threshold): keyed apart
        # from another predictor's on the same runners.
        self.key = (OWNER, next(_PATHS))
        self.threshold = self.post.value(np.zeros(1, np.float32))  # read by every postprocess binding
        r = predictor.runners
        first = r["vision"] if self.split else r[END_TO_END]
        one = first.binding(1, owner=OWNER)
        self.image_in = one.inputs["image"]  # the batch-1 image input, where a photo's own bindings write
        self.slot = one.outputs["visual_features"] if self.split else self.image_in  # (1, N_v, D) / (1, 3, S, S)

    @classmethod
    def maybe(cls, predictor) -> DevicePath | None:
        """A device path when every graph runs in ONNX Runtime with bound buffers on one kind of device."""
        runners = [*predictor.runners.values(), *predictor.processing.values()]
        ok = (
            all(isinstance(r, OrtRunner) for r in runners)
            and all(r.bound and r.max_batch for r in predictor.runners.values())
            and len({r.on_cuda for r in runners}) == 1
            and {PREPROCESS, POSTPROCESS} <= set(predictor.processing)
        )
        return cls(predictor) if ok else None

    # -- where features are ---------------------------------------------------------------------

    def _evict(self, block) -> None:
        """Before `block` is written: host copies for the live stores whose rows it holds."""
        alive = [s for s in (ref() for ref in self.residents.pop(id(block), ())) if s is not None and s.block is block]
        if alive:
            data = host(block)
            for s in alive:
                s.host, s.block = data[s.row : s.row + 1].copy(), None

    def _resident(self, block, row: int) -> Features:
        store = Features(block=block, row=row)
        self.residents.setdefault(id(block), []).append(weakref.ref(store))
        return store

    def _bring(self, store: Features) -> None:
        """Make the slot hold `store`'s features (call under the lock)."""
        if store.block is self.slot:
            return
        if store.block is not None:  # a row of a batch's block: by way of the host
            store.host, store.block = host(store.block)[store.row : store.row + 1].copy(), None
        self._evict(self.slot)
        self.slot.update_inplace(np.ascontiguousarray(store.host, dtype=np.float32))
        store.block, store.row = self.slot, 0
        self.residents.setdefault(id(self.slot), []).append(weakref.ref(store))

    # -- images ---------------------------------------------------------------------------------

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        return rgb  # the preprocess graph runs on the device, in `encode`

    def _photo(self, rgb: np.ndarray, into: Region | None = None) -> Letterbox:
        """Preprocess `rgb` (the photo's one host-to-device copy) into the batch-1 image input, by its
        size's own binding (and CUDA graph) when it has or can get one, or into `into`, a row of a
        batch's image input (call under the lock)."""
        h, w = rgb.shape[:2]
        if into is None and (h, w) not in self.photos and self.pre.bound and len(self.photos) < PHOTO_SIZES:
            binding = self.pre.fixed_binding(
                (*self.key, h, w), {"rgb": (h, w, 3), "letterbox": (4,)}, {"image": self.image_in}, on_host=("letterbox",)
            )
            self.photos[(h, w)] = _Photo(binding)
        if into is not None or (h, w) not in self.photos:
            out = self.pre.run_device({"rgb": rgb}, {"image": into or self.image_in, "letterbox": "cpu"})
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

    def encode(self, rgbs: list[np.ndarray], times: dict) -> list[tuple[Letterbox, Features]]:
        with self.lock:
            if len(rgbs) == 1 or not self.split:  # the end-to-end graph's image buffer holds one image
                out = []
                for rgb in rgbs:
                    self._evict(self.slot)
                    t0 = time.perf_counter()
                    lb = self._photo(rgb)
                    t0 = _add(times, "preprocess", t0)
                    if self.split:
                        self.p.runners["vision"].binding(1, owner=OWNER).run()
                        _add(times, "vision", t0)
                    out.append((lb, self._resident(self.slot, 0) if len(rgbs) == 1 else Features(host=host(self.slot))))
                return out
            vis = self.p.runners["vision"].binding(len(rgbs), owner=OWNER)
            block = vis.outputs["visual_features"]
            t0 = time.perf_counter()
            lbs = [self._photo(rgb, into=Region(vis.inputs["image"], i, 1)) for i, rgb in enumerate(rgbs)]
            t0 = _add(times, "preprocess", t0)
            self._evict(block)
            vis.run()
            _add(times, "vision", t0)
            return [(lb, self._resident(block, i)) for i, lb in enumerate(lbs)]

    # -- expressions ----------------------------------------------------------------------------

    def decode(self, stores: list[Features], words: np.ndarray, pad: np.ndarray, times: dict) -> Decoded:
        """Run the model graphs after the image encoder (call under the lock, `decoding()`)."""
        r, n = self.p.runners, len(words)
        t0 = time.perf_counter()
        if not self.split:  # the end-to-end graph: one image at a time in its bucket-1 buffer
            if len(stores) != 1 or n != 1:
                raise ValueError("the end-to-end graph on the device takes one image and one expression a run")
            self._bring(stores[0])
            stages = [(END_TO_END, r[END_TO_END].binding(1, owner=OWNER))]
        else:
            lang = r["language"].binding(n, owner=OWNER)
            wired = {"pad_mask": lang.inputs["pad_mask"], "linguistic_features": lang.outputs["linguistic_features"]}
            if len(stores) == 1:
                self._bring(stores[0])
                fd = r["fusion_decoder"].binding(n, owner=OWNER, inputs={"visual_features": self.slot, **wired})
            else:
                fd = self._rows_binding(stores, lang.batch, wired)
            stages = [("language", lang), ("fusion_decoder", fd)]
        first = stages[0][1]
        first.inputs["words"].update_inplace(pad_batch(words, first.batch))
        first.inputs["pad_mask"].update_inplace(pad_batch(pad, first.batch))
        for name, binding in stages:
            binding.run()
            t0 = _add(times, name, t0)
        last = stages[-1][1]
        return Decoded(n, last.outputs["pixel_probs"], host(last.outputs["patch_probs"])[:n])

    def _rows_binding(self, stores: list[Features], bucket: int, wired: dict):
        """The fusion decoder's binding of `bucket` that reads one image's features per expression:
        in place when the stores are rows 0.. of one block, else copied into its own buffer."""
        fd = self.p.runners["fusion_decoder"]
        block = stores[0].block
        in_place = block is not None and all(s.block is block and s.row == i for i, s in enumerate(stores))
        in_place = in_place and block.shape()[0] >= bucket
        specs = {s.name: s for s in (*fd.input_specs, *fd.info.outputs)}
        shapes = {name: tuple(bucket if isinstance(d, str) else int(d) for d in spec.shape) for name, spec in specs.items()}
        if in_place:
            given = {"visual_features": Region(block, 0, bucket), **wired}
            return fd.fixed_binding((OWNER, "rows", id(block), bucket), shapes, given, batch=bucket)
        binding = fd.fixed_binding((OWNER, "rows", "copy", bucket), shapes, wired, batch=bucket)
        feats = [s.host if s.block is None else host(s.block)[s.row : s.row + 1] for s in stores]
        binding.inputs["visual_features"].update_inplace(pad_batch(np.concatenate(feats).astype(np.float32), bucket))
        return binding

    def postprocess(self, dec: Decoded, i: int, n: int, lb: Letterbox, thr: float, probs: bool) -> dict:
        """Rows [i, i+n) of `dec` onto their photo (call under the lock, `decoding()`)."""
        h, w = lb.src_hw
        self.threshold.update_inplace(np.array([thr], np.float32))
        photo = self.photos.get((h, w))
        b = dec.pixel.shape()[0]
        if (i, n) == (0, dec.n) and photo is not None and photo.letterbox == lb:  # one photo's batch: its own binding
            shapes = {"probs": (b, h, w), "mask": (b, h, w), "score": (b,), "area": (b,)}
            given = {"pixel_probs": dec.pixel, "threshold": self.threshold, "letterbox": photo.letterbox_value}
            binding = self.post.fixed_binding((*self.key, h, w, b, id(dec.pixel)), shapes, given)
            binding.run()
            out = binding.outputs
        else:
            letterbox = self.post.value(np.array([h, w, *lb.new_hw], np.int64), on_host=True)
            given = {"pixel_probs": Region(dec.pixel, i, n), "threshold": self.threshold, "letterbox": letterbox}
            out = self.post.run_device(given, {"mask": "cpu", "score": "cpu", "area": "cpu", "probs": "cpu" if probs else "cuda"})
        return {k: host(v)[:n] for k, v in out.items() if k != "probs" or probs}
