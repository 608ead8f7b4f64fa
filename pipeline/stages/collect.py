"""Stage 4, collector: replica outputs -> `Prediction` records, with the `classes` filter applied."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.prediction import Item, Prediction
from workers.messages import BatchResult, ModelOutput

__all__ = ["Collector", "build_prediction"]


def build_prediction(item: Item, out: ModelOutput, orig_size: tuple[int, int] | None, class_names: list[str],
                     keep: set[str] | None) -> Prediction:
    """One item's `Prediction`. Objects outside `keep` (the `classes` filter) and instance masks that came out
    empty are dropped."""
    names = [class_names[i] if 0 <= i < len(class_names) else str(i) for i in out.class_ids.tolist()]
    pred = Prediction(boxes=out.boxes, scores=out.scores, class_ids=out.class_ids, classes=names, masks=out.masks,
                      keypoints=out.keypoints, probs=out.probs, item=item, error=out.error, orig_size=orig_size)
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

    def __init__(self, class_names: list[str], keep: list[str] | None, sink: Callable[[list[Prediction]], None]):
        self.class_names = list(class_names)
        self.keep = set(keep) if keep is not None else None
        self.sink = sink

    def __call__(self, items: list[Item], result: BatchResult) -> None:
        by_index = {it.index: it for it in items}
        self.sink([build_prediction(by_index[idx], out, size, self.class_names, self.keep)
                   for idx, out, size in zip(result.indices, result.outputs, result.orig_sizes)])
