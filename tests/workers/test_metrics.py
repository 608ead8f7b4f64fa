"""The mAP@0.5 code of benchmarks/_metrics.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._metrics import average_precision, box_iou, mask_iou, mean_average_precision  # noqa: E402


def _gts():
    return [
        {"boxes": np.array([[10, 10, 50, 50], [60, 60, 100, 120]], float), "labels": np.array([0, 1])},
        {"boxes": np.array([[0, 0, 30, 30]], float), "labels": np.array([0])},
    ]


def _perfect():
    return [
        {"boxes": g["boxes"].copy(), "labels": g["labels"].copy(), "scores": np.linspace(0.9, 0.8, len(g["labels"]))}
        for g in _gts()
    ]


def test_box_iou():
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou, [[1.0, 1 / 3, 0.0]])


def test_mask_iou_matches_box_iou_for_rectangles():
    a = np.zeros((1, 20, 20), bool)
    b = np.zeros((1, 20, 20), bool)
    a[0, 0:10, 0:10] = True
    b[0, 0:10, 5:15] = True
    np.testing.assert_allclose(mask_iou(a, b), [[1 / 3]])


def test_perfect_detections_give_ap_one():
    result = mean_average_precision(_perfect(), _gts())
    assert result["map"] == pytest.approx(1.0)
    assert result["per_class"] == {0: pytest.approx(1.0), 1: pytest.approx(1.0)}


def test_perfect_masks_give_ap_one():
    gts = _gts()
    for g in gts:
        g["masks"] = np.zeros((len(g["labels"]), 128, 128), bool)
        for m, (x1, y1, x2, y2) in zip(g["masks"], g["boxes"].astype(int)):
            m[y1:y2, x1:x2] = True
    preds = _perfect()
    for p, g in zip(preds, gts):
        p["masks"] = g["masks"].copy()
    assert mean_average_precision(preds, gts, iou_type="mask")["map"] == pytest.approx(1.0)


def test_missed_object_lowers_ap():
    preds = _perfect()
    preds[1] = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int), "scores": np.zeros(0)}
    result = mean_average_precision(preds, _gts())
    assert result["per_class"][0] == pytest.approx(0.5)  # recall stops at 1/2
    assert result["per_class"][1] == pytest.approx(1.0)
    assert result["map"] == pytest.approx(0.75)


def test_higher_scored_false_positive_lowers_ap():
    preds = _perfect()
    preds[0]["boxes"] = np.vstack([preds[0]["boxes"], [[200, 200, 240, 240]]])
    preds[0]["labels"] = np.append(preds[0]["labels"], 0)
    preds[0]["scores"] = np.append(preds[0]["scores"], 0.99)
    ap = mean_average_precision(preds, _gts())["per_class"][0]
    assert ap < 1.0
    # a false positive ranked last costs nothing at this recall
    preds[0]["scores"][-1] = 0.01
    assert mean_average_precision(preds, _gts())["per_class"][0] == pytest.approx(1.0)


def test_wrong_class_or_poor_overlap_is_a_false_positive():
    preds = _perfect()
    preds[1]["labels"] = np.array([1])  # right place, wrong class
    assert mean_average_precision(preds, _gts())["per_class"][0] == pytest.approx(0.5)
    preds = _perfect()
    preds[1]["boxes"] = np.array([[15.0, 15.0, 45.0, 45.0]])  # IoU 225 / 1575 = 1/7 with its ground truth
    assert mean_average_precision(preds, _gts())["per_class"][0] == pytest.approx(0.5)
    assert mean_average_precision(preds, _gts(), iou_threshold=0.1)["per_class"][0] == pytest.approx(1.0)


def test_duplicate_detection_is_a_false_positive():
    preds = _perfect()
    preds[1]["boxes"] = np.vstack([preds[1]["boxes"], preds[1]["boxes"]])
    preds[1]["labels"] = np.array([0, 0])
    preds[1]["scores"] = np.array([0.95, 0.94])
    ap = mean_average_precision(preds, _gts())["per_class"][0]
    assert 0.5 < ap < 1.0


def test_average_precision_without_ground_truth_is_nan():
    assert np.isnan(average_precision(np.array([0.5]), np.array([False]), 0))
