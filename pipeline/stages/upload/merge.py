"""Pure decisions of the upload modes: which predicted labels survive `iou_merge`, how annotations combine.

Table-tested in tests/pipeline/test_merge.py; `pipeline.stages.upload` calls these inside its transactions.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.annotation import Annotation, Label, geometry_iou


def base_class_name(name: str) -> str:
    """"car_nn_nn" -> "car": a class renamed for another shape is the same class for merging."""
    while name.endswith("_nn") and len(name) > 3:
        name = name[:-3]
    return name


def iou_merge_keep(existing: Sequence[Label], new: Sequence[Label], threshold: float, img_h: int,
                   img_w: int) -> list[bool]:
    """For each new label: keep it unless an EXISTING label of the same class overlaps it with IoU >= threshold.

    Boxes compare as boxes, masks as masks, a box with a mask as the box filled in (`geometry_iou`). New labels are
    never compared with each other: predictions that overlap each other all stay.
    """
    by_class: dict[str, list[tuple[Label, tuple[float, ...]]]] = {}
    for lab in existing:
        by_class.setdefault(base_class_name(lab.obj_class.name), []).append((lab, lab.geometry.to_bbox().to_xyxy()))
    keep = []
    for lab in new:
        box = lab.geometry.to_bbox().to_xyxy()
        same = by_class.get(base_class_name(lab.obj_class.name), ())
        keep.append(not any(
            _boxes_overlap(box, old_box) and geometry_iou(lab.geometry, old.geometry, img_h, img_w) >= threshold
            for old, old_box in same
        ))
    return keep


def _boxes_overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Disjoint boxes have IoU 0 whatever their shapes: no need to rasterise them."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def merge_annotation(mode: str, current: Annotation | None, predicted: Annotation, threshold: float) -> Annotation:
    """The annotation an item gets under `mode`.

    create: the prediction. append: current + predicted objects. replace: predicted objects, the current image
    tags kept. iou_merge: current + the predicted objects that `iou_merge_keep` keeps.
    """
    if mode == "create" or current is None:
        return predicted
    if mode == "append":
        return current.add_labels(predicted.labels)
    if mode == "replace":
        return current.clone(labels=tuple(predicted.labels))
    if mode == "iou_merge":
        h, w = current.img_size
        keep = iou_merge_keep(current.labels, predicted.labels, threshold, h, w)
        return current.add_labels([lab for lab, k in zip(predicted.labels, keep) if k])
    raise ValueError(f"unknown upload mode {mode!r}")
