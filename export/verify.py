"""Verification of an export: every graph in ONNX Runtime against PyTorch, the split chain against
the end-to-end graph, the FP16 graphs against FP32; all on the same inputs, at several batch sizes
from one export.

Figures for probability outputs (`compare_probs`): max and mean absolute difference, mask agreement
(overall IoU of the masks thresholded at 0.5) and the same-side fraction (how many of the pixels
where the reference is at least `decisive_margin` away from 0.5 land on the same side). Feature
outputs (`compare_features`) get the max and mean absolute difference, and the max relative to the
features' scale.

Each check is a record (`Check`, as Polygraphy's comparator makes them) built where its comparison
runs, with its reference, figures and criteria (`Rules`); one without criteria is a bug and is
refused, unless declared not judged (the reduced-precision features, whose effect is judged in the
probabilities: `passed` None, never a vacuous pass). Which figures gate depends on whether masks
mean anything: for trained weights (a checkpoint that names its data set) mask IoU is required, and
so is a minimum share of decisive pixels for the same-side fraction; for random weights, whose
probabilities mostly sit near 0.5, the differences, and the same-side fraction where enough pixels
are decisive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from restr.runtime.transforms import normalize
from restr.tables import format_table as format_text_table

PROB_GRAPHS = ("end_to_end", "fusion_decoder")


class VerificationError(RuntimeError):
    """A tolerance was exceeded: one line naming the check and the figure."""


@dataclass(frozen=True)
class Tolerances:
    """Pass criteria. `fp32_*`: ONNX Runtime FP32 vs PyTorch; `split_*`: split chain vs end-to-end
    (same precision); `fp16_*`: FP16 graph vs FP32 graph; `int8_*`: INT8 graph vs FP32 graph (and the
    INT8 split chain vs the INT8 end-to-end graph: separately calibrated graphs, so the INT8 gate)."""

    fp32_max_abs_diff: float = 1e-3  # probabilities; features: relative to their largest magnitude
    fp32_min_mask_iou: float = 0.99  # trained weights only
    split_max_abs_diff: float = 1e-4
    fp16_max_mean_abs_diff: float = 0.01
    fp16_min_same_side: float = 0.99
    fp16_min_mask_iou: float = 0.98  # trained weights only
    # same_side means something only over enough decisive pixels (all near 0.5: nothing to compare)
    fp16_min_decisive_share: float = 0.05
    decisive_margin: float = 0.1
    threshold: float = 0.5
    int8_max_mean_abs_diff: float = 0.03
    int8_min_same_side: float = 0.97
    int8_min_mask_iou: float = 0.97  # trained weights only

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------- figures


def mask_iou(ref: np.ndarray, test: np.ndarray) -> float:
    """Overall IoU of two boolean mask batches (sum of intersections / sum of unions); 1.0 if both are empty."""
    union = np.logical_or(ref, test).sum()
    return 1.0 if union == 0 else float(np.logical_and(ref, test).sum() / union)


def compare_probs(ref: np.ndarray, test: np.ndarray, threshold: float = 0.5, margin: float = 0.1) -> dict:
    """Agreement of two probability maps of the same shape (reference first)."""
    ref, test = ref.astype(np.float64), test.astype(np.float64)
    diff = np.abs(ref - test)
    decisive = np.abs(ref - threshold) >= margin
    same = (ref > threshold) == (test > threshold)
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "mask_iou": mask_iou(ref > threshold, test > threshold),
        "same_side": float(same[decisive].mean()) if decisive.any() else None,  # None: no pixel to judge by
        "decisive_pixels": int(decisive.sum()),
        "decisive_share": float(decisive.mean()),
        "pixels": int(ref.size),
    }


def compare_features(ref: np.ndarray, test: np.ndarray) -> dict:
    """Agreement of two feature tensors: absolute differences, the max relative to max |ref|, and the
    cosine similarity of the two (flattened)."""
    ref, test = ref.astype(np.float64), test.astype(np.float64)
    diff = np.abs(ref - test)
    norms = float(np.linalg.norm(ref) * np.linalg.norm(test))
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_rel_diff": float(diff.max() / max(float(np.abs(ref).max()), 1e-12)),
        "cosine": float((ref * test).sum() / norms) if norms else 1.0,
    }


def _worst(results: list[dict]) -> dict:
    """Worst figures over several runs (batch sizes): max of differences, min of agreements."""
    out = {}
    for key in results[0]:
        values = [r[key] for r in results if r[key] is not None]
        if not values:
            out[key] = None
        elif key in ("mask_iou", "same_side", "decisive_share", "cosine"):
            out[key] = min(values)
        elif key in ("decisive_pixels", "pixels"):
            out[key] = sum(values)
        else:
            out[key] = max(values)
    return out


# ---------------------------------------------------------------------------------------- inputs


def generated_inputs(
    image_size: int, max_words: int, vocab_size: int, mean, std, n: int = 3, seed: int = 0
) -> dict[str, np.ndarray]:
    """`n` synthetic letterboxed images (flat background, a few coloured boxes and discs, the letterbox
    padding at the bottom/right) and word lists of different lengths, as model inputs (numpy).

    Torch-free, so a GPU machine can regenerate the very inputs an export was verified on.
    """
    rng = np.random.default_rng(seed)
    s = image_size
    yy, xx = np.mgrid[0:s, 0:s]
    images = np.empty((n, s, s, 3), np.uint8)
    for i in range(n):
        im = np.empty((s, s, 3), np.uint8)
        im[...] = rng.integers(0, 256, 3)
        for _ in range(rng.integers(2, 5)):
            cy, cx = rng.integers(0, s, 2)
            ry, rx = rng.integers(s // 10, s // 3 + 1, 2)
            shape = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            if rng.random() < 0.5:
                shape = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            im[shape] = rng.integers(0, 256, 3)
        pad_rows = int(rng.integers(0, s // 4))  # a letterboxed landscape image: padding at the bottom
        im[s - pad_rows :] = [int(round(m * 255)) for m in mean]
        images[i] = im
    lengths = np.linspace(1, max_words, n).round().astype(int) if n > 1 else np.array([max(1, max_words // 2)])
    lengths = np.roll(lengths, 1)  # the first sample (the batch-1 run) gets the longest expression
    pad = np.arange(max_words)[None, :] >= lengths[:, None]
    words = np.where(pad, 0, rng.integers(2, max(3, vocab_size), (n, max_words))).astype(np.int64)
    return {"image": normalize(images, mean, std), "words": words, "pad_mask": pad}


def dataset_inputs(meta: dict, cfg, vocab, n: int = 3) -> dict[str, np.ndarray]:
    """`n` validation samples of the data set a checkpoint's meta names (`data`, `split_by`,
    `image_root`, as restr-train writes them), letterboxed and tokenised as in training.

    The one place the export touches `restr.data`; raises on any problem (the caller falls back to
    generated inputs and says why).
    """
    from restr.data import build_dataset

    last: Exception | None = None
    for split in ("val", "test"):
        try:
            ds = build_dataset(
                meta["data"],
                split,
                cfg.image_size,
                vocab,
                cfg.image_mean,
                cfg.image_std,
                cfg.max_words,
                split_by=meta.get("split_by"),
                image_root=meta.get("image_root"),
                transform=cfg.image_transform,
            )
            break
        except Exception as e:  # a split the data set does not have: try the next
            last = e
    else:
        raise last  # type: ignore[misc]
    picks = np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int)
    items = [ds.arrays(int(i)) for i in picks]
    return {k: np.stack([np.asarray(it[k]) for it in items]) for k in ("image", "words", "pad_mask")}


def verification_inputs(cfg, vocab, meta: dict, n: int = 3, seed: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    """Inputs for verification and a description for the manifest: real images from the checkpoint's
    data set when it names one and it can be read, else generated ones."""
    data = (meta or {}).get("data")
    if data:
        try:
            feeds = dataset_inputs(meta, cfg, vocab, n)
            feeds["pad_mask"] = feeds["pad_mask"].astype(bool)
            return feeds, {"source": "dataset", "data": data, "samples": int(len(feeds["image"]))}
        except Exception as e:
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
            feeds = generated_inputs(cfg.image_size, cfg.max_words, len(vocab), cfg.image_mean, cfg.image_std, n, seed)
            return feeds, {
                "source": "generated",
                "seed": seed,
                "samples": n,
                "note": f"data set {data!r} not readable ({reason})",
            }
    feeds = generated_inputs(cfg.image_size, cfg.max_words, len(vocab), cfg.image_mean, cfg.image_std, n, seed)
    return feeds, {"source": "generated", "seed": seed, "samples": n}


# ----------------------------------------------------------------------------------- the checks


Criteria = dict[str, tuple[str, float]]  # figure -> (op, bound), op "<=" or ">="


@dataclass
class Check:
    """One comparison the export ran, made where it ran: what (`name`, its key in the manifest's
    `checks`), against what (`reference`), its figures (worst over `batch_sizes`) and the criteria
    that judge them (`Rules`). A check without criteria is a bug in the exporter and is refused;
    only a check declared `judged=False` (figures whose effect another check judges) goes without,
    and it is "not judged" (`passed` None), never a vacuous pass."""

    name: str
    reference: str
    batch_sizes: list[int]
    figures: dict
    criteria: Criteria
    judged: bool = True

    def __post_init__(self):
        if self.judged and not self.criteria:
            raise ValueError(f"check {self.name!r} has no criteria (a bug in restr-export: every judged check needs some)")
        if not self.judged and self.criteria:
            raise ValueError(f"check {self.name!r} is declared not judged but has criteria {sorted(self.criteria)}")
        unknown = sorted(set(self.criteria) - set(self.figures))
        if unknown:
            raise ValueError(
                f"check {self.name!r}: criteria on figures it does not have: {unknown} (it has {sorted(self.figures)})"
            )

    @property
    def misses(self) -> list[str]:
        """The criteria not met, each as "figure value (needs op bound)"."""
        return [
            f"{k} {_fmt(self.figures[k])} (needs {op} {v:g})"
            for k, (op, v) in self.criteria.items()
            if not _meets(self.figures[k], op, v)
        ]

    @property
    def passed(self) -> bool | None:
        return None if not self.judged else not self.misses

    @property
    def failure(self) -> str | None:
        """One line naming the check and every figure that failed; None when it passed or is not judged."""
        misses = self.misses
        return f"{self.name} vs {self.reference}: " + ", ".join(misses) if misses else None

    def to_dict(self) -> dict:
        """The manifest's entry: reference, batch_sizes, the figures, criteria, passed."""
        return {
            "reference": self.reference,
            "batch_sizes": list(self.batch_sizes),
            **self.figures,
            "criteria": {k: f"{op} {v:g}" for k, (op, v) in self.criteria.items()},
            "passed": self.passed,
        }


