"""Stage 4, collector: replica outputs -> `Prediction` records, with the `classes` filter applied."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.prediction import Prediction
from pipeline.stages.source import Item
from workers.messages import BatchResult, ModelOutput


def build_prediction(item: Item, out: ModelOutput, orig_size: tuple[int, int] | None, class_names: list[str],
                     keep: set[str] | None) -> Prediction:
    """One item's `Prediction`. Objects outside `keep` (the `classes` filter) and instance masks that came out
    empty are dropped."""
    boxes, scores, ids, masks = out.boxes, out.scores, out.class_ids, out.masks
    names = [class_names[i] if 0 <= i < len(class_names) else str(i) for i in ids.tolist()]
    if len(boxes):
        sel = np.ones(len(boxes), dtype=bool)
        if keep is not None:
            sel &= np.fromiter((n in keep for n in names), dtype=bool, count=len(names))
        if masks is not None:
            sel &= masks.reshape(len(masks), -1).any(axis=1)
        if not sel.all():
            boxes, scores, ids = boxes[sel], scores[sel], ids[sel]
            masks = masks[sel] if masks is not None else None
            names = [n for n, k in zip(names, sel) if k]
    return Prediction(
        boxes=boxes,
        scores=scores,
        class_ids=ids,
        classes=names,
        masks=masks,
        source=item.source,
        image_path=item.image_path,
        image_url=item.image_url,
        image=item.image,
        project_id=item.project_id,
        dataset_id=item.dataset_id,
        image_id=item.image_id,
        video_id=item.video_id,
        frame_idx=item.frame_idx,
        error=out.error,
        img_size=orig_size,
        name=item.name,
        dataset=item.dataset,
        index=item.index,
        _blob_path=item.path if item.image_path is None else None,
        _key=item.key,
    )


class Collector:
    """Turns each `BatchResult` into predictions and hands them to `sink` (upload, then the reader)."""

    def __init__(self, class_names: list[str], keep: list[str] | None, sink: Any):
        self.class_names = list(class_names)
        self.keep = set(keep) if keep is not None else None
        self.sink = sink

    def __call__(self, items: list[Item], result: BatchResult) -> None:
        by_index = {it.index: it for it in items}
        preds = []
        for idx, out, size in zip(result.indices, result.outputs, result.orig_sizes):
            preds.append(build_prediction(by_index[idx], out, size, self.class_names, self.keep))
        self.sink(preds)
