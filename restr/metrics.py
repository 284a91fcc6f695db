"""Referring segmentation metrics (section 4 of the paper; numpy only, no torch).

Masks are compared at each image's original resolution. Two different numbers are both called "IoU"
in the literature, so both are always reported and named:

- overall IoU (cumulative): sum of intersections / sum of unions over the whole split. This is the
  paper's "IoU" (Tables 1, 2, 3). Large objects weigh more.
- mean IoU: the average of per-sample IoUs. A sample whose prediction and ground truth are both empty
  (union 0) counts IoU 1.0: the prediction is exactly right.

Precision@t is the fraction of samples with IoU >= t (as in the authors' and LAVT's code), compared
exactly in integers so a sample sitting on a threshold is counted. Overall IoU by expression length
follows Table 2 (see `restr.data.length_groups`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from restr.tables import format_table as format_text_table

THRESHOLDS = ("0.5", "0.6", "0.7", "0.8", "0.9")


def group_label(lo: int, hi: int) -> str:
    """(1, 2) -> '1-2'; (3, 3) -> '3'."""
    return str(lo) if lo == hi else f"{lo}-{hi}"


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Pixel counts |pred & gt| and |pred | gt| of two (H, W) masks (anything > 0 is foreground)."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} must be (H, W) masks of one size")
    p, g = pred > 0, gt > 0
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p | g))


class SegmentationMetrics:
    """Accumulates per-sample intersections and unions over a split.

    `length_groups` is a sequence of inclusive word-count ranges (lo, hi), e.g. [(1, 2), (3, 3),
    (4, 5), (6, 20)]; a sample whose word count falls in no range counts only in the totals.
    """

    def __init__(self, length_groups: Sequence[tuple[int, int]] = ()):
        self.length_groups = [(int(lo), int(hi)) for lo, hi in length_groups]
        for lo, hi in self.length_groups:
            if lo > hi:
                raise ValueError(f"length group ({lo}, {hi}) is empty")
        self._inter: list[int] = []
        self._union: list[int] = []
        self._words: list[int] = []

    def __len__(self) -> int:
        return len(self._inter)

    def update(self, pred: np.ndarray, gt: np.ndarray, num_words: int = 0) -> float:
        """Add one sample: `pred` bool (H, W), `gt` (H, W) at the same (original) resolution.

        Returns the sample's IoU (1.0 when both masks are empty).
        """
        inter, union = intersection_union(pred, gt)
        return self.add(inter, union, num_words)

    def add(self, intersection: int, union: int, num_words: int = 0) -> float:
        """Add one sample from precomputed pixel counts (e.g. counted on an accelerator)."""
        intersection, union = int(intersection), int(union)
        if not 0 <= intersection <= union:
            raise ValueError(f"need 0 <= intersection <= union, got {intersection} and {union}")
        self._inter.append(intersection)
        self._union.append(union)
        self._words.append(int(num_words))
        return intersection / union if union else 1.0

    def merge(self, other: SegmentationMetrics) -> SegmentationMetrics:
        """Add another accumulator's samples (e.g. gathered from other processes); returns self."""
        self._inter += other._inter
        self._union += other._union
        self._words += other._words
        return self

    def state(self) -> dict:
        """Per-sample counts as int64 arrays (N,): 'intersection', 'union', 'num_words'."""
        return {
            "intersection": np.asarray(self._inter, dtype=np.int64),
            "union": np.asarray(self._union, dtype=np.int64),
            "num_words": np.asarray(self._words, dtype=np.int64),
        }

    def load_state(self, state: dict) -> SegmentationMetrics:
        """Append the samples of a `state()` dict; returns self."""
        for i, u, w in zip(state["intersection"], state["union"], state["num_words"]):
            self.add(int(i), int(u), int(w))
        return self

    def ious(self) -> np.ndarray:
        """Per-sample IoU (N,) float64; 1.0 where the union is empty."""
        inter = np.asarray(self._inter, dtype=np.float64)
        union = np.asarray(self._union, dtype=np.float64)
        return np.divide(inter, union, out=np.ones_like(inter), where=union > 0)

    def result(self) -> dict:
        """The split's metrics (fractions in [0, 1]; None where there are no samples).

        keys: n, overall_iou (cumulative), mean_iou, precision_at {"0.5": ..., "0.9": ...},
        by_length {"1-2": {"overall_iou", "mean_iou", "n"}, ...}.
        """
        inter = np.asarray(self._inter, dtype=np.int64)
        union = np.asarray(self._union, dtype=np.int64)
        words = np.asarray(self._words, dtype=np.int64)
        ious = self.ious()
        n = len(inter)
        # IoU >= t  <=>  10 * I >= 10t * U, exact in integers (t has one decimal).
        precision = {t: (float(np.mean(10 * inter >= int(t[2]) * union)) if n else None) for t in THRESHOLDS}
        by_length = {}
        for lo, hi in self.length_groups:
            sel = (words >= lo) & (words <= hi)
            by_length[group_label(lo, hi)] = {
                "overall_iou": _cumulative(inter[sel], union[sel]),
                "mean_iou": float(ious[sel].mean()) if sel.any() else None,
                "n": int(sel.sum()),
            }
        return {
            "n": n,
            "overall_iou": _cumulative(inter, union),
            "mean_iou": float(ious.mean()) if n else None,
            "precision_at": precision,
            "by_length": by_length,
        }