@dataclass(frozen=True)
class Rules:
    """The criteria of each kind of check, from the tolerances. Which figures gate depends on whether
    masks mean anything (`masks_meaningful`: trained weights)."""

    tol: Tolerances
    masks_meaningful: bool

    def fp32_probs(self, figures: dict) -> Criteria:
        """ONNX Runtime FP32 probabilities against PyTorch."""
        crit = {"max_abs_diff": ("<=", self.tol.fp32_max_abs_diff)}
        if self.masks_meaningful:
            crit["mask_iou"] = (">=", self.tol.fp32_min_mask_iou)
        return crit

    def fp32_features(self, figures: dict) -> Criteria:
        """ONNX Runtime FP32 features against PyTorch, relative to their largest magnitude."""
        return {"max_rel_diff": ("<=", self.tol.fp32_max_abs_diff)}

    def same_computation(self, figures: dict) -> Criteria:
        """Two ways to the same numbers at one precision (the split chain and the end-to-end graph,
        shared and repeated image features): held to the split tolerance, however low the precision."""
        return {"max_abs_diff": ("<=", self.tol.split_max_abs_diff)}

    def reduced_probs(self, precision: str, figures: dict) -> Criteria:
        """A reduced-precision graph's probabilities against the FP32 graph's, from the
        `{precision}_*` tolerances."""
        tol = self.tol
        crit = {"mean_abs_diff": ("<=", getattr(tol, f"{precision}_max_mean_abs_diff"))}
        same_side = (">=", getattr(tol, f"{precision}_min_same_side"))
        if self.masks_meaningful:  # trained weights: too few decisive pixels is itself a failure
            crit["decisive_share"] = (">=", tol.fp16_min_decisive_share)
            crit["same_side"] = same_side
            crit["mask_iou"] = (">=", getattr(tol, f"{precision}_min_mask_iou"))
        elif (figures.get("decisive_share") or 0.0) >= tol.fp16_min_decisive_share:  # random weights: judged where it can be
            crit["same_side"] = same_side
        return crit


