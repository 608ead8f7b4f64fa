"""Detection / instance-segmentation mean average precision at one IoU threshold (numpy only).

Per class: detections from all images sorted by score (highest first); each one is matched greedily to the unmatched
ground truth of its image and class with the highest IoU, if that IoU >= the threshold (true positive), else it is a
false positive. AP is the area under the all-point interpolated precision-recall curve (VOC 2010+ / COCO style, with
the precision envelope); mAP averages AP over the classes that have ground truth.

    predictions:   [{"boxes": (N, 4) xyxy, "scores": (N,), "labels": (N,) int, "masks": (N, H, W) bool}, ...]
    ground_truths: [{"boxes": (M, 4) xyxy, "labels": (M,) int, "masks": (M, H, W) bool}, ...]   (one per image)
"""

from __future__ import annotations

import numpy as np

__all__ = ["box_iou", "mask_iou", "greedy_matches", "average_precision", "mean_average_precision"]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy boxes -> (N, M) IoU."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a, area_b = (a[:, 2:] - a[:, :2]).prod(axis=1), (b[:, 2:] - b[:, :2]).prod(axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def greedy_matches(iou: np.ndarray, threshold: float) -> int:
    """How many pairs of an (N, M) IoU matrix match one to one, greedily by highest IoU, at IoU >= `threshold`.
    `iou` is overwritten."""
    found = 0
    for _ in range(min(iou.shape)):
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        if iou[i, j] < threshold:
            break
        found += 1
        iou[i, :] = -1
        iou[:, j] = -1
    return found


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, H, W) x (M, H, W) bool masks -> (N, M) IoU."""
    a = np.asarray(a, bool).reshape(len(a), -1).astype(np.float32)
    b = np.asarray(b, bool).reshape(len(b), -1).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return inter / np.maximum(union, 1e-12)


def average_precision(scores: np.ndarray, is_tp: np.ndarray, num_gt: int) -> float:
    """All-point interpolated AP of detections (`scores`, `is_tp` flags) against `num_gt` ground truths."""
    if num_gt == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    tp = np.asarray(is_tp, bool)[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
    recall = np.concatenate([[0.0], ctp / num_gt, [1.0]])
    precision = np.concatenate([[1.0], ctp / np.maximum(ctp + cfp, 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # precision envelope
    return float(np.sum(np.diff(recall) * precision[1:]))


def mean_average_precision(
    predictions: list[dict], ground_truths: list[dict], iou_threshold: float = 0.5, iou_type: str = "box"
) -> dict:
    """{"map": mean AP over classes with ground truth, "per_class": {label: AP}} (`iou_type` "box" or "mask")."""
    key, iou_fn = ("boxes", box_iou) if iou_type == "box" else ("masks", mask_iou)
    labels = sorted({int(x) for g in ground_truths for x in np.asarray(g["labels"]).ravel()})
    per_class: dict[int, float] = {}
    for c in labels:
        scores, flags, num_gt = [], [], 0
        for pred, gt in zip(predictions, ground_truths):
            gsel = np.asarray(gt["labels"]).ravel() == c
            psel = np.asarray(pred["labels"]).ravel() == c
            num_gt += int(gsel.sum())
            if not psel.any():
                continue
            ps = np.asarray(pred["scores"], np.float64).ravel()[psel]
            order = np.argsort(-ps, kind="stable")
            ious = iou_fn(np.asarray(pred[key])[psel][order], np.asarray(gt[key])[gsel]) if gsel.any() else None
            taken = np.zeros(int(gsel.sum()), bool)
            for i in range(len(order)):
                hit = False
                if ious is not None:
                    cand = np.where(taken, -1.0, ious[i])
                    j = int(np.argmax(cand))
                    if cand[j] >= iou_threshold:
                        taken[j], hit = True, True
                scores.append(ps[order[i]])
                flags.append(hit)
        per_class[c] = average_precision(np.asarray(scores), np.asarray(flags, bool), num_gt)
    return {"map": float(np.mean(list(per_class.values()))) if per_class else float("nan"), "per_class": per_class}
