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

    def merge(self, other: "SegmentationMetrics") -> "SegmentationMetrics":
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

    def load_state(self, state: dict) -> "SegmentationMetrics":
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


def format_table(result: dict) -> str:
    """A `SegmentationMetrics.result()` as text tables (fractions, as everywhere in restr), overall and mean IoU named."""
    head = ["samples", "overall IoU (cumulative)", "mean IoU"] + [f"P@{t}" for t in THRESHOLDS]
    row = [str(result["n"]), _fraction(result["overall_iou"]), _fraction(result["mean_iou"])]
    row += [_fraction(result["precision_at"][t]) for t in THRESHOLDS]
    text = format_text_table(head, [row])
    if result.get("by_length"):
        head = ["expression length (words)", "samples", "overall IoU (cumulative)", "mean IoU"]
        rows = [[label, str(g["n"]), _fraction(g["overall_iou"]), _fraction(g.get("mean_iou"))] for label, g in result["by_length"].items()]
        text += "\n\n" + format_text_table(head, rows)
    return text