def _meets(value, op: str, bound: float) -> bool:
    if value is None:  # a figure that could not be measured meets no bound
        return False
    return value <= bound if op == "<=" else value >= bound


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def torch_reference(model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PyTorch outputs of every stage on `feeds` (image, words, pad_mask): the features and the
    probabilities (the end-to-end forward is exactly decode(encode_image, encode_text))."""
    import torch

    from restr.export.onnx_export import FusionDecoder

    image, words, pad = (torch.from_numpy(feeds[k]) for k in ("image", "words", "pad_mask"))
    with torch.no_grad():
        v = model.encode_image(image)
        l = model.encode_text(words, pad)
        pixel, patch = FusionDecoder(model)(v, l, pad)
    return {
        "visual_features": v.numpy(),
        "linguistic_features": l.numpy(),
        "pixel_probs": pixel.numpy(),
        "patch_probs": patch.numpy(),
    }


def check_shapes(key: str, runner, outputs: dict[str, np.ndarray], batch: int) -> None:
    """The outputs have the shapes the manifest declares (the runner checked the graph against it),
    with `batch` for the dynamic axis."""
    for o in runner.info.outputs:
        want = o.concrete(batch)
        if outputs[o.name].shape != want:
            raise VerificationError(
                f"{key}: output {o.name} has shape {outputs[o.name].shape} at batch {batch}, the manifest declares {want}"
            )


def _slice(d: dict[str, np.ndarray], b: int) -> dict[str, np.ndarray]:
    return {k: v[:b] for k, v in d.items()}


def _probs(ref: dict, test: dict, tol: Tolerances) -> dict:
    r = compare_probs(ref["pixel_probs"], test["pixel_probs"], tol.threshold, tol.decisive_margin)
    r["patch_max_abs_diff"] = float(np.abs(ref["patch_probs"] - test["patch_probs"]).max())
    return r


def _split_chain(predictor, feeds: dict) -> dict[str, np.ndarray]:
    """The split graphs chained by the predictor's own path, as the runtime ships them, image by
    image: the image encoded at batch 1, then its features decoded with its expression."""
    pixel, patch = [], []
    with predictor.path.lock:
        for i in range(len(feeds["image"])):
            ((_, store),) = predictor.path.encode([(feeds["image"][i : i + 1], None)], {})
            dec = predictor.path.decode([store], feeds["words"][i : i + 1], feeds["pad_mask"][i : i + 1], {})
            pixel.append(dec.pixel_host())
            patch.append(dec.patch)
    return {"pixel_probs": np.concatenate(pixel), "patch_probs": np.concatenate(patch)}


def run_checks(model, art, feeds: dict[str, np.ndarray], rules: Rules, batch_sizes=(3, 1), threads: int = 0) -> list[Check]:
    """Every check of the export `art`, each worst over `batch_sizes` (each a prefix of `feeds`) and
    judged by `rules`.

    `art` is the export as it ships, read by the runtime (`Artifacts.open`): the graphs run through
    its runners (`make_runner`, ONNX Runtime on the CPU) and its predictor's split chain. Checks
    whose graphs are missing are left out.
    """
    from restr.runtime.formats import END_TO_END, MODEL_GRAPHS, PRECISIONS, STAGES, graph_key
    from restr.runtime.predictor import Predictor
    from restr.runtime.runners import make_runner

    keys = [graph_key(g, p) for p in PRECISIONS for g in MODEL_GRAPHS if graph_key(g, p) in art.graphs]
    runners = {k: make_runner(art, k, "ort", threads=threads or None) for k in keys}
    batch_sizes = [b for b in batch_sizes if b <= len(feeds["image"])]
    torch_out = torch_reference(model, feeds)
    # every graph's outputs at every batch size: fusion_decoder on PyTorch's features
    outs = {}
    for b in batch_sizes:
        f, t = _slice(feeds, b), _slice(torch_out, b)
        decoder_feeds = {
            "visual_features": t["visual_features"],
            "linguistic_features": t["linguistic_features"],
            "pad_mask": f["pad_mask"],
        }
        outs[b] = {k: r.run(decoder_feeds if k.startswith("fusion_decoder") else f) for k, r in runners.items()}
        for k, o in outs[b].items():
            check_shapes(k, runners[k], o, b)
    tol = rules.tol
    checks: list[Check] = []

    def check(name: str, reference: str, runs: list[dict], criteria, judged: bool = True) -> None:
        figures = _worst(runs)
        checks.append(Check(name, reference, list(batch_sizes), figures, criteria(figures) if judged else {}, judged))

    for precision in PRECISIONS:
        suffix = graph_key("", precision)
        for g in (END_TO_END, "vision", "language", "fusion_decoder"):
            key = graph_key(g, precision)
            if key not in runners:
                continue
            if precision == "fp32":  # against PyTorch
                reference, refs = "pytorch", {b: _slice(torch_out, b) for b in batch_sizes}
            elif g in runners:  # against the FP32 graph in ONNX Runtime
                reference, refs = f"{g} (fp32, onnxruntime)", {b: outs[b][g] for b in batch_sizes}
            else:
                continue
            if g in PROB_GRAPHS:
                runs = [_probs(refs[b], outs[b][key], tol) for b in batch_sizes]
                check(key, reference, runs, rules.fp32_probs if precision == "fp32" else partial(rules.reduced_probs, precision))
            else:  # features: judged in FP32; at lower precisions their effect is judged in the probabilities
                out = "visual_features" if g == "vision" else "linguistic_features"
                runs = [compare_features(refs[b][out], outs[b][key][out]) for b in batch_sizes]
                check(key, reference, runs, rules.fp32_features, judged=precision == "fp32")
        fd = graph_key("fusion_decoder", precision)
        if fd in runners and any(b > 1 for b in batch_sizes):  # one image's features broadcast over the batch's expressions
            runs = []
            for b in (b for b in batch_sizes if b > 1):
                t, pad = _slice(torch_out, b), feeds["pad_mask"][:b]
                shared = {
                    "visual_features": t["visual_features"][:1],
                    "linguistic_features": t["linguistic_features"],
                    "pad_mask": pad,
                }
                repeated = dict(shared, visual_features=np.repeat(shared["visual_features"], b, 0))
                runs.append(_probs(runners[fd].run(repeated), runners[fd].run(shared), tol))
            check(f"split_vs_repeated_image{suffix}", f"{fd} (features repeated)", runs, rules.same_computation)
        e2e = graph_key(END_TO_END, precision)
        if e2e in runners and all(graph_key(s, precision) in runners for s in STAGES):
            predictor = Predictor(art, {s: runners[graph_key(s, precision)] for s in STAGES}, art.vocabulary(), cache_size=0)
            runs = [_probs(outs[b][e2e], _split_chain(predictor, _slice(feeds, b)), tol) for b in batch_sizes]
            # INT8: the split graphs and the end-to-end graph are quantized and calibrated apart, so
            # they are held to INT8's gate against each other
            check(
                f"split_vs_end_to_end{suffix}",
                f"{e2e} (onnxruntime)",
                runs,
                partial(rules.reduced_probs, "int8") if precision == "int8" else rules.same_computation,
            )
    names = [c.name for c in checks]
    if len(set(names)) != len(names):
        raise ValueError(f"two checks share a name: {names} (a bug in restr-export)")
    return checks


def verify(
    model, art, feeds: dict[str, np.ndarray], tol: Tolerances, masks_meaningful: bool, batch_sizes=(3, 1), threads: int = 0
) -> dict:
    """All checks on the export `art` (an `Artifacts`), judged. Returns the manifest's `verification`
    body (without the inputs)."""
    checks = run_checks(model, art, feeds, Rules(tol, masks_meaningful), batch_sizes, threads)
    return verification_body(checks, tol, masks_meaningful)


def verification_body(checks: list[Check], tol: Tolerances, masks_meaningful: bool) -> dict:
    """The manifest's `verification` body of judged checks: passed, failures, masks_meaningful,
    tolerances, checks by name."""
    failures = [f for f in (c.failure for c in checks) if f]
    return {
        "passed": not failures,
        "failures": failures,
        "masks_meaningful": masks_meaningful,
        "tolerances": tol.to_dict(),
        "checks": {c.name: c.to_dict() for c in checks},
    }


def format_table(verification: dict) -> str:
    """The verification figures as a table for people."""
    rows = []
    for name, c in verification["checks"].items():
        iou = f"{c['mask_iou']:.4f}" if "mask_iou" in c else "-"
        side = f"{c['same_side']:.4f}" if c.get("same_side") is not None else "-"
        diff = f"{c['max_abs_diff']:.2e}" + ("" if "mask_iou" in c else f" (rel {c['max_rel_diff']:.1e})")
        result = {True: "ok", False: "FAIL", None: "not judged"}[c["passed"]]
        rows.append(
            (name, c["reference"], ",".join(map(str, c["batch_sizes"])), diff, f"{c['mean_abs_diff']:.2e}", iou, side, result)
        )
    lines = [format_text_table(["check", "reference", "batches", "max|dp|", "mean|dp|", "mask IoU", "same side", "result"], rows)]
    if not verification.get("masks_meaningful", True):
        lines.append("(random weights: probabilities sit near 0.5, so mask IoU is shown but not judged)")
    return "\n".join(lines)


# ------------------------------------------------------------------------- processing graphs


PROCESSING_CRITERIA = {"image_max_levels": ("<=", 1.001), "probs_max_abs_diff": ("<=", 1e-4), "mask_agreement": (">=", 0.999)}
# Resized logits (the authors' mask rule) of these random probabilities step by up to 34 between
# neighbours, and float32 source coordinates (ONNX Runtime divides by out/in, numpy and torch multiply
# by in/out) put a pixel up to ~1e-4 apart on a 963-pixel side: the probabilities differ by up to 9e-5
# (measured at 480, four seeds), at restr's gate; without antialiasing nothing averages that away.
LOGIT_PROCESSING_CRITERIA = {**PROCESSING_CRITERIA, "probs_max_abs_diff": ("<=", 1e-3)}


def _photo(h: int, w: int, rng) -> np.ndarray:
    """A (h, w, 3) uint8 image with edges, gradients and noise: what resizing gets wrong shows."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(x / 7.0) * 90 + 128, np.cos(y / 5.0) * 90 + 128, ((x // 16 + y // 16) % 2) * 200 + 20], -1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def check_processing(art, cfg, seed: int = 0, threads: int = 0) -> dict:
    """The preprocess and postprocess graphs against `restr.runtime.transforms` (numpy and Pillow: the
    training transform and `Letterbox.invert`, in the config's `image_transform`) on generated photos
    shrunk, enlarged and kept: the letterbox geometry must be equal, the images within one uint8 level
    (Pillow rounds in fixed point), the probabilities on the photo within 1e-4 and the masks the same
    on >= 99.9% of pixels. The graphs run in the runtime's runners over the export `art`."""
    from PIL import Image

    from restr.runtime.formats import POSTPROCESS, PREPROCESS
    from restr.runtime.runners import make_runner
    from restr.runtime.transforms import Letterbox

    pre, post = (make_runner(art, k, "ort", threads=threads or None) for k in (PREPROCESS, POSTPROCESS))
    rng, s, transform = np.random.default_rng(seed), cfg.image_size, cfg.image_transform
    std = np.asarray(cfg.image_std, np.float32).reshape(1, 3, 1, 1)
    out = {"geometry_equal": True, "image_max_levels": 0.0, "probs_max_abs_diff": 0.0, "mask_agreement": 1.0, "sizes": []}
    for h, w in ((480, 640), (640, 480), (max(1, s // 3), max(1, s // 4)), (s + 1, s), (s, s), (2 * s + 3, s // 2 + 1)):
        photo = _photo(h, w, rng)
        lb = Letterbox.fit((h, w), s, transform)
        ref = lb.input(Image.fromarray(photo), cfg.image_mean, cfg.image_std)[None]
        image, letterbox = (pre.run({"rgb": photo})[k] for k in ("image", "letterbox"))
        probs = rng.random((2, 1, s, s), dtype=np.float32)
        done = post.run(
            {"pixel_probs": probs, "letterbox": letterbox, "threshold": np.array([0.5], np.float32)}, outputs=("probs", "mask")
        )
        got, mask = done["probs"], done["mask"]
        want = np.stack([lb.invert(p[0]) for p in probs])
        want_mask = np.stack([lb.invert_mask(p[0], 0.5) for p in probs])
        out["sizes"].append([h, w])
        out["geometry_equal"] &= letterbox.tolist() == [*lb.src_hw, *lb.new_hw]
        out["image_max_levels"] = max(out["image_max_levels"], float((np.abs(image - ref) * std * 255).max()))
        out["probs_max_abs_diff"] = max(out["probs_max_abs_diff"], float(np.abs(got - want).max()))
        out["mask_agreement"] = min(out["mask_agreement"], float((mask == want_mask).mean()))
    criteria = LOGIT_PROCESSING_CRITERIA if transform.mask_from == "logits" else PROCESSING_CRITERIA
    check = Check("processing", "restr.runtime.transforms", [], {k: out[k] for k in criteria}, criteria)
    failures = [] if out["geometry_equal"] else ["letterbox geometry differs from Letterbox.fit"]
    failures += check.misses
    return {
        **out,
        "criteria": check.to_dict()["criteria"],
        "passed": not failures,
        "failures": failures,
    }


def cuda_placement(path) -> dict | None:
    """Where ONNX Runtime's CUDA EP puts graph `path`, on a machine that has it (None elsewhere):
    the Memcpy nodes it inserts (copies between host and device, each a synchronisation) and
    whether it accepts the graph for CUDA graph capture (no Memcpy; shape arithmetic on the CPU
    is allowed)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None

    def session(cuda_graph: bool, saved: Path | None = None):
        so = ort.SessionOptions()
        so.log_severity_level = 4  # a refused capture is an answer here, not an error to print
        if saved is not None:
            so.optimized_model_filepath = str(saved)
        return ort.InferenceSession(
            str(path),
            so,
            providers=[("CUDAExecutionProvider", {"enable_cuda_graph": str(int(cuda_graph))}), "CPUExecutionProvider"],
        )

    with tempfile.TemporaryDirectory() as d:
        saved = Path(d) / "optimized.onnx"
        session(False, saved)  # the graph after ONNX Runtime's partitioning, Memcpy nodes included
        memcpy = sum(n.op_type.startswith("Memcpy") for n in onnx.load(str(saved), load_external_data=False).graph.node)
    try:
        session(True)
        capturable = "yes"
    except Exception:  # ORT refuses capture at session creation
        capturable = "no"
    return {"Memcpy (CUDA)": memcpy, "CUDA graph": capturable}


def format_graphs(verification: dict) -> str:
    """Per-graph op counts (what a GPU engine pays for beyond the math; on a machine with the CUDA
    EP also its Memcpy nodes and CUDA graph capture) and the processing check."""
    graphs = verification.get("graphs") or {}
    lines = []
    if graphs:
        cols = list(dict.fromkeys(c for g in graphs.values() for c in g))
        lines.append(format_text_table(["graph", *cols], [[k, *(g.get(c, "-") for c in cols)] for k, g in graphs.items()]))
    p = verification.get("processing")
    if p:
        lines.append(
            f"preprocess/postprocess vs Pillow on {len(p['sizes'])} photo sizes: geometry "
            f"{'equal' if p['geometry_equal'] else 'DIFFERS'}, image max {p['image_max_levels']:.2f} uint8 levels, "
            f"probs max|dp| {p['probs_max_abs_diff']:.1e}, masks agree on {p['mask_agreement']:.5%}: "
            f"{'ok' if p['passed'] else 'FAIL'}"
        )
    return "\n".join(lines)