def _cumulative(inter: np.ndarray, union: np.ndarray) -> float | None:
    if len(inter) == 0:
        return None
    total = int(union.sum())
    return int(inter.sum()) / total if total else 1.0


def _fraction(x: float | None, decimals: int = 3) -> str:
    return "-" if x is None else f"{x:.{decimals}f}"


def _signed(x: float | None, decimals: int = 4) -> str:
    return "-" if x is None else f"{x:+.{decimals}f}"


def format_table(result: dict) -> str:
    """A `SegmentationMetrics.result()` as text tables (fractions, as everywhere in restr), overall and mean IoU named."""
    head = ["samples", "overall IoU (cumulative)", "mean IoU"] + [f"P@{t}" for t in THRESHOLDS]
    row = [str(result["n"]), _fraction(result["overall_iou"]), _fraction(result["mean_iou"])]
    row += [_fraction(result["precision_at"][t]) for t in THRESHOLDS]
    text = format_text_table(head, [row])
    if result.get("by_length"):
        head = ["expression length (words)", "samples", "overall IoU (cumulative)", "mean IoU"]
        rows = [
            [label, str(g["n"]), _fraction(g["overall_iou"]), _fraction(g.get("mean_iou"))]
            for label, g in result["by_length"].items()
        ]
        text += "\n\n" + format_text_table(head, rows)
    return text


# Two models scored on the same samples (restr-eval --ckpt with --artifacts): their scores side by
# side and how alike their masks are, expression by expression.
AGREEMENT_LEVEL = 0.99


def difference(base: dict, other: dict) -> dict:
    """`other` minus `base` for every score of two `result()`s of the same samples (None where either is None)."""
    if base["n"] != other["n"]:
        raise ValueError(f"the results cover {base['n']} and {other['n']} samples: not the same samples")

    def sub(a, b):
        return None if a is None or b is None else b - a

    return {
        "n": base["n"],
        "overall_iou": sub(base["overall_iou"], other["overall_iou"]),
        "mean_iou": sub(base["mean_iou"], other["mean_iou"]),
        "precision_at": {t: sub(base["precision_at"][t], other["precision_at"][t]) for t in THRESHOLDS},
        "by_length": {
            label: {k: sub(g[k], other["by_length"][label][k]) for k in ("overall_iou", "mean_iou")}
            for label, g in base["by_length"].items()
        },
    }


def agreement(pairs: SegmentationMetrics) -> dict:
    """How alike two models' masks are, from an accumulator fed (mask of one, mask of the other) per
    sample: per-sample mask IoU mean and min, the share above AGREEMENT_LEVEL (two empty masks agree:
    IoU 1), and the overall (cumulative) mask IoU."""
    ious = pairs.ious()
    n = len(ious)
    return {
        "n": n,
        "mean_mask_iou": float(ious.mean()) if n else None,
        "min_mask_iou": float(ious.min()) if n else None,
        f"share_above_{AGREEMENT_LEVEL}": float(np.mean(ious > AGREEMENT_LEVEL)) if n else None,
        "overall_mask_iou": pairs.result()["overall_iou"],
    }


def format_comparison(base: dict, other: dict, agree: dict, names: tuple[str, str] = ("checkpoint", "artifacts")) -> str:
    """Two `result()`s of the same samples side by side with their difference (4 decimals: the
    differences are small), then the per-expression agreement of their masks."""
    diff = difference(base, other)
    rows = [["samples", str(base["n"]), str(other["n"]), ""]]

    def add(label, a, b, d):
        rows.append([label, _fraction(a, 4), _fraction(b, 4), _signed(d)])

    add("overall IoU (cumulative)", base["overall_iou"], other["overall_iou"], diff["overall_iou"])
    add("mean IoU", base["mean_iou"], other["mean_iou"], diff["mean_iou"])
    for t in THRESHOLDS:
        add(f"P@{t}", base["precision_at"][t], other["precision_at"][t], diff["precision_at"][t])
    for label, g in base["by_length"].items():
        add(
            f"overall IoU, {label} words",
            g["overall_iou"],
            other["by_length"][label]["overall_iou"],
            diff["by_length"][label]["overall_iou"],
        )
    text = format_text_table(["metric", *names, "difference"], rows)
    share = agree[f"share_above_{AGREEMENT_LEVEL}"]
    if agree["n"]:
        text += (
            f"\n\nmasks of the two, expression by expression: mask IoU mean {agree['mean_mask_iou']:.4f}, "
            f"min {agree['min_mask_iou']:.4f}; above {AGREEMENT_LEVEL} on {round(share * agree['n'])} of {agree['n']} "
            f"expressions ({share:.1%})"
        )
    return text
