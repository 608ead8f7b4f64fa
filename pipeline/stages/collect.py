"""Stage 4, collector: replica outputs -> `Prediction` records, with the `classes` filter applied."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.prediction import Item, Prediction
from workers.messages import BatchResult, ModelOutput

__all__ = ["Collector", "KeypointLayout", "build_prediction", "keypoint_layout"]


@dataclass(frozen=True)
class KeypointLayout:
    """What a pose model's keypoints are: their `names` (K) and the `skeleton` (pairs of keypoint indices)."""

    names: list[str] | None
    skeleton: list[tuple[int, int]]


def keypoint_layout(spec: Any) -> KeypointLayout | None:
    """The keypoint layout of a pose model's spec, None for other models. Adapters record the names per class in
    `arch_kwargs["kpt_names"]` (Ultralytics keeps them so: the first class's are used), the count in
    `arch_kwargs["kpt_shape"]` and optionally `arch_kwargs["skeleton"]`. A 17-keypoint model without names or
    skeleton is read as COCO's person layout (what Ultralytics' pose models are trained on)."""
    from pipeline.annotation.graph import COCO_KEYPOINTS, COCO_SKELETON

    if spec.task_type != "pose":
        return None
    kw = spec.arch_kwargs or {}
    per_class = kw.get("kpt_names")
    names = list(per_class[0]) if isinstance(per_class, list) and per_class and per_class[0] else None
    shape = kw.get("kpt_shape")
    k = len(names) if names else (int(shape[0]) if isinstance(shape, list | tuple) and shape else None)
    skeleton = kw.get("skeleton")
    if k == len(COCO_KEYPOINTS):
        names = names or list(COCO_KEYPOINTS)
        skeleton = COCO_SKELETON if skeleton is None else skeleton
    return KeypointLayout(names, [tuple(e) for e in skeleton or ()])


def build_prediction(item: Item, out: ModelOutput, orig_size: tuple[int, int] | None, class_names: list[str],
                     keep: set[str] | None, keypoints: KeypointLayout | None = None) -> Prediction:
    """One item's `Prediction`. Objects outside `keep` (the `classes` filter) and instance masks that came out
    empty are dropped; a classifier's class probabilities are kept when its top class passes the filter."""
    names = [class_names[i] if 0 <= i < len(class_names) else str(i) for i in out.class_ids.tolist()]
    probs = out.probs
    if probs is not None and keep is not None and len(probs) == len(class_names) and len(probs):
        if class_names[int(np.argmax(probs))] not in keep:  # the top class is filtered out: no tag
            probs = None
    pred = Prediction(boxes=out.boxes, scores=out.scores, class_ids=out.class_ids, classes=names, masks=out.masks,
                      keypoints=out.keypoints, probs=probs, item=item, error=out.error, orig_size=orig_size,
                      obb=out.obb, class_names=list(class_names) if probs is not None else None,
                      keypoint_names=keypoints.names if keypoints is not None and out.keypoints is not None else None,
                      skeleton=keypoints.skeleton if keypoints is not None and out.keypoints is not None else None)
    if not len(pred):
        return pred
    sel = np.ones(len(pred), dtype=bool)
    if keep is not None:
        sel &= np.fromiter((n in keep for n in names), dtype=bool, count=len(names))
    if pred.masks is not None:
        sel &= pred.masks.reshape(len(pred), -1).any(axis=1)
    return pred if sel.all() else pred[sel]


class Collector:
    """Turns each `BatchResult` into predictions and hands them to `sink` (upload, then the reader)."""

    def __init__(self, class_names: Sequence[str], keep: list[str] | None, sink: Callable[[list[Prediction]], None],
                 keypoints: KeypointLayout | None = None):
        self.class_names = list(class_names)
        self.keep = set(keep) if keep is not None else None
        self.sink = sink
        self.keypoints = keypoints

    def __call__(self, items: list[Item], result: BatchResult) -> None:
        by_index = {it.index: it for it in items}
        self.sink([build_prediction(by_index[idx], out, size, self.class_names, self.keep, self.keypoints)
                   for idx, out, size in zip(result.indices, result.outputs, result.orig_sizes)])
