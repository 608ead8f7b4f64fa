"""The pure merge rules of the upload modes (pipeline/stages/upload/merge.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.annotation import Annotation, Bitmap, Label, ObjClass, Rectangle, Tag
from pipeline.stages.upload.merge import base_class_name, iou_merge_keep, merge_annotation

RECT = ObjClass("car", "rectangle")
MASK = ObjClass("car_nn", "bitmap")
PERSON = ObjClass("person", "rectangle")


def box_with_iou(x1, y1, x2, y2, iou):
    """A box centred in (x1, y1, x2, y2) whose area is `iou` times the box's: their IoU is exactly `iou`."""
    s = math.sqrt(iou)
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * s, (y2 - y1) * s
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def rect(cls, *xyxy):
    return Label(Rectangle.from_xyxy(*xyxy), cls)


def mask_label(cls, mask):
    return Label(Bitmap.from_mask(mask), cls)


@pytest.mark.parametrize(
    "iou, threshold, kept",
    [(0.89, 0.9, True), (0.91, 0.9, False), (0.95, 0.9, False), (0.5, 0.9, True), (0.5, 0.4, False),
     (0.999, 1.0, True)],
)
def test_box_iou_threshold(iou, threshold, kept):
    new = rect(RECT, 100, 100, 300, 200)
    old = rect(RECT, *box_with_iou(100, 100, 300, 200, iou))
    assert iou_merge_keep([old], [new], threshold, 400, 400) == [kept]


def test_other_classes_never_drop():
    new = rect(RECT, 10, 10, 50, 50)
    assert iou_merge_keep([rect(PERSON, 10, 10, 50, 50)], [new], 0.9, 100, 100) == [True]


def test_new_labels_are_not_merged_with_each_other():
    a, b = rect(RECT, 10, 10, 50, 50), rect(RECT, 10, 10, 50, 50)
    assert iou_merge_keep([], [a, b], 0.9, 100, 100) == [True, True]


def _disk(h, w, cx, cy, r):
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


@pytest.mark.parametrize("shift, kept", [(0, False), (12, True)])
def test_masks_compare_as_masks(shift, kept):
    old = mask_label(MASK, _disk(100, 100, 50, 50, 30))
    new = mask_label(MASK, _disk(100, 100, 50 + shift, 50, 30))
    assert iou_merge_keep([old], [new], 0.9, 100, 100) == [kept]


def test_mixed_pair_fills_the_box_and_shares_the_class_across_nn():
    mask = np.zeros((100, 100), bool)
    mask[20:60, 30:80] = True  # a mask that is exactly its box
    assert base_class_name("car_nn") == "car" and base_class_name("car_nn_nn") == "car"
    assert iou_merge_keep([rect(RECT, 30, 20, 80, 60)], [mask_label(MASK, mask)], 0.9, 100, 100) == [False]
    assert iou_merge_keep([rect(RECT, 30, 20, 80, 80)], [mask_label(MASK, mask)], 0.9, 100, 100) == [True]


def test_merge_annotation_modes():
    tag = Tag("reviewed")
    cur = Annotation((100, 100), (rect(RECT, 10, 10, 50, 50),), img_tags=(tag,))
    pred = Annotation((100, 100), (rect(RECT, 10, 10, 50, 50), rect(RECT, 60, 60, 90, 90)))
    assert len(merge_annotation("append", cur, pred, 0.9).labels) == 3
    replaced = merge_annotation("replace", cur, pred, 0.9)
    assert replaced.labels == pred.labels and replaced.img_tags == (tag,)  # image tags are kept
    merged = merge_annotation("iou_merge", cur, pred, 0.9)
    assert len(merged.labels) == 2 and merged.labels[1] == pred.labels[1]
    assert merge_annotation("create", None, pred, 0.9) is pred
