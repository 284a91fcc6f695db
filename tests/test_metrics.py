"""Metrics against hand-computed cases (restr.metrics is numpy only)."""

import json

import numpy as np
import pytest

from restr.data import length_groups
from restr.metrics import SegmentationMetrics, format_table, group_label, intersection_union

UNC = [(1, 2), (3, 3), (4, 5), (6, 20)]


def _masks(shape, pred_cells, gt_cells):
    pred, gt = np.zeros(shape, bool), np.zeros(shape, np.uint8)
    for y, x in pred_cells:
        pred[y, x] = True
    for y, x in gt_cells:
        gt[y, x] = 1
    return pred, gt


def test_intersection_union_by_hand():
    pred, gt = _masks((3, 3), [(0, 0), (0, 1), (1, 1)], [(0, 1), (1, 1), (2, 2)])
    assert intersection_union(pred, gt) == (2, 4)


def test_cumulative_and_mean_iou_differ():
    m = SegmentationMetrics()
    # a big object half found: I = 2, U = 4 (IoU 0.5)
    pred, gt = _masks((2, 2), [(0, 0), (0, 1), (1, 0), (1, 1)], [(0, 0), (0, 1)])
    assert m.update(pred, gt) == pytest.approx(0.5)
    # a one-pixel object found exactly: I = 1, U = 1 (IoU 1)
    pred, gt = _masks((4, 5), [(3, 4)], [(3, 4)])
    assert m.update(pred, gt) == pytest.approx(1.0)
    r = m.result()
    assert r["n"] == 2
    assert r["overall_iou"] == pytest.approx(3 / 5)  # (2 + 1) / (4 + 1)
    assert r["mean_iou"] == pytest.approx(0.75)  # (0.5 + 1) / 2


def test_empty_union_counts_one_in_mean_and_nothing_in_overall():
    m = SegmentationMetrics()
    m.add(1, 4)
    assert m.update(np.zeros((3, 3), bool), np.zeros((3, 3), np.uint8)) == 1.0
    r = m.result()
    assert r["mean_iou"] == pytest.approx((0.25 + 1.0) / 2)
    assert r["overall_iou"] == pytest.approx(0.25)
    assert r["precision_at"]["0.9"] == pytest.approx(0.5)


def test_precision_at_exact_thresholds():
    m = SegmentationMetrics()
    for inter, union in [(1, 2), (3, 5), (7, 10), (4, 5), (9, 10)]:  # IoU exactly 0.5 ... 0.9
        m.add(inter, union)
    p = m.result()["precision_at"]
    assert list(p) == ["0.5", "0.6", "0.7", "0.8", "0.9"]
    assert p == {"0.5": 1.0, "0.6": 0.8, "0.7": 0.6, "0.8": 0.4, "0.9": 0.2}
    # just under a threshold does not count
    m = SegmentationMetrics()
    m.add(49, 100)
    assert m.result()["precision_at"]["0.5"] == 0.0


def test_precision_from_masks_on_the_boundary():
    m = SegmentationMetrics()
    pred, gt = _masks((1, 10), [(0, i) for i in range(10)], [(0, i) for i in range(6)])  # 6 / 10
    m.update(pred, gt)
    p = m.result()["precision_at"]
    assert p["0.6"] == 1.0 and p["0.7"] == 0.0


def test_length_groups_by_hand():
    m = SegmentationMetrics(UNC)
    m.add(1, 2, num_words=1)  # group 1-2
    m.add(1, 4, num_words=3)  # group 3
    m.add(3, 4, num_words=3)  # group 3
    m.add(5, 5, num_words=7)  # group 6-20
    m.add(0, 9, num_words=0)  # no group (empty expression): counts only in totals
    r = m.result()
    g = r["by_length"]
    assert list(g) == ["1-2", "3", "4-5", "6-20"]
    assert g["1-2"] == {"overall_iou": 0.5, "mean_iou": 0.5, "n": 1}
    assert g["3"]["overall_iou"] == pytest.approx(4 / 8) and g["3"]["mean_iou"] == pytest.approx(0.5) and g["3"]["n"] == 2
    assert g["4-5"] == {"overall_iou": None, "mean_iou": None, "n": 0}
    assert g["6-20"]["overall_iou"] == 1.0
    assert r["n"] == 5 and r["overall_iou"] == pytest.approx(10 / 24)
    json.dumps(r)  # JSON-ready: no NaN, no numpy scalars


def test_merge_and_state_round_trip():
    a, b = SegmentationMetrics(UNC), SegmentationMetrics(UNC)
    a.add(1, 2, 1)
    b.add(3, 3, 7)
    b.add(0, 1, 4)
    whole = SegmentationMetrics(UNC)
    for i, u, w in [(1, 2, 1), (3, 3, 7), (0, 1, 4)]:
        whole.add(i, u, w)
    assert a.merge(b).result() == whole.result()
    assert SegmentationMetrics(UNC).load_state(whole.state()).result() == whole.result()


def test_no_samples_gives_none():
    r = SegmentationMetrics(UNC).result()
    assert r["n"] == 0 and r["overall_iou"] is None and r["mean_iou"] is None
    assert r["precision_at"]["0.5"] is None
    assert "overall IoU (cumulative)" in format_table(r)


def test_bad_inputs():
    m = SegmentationMetrics()
    with pytest.raises(ValueError, match="one size"):
        m.update(np.zeros((2, 3), bool), np.zeros((3, 2), np.uint8))
    with pytest.raises(ValueError, match="intersection <= union"):
        m.add(3, 2)
    with pytest.raises(ValueError, match="empty"):
        SegmentationMetrics([(3, 2)])


def test_format_table_names_both_ious():
    m = SegmentationMetrics(UNC)
    m.add(2, 4, 1)
    m.add(1, 1, 3)
    text = format_table(m.result())
    head = text.splitlines()[0]
    assert "overall IoU (cumulative)" in head and "mean IoU" in head
    assert "0.600" in text and "0.750" in text  # 3/5 and (0.5 + 1) / 2, side by side: fractions, as everywhere
    assert "60.0" not in text and "75.0" not in text
    assert "expression length" in text and "1-2" in text


def test_paper_length_groups():
    assert [group_label(*g) for g in length_groups("refcocog")] == ["1-5", "6-7", "8-10", "11-20"]
    assert [group_label(*g) for g in length_groups("refcoco")] == ["1-2", "3", "4-5", "6-20"]
    assert length_groups("refcoco+") == length_groups("unc+") == length_groups("synthetic") == UNC
    assert [group_label(*g) for g in length_groups("referit")] == ["1", "2", "3-4", "5-20"]
    assert length_groups("umd") == length_groups("google") == length_groups("G-Ref")
    with pytest.raises(ValueError, match="known"):
        length_groups("imagenet")
