"""Scores for the generated test data: MOT metrics of tracks (with `motmetrics`) and detection recall.

`score_tracks` feeds `motmetrics.MOTAccumulator` frame by frame and reports MOTA, IDF1, ID switches, misses, false
positives, precision and recall. Matching is by box IoU >= 0.5 (the MOT Challenge's threshold), the distance
1 - IoU computed here (motmetrics 1.4's `iou_matrix` calls `np.asfarray`, gone in NumPy 2). Ground-truth objects
that are barely visible (`FrameTruth.care` False) are don't-care regions: a hypothesis that overlaps one (IoU >=
0.5) and no counted object is removed before the frame is scored, as MOT17's evaluation removes hypotheses on
ignored boxes, so finding or missing a sliver neither helps nor hurts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks._metrics import box_iou, greedy_matches

__all__ = ["IOU_THRESHOLD", "box_iou", "detection_recall", "score_tracks"]

IOU_THRESHOLD = 0.5


def _drop_on_dont_care(truth: Any, boxes: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    care, ignore = truth.boxes[truth.care], truth.boxes[~truth.care]
    if not len(ignore) or not len(boxes):
        return boxes, ids
    on_ignored = (box_iou(boxes, ignore) >= IOU_THRESHOLD).any(1)
    on_counted = (box_iou(boxes, care) >= IOU_THRESHOLD).any(1) if len(care) else np.zeros(len(boxes), bool)
    keep = ~(on_ignored & ~on_counted)
    return boxes[keep], ids[keep]


def score_tracks(truth: Sequence[Any], tracks: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """MOT metrics of `tracks` against `truth` (one `FrameTruth` per scored frame, in order); `tracks[k]` is
    (boxes (N, 4) xyxy, track ids (N,)) for the same frame, detections with id -1 left out (they joined no track).
    Returns mota, idf1, num_switches, num_misses, num_false_positives, precision, recall, num_objects."""
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    for gt, (boxes, ids) in zip(truth, tracks, strict=True):
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        ids = np.asarray(ids).reshape(-1)
        tracked = ids >= 0
        boxes, ids = _drop_on_dont_care(gt, boxes[tracked], ids[tracked])
        care_boxes, care_ids = gt.boxes[gt.care], gt.ids[gt.care]
        dist = 1.0 - box_iou(care_boxes, boxes)
        dist[dist > 1.0 - IOU_THRESHOLD] = np.nan
        acc.update(care_ids.tolist(), ids.tolist(), dist)
    names = ["mota", "idf1", "num_switches", "num_misses", "num_false_positives", "precision", "recall",
             "num_objects"]
    summary = mm.metrics.create().compute(acc, metrics=names, name="run")
    return {k: float(summary[k].iloc[0]) for k in names}


def detection_recall(truth: Sequence[Any], boxes: Sequence[np.ndarray]) -> float:
    """Fraction of counted ground-truth objects that some detection overlaps with IoU >= 0.5 (each detection
    matched once, greedily by IoU): what the detector alone allows a tracker to reach."""
    found = total = 0
    for gt, b in zip(truth, boxes, strict=True):
        care = gt.boxes[gt.care]
        total += len(care)
        if not len(care) or not len(b):
            continue
        found += greedy_matches(box_iou(care, b), IOU_THRESHOLD)
    return found / max(total, 1)
