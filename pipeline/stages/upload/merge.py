"""Pure decisions of the upload modes: which predicted labels survive `iou_merge`, how annotations combine, for
images (`merge_annotation`) and video annotations (`merge_video_annotation` on a whole `VideoAnnotation`: the
rules; `kept_on_frames` on the stored figures of the predicted frames only: the same rules, what the upload uses,
so that a write never reads the rest of the video's annotation).

Table-tested in tests/pipeline/test_merge.py and tests/pipeline/test_video_upload.py; the upload targets call
these inside their transactions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from pipeline.annotation import Annotation, Label, geometry_iou
from pipeline.exceptions import FormatError

__all__ = ["MODES", "base_class_name", "iou_merge_keep", "kept_on_frames", "labels_to_video", "merge_annotation",
           "merge_tags", "merge_video_annotation", "stored_labels"]

T = TypeVar("T")


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


def merge_tags(mode: str, current: Sequence[T], predicted: Sequence[T], name: Callable[[T], str]) -> list[T]:
    """The image tags an item gets under `mode` (an image holds a tag of a name once; `name` reads it).

    create: the predicted. replace: the current ones, those of a predicted name replaced by the prediction's.
    append / iou_merge: the current ones, plus the predicted ones of names the image does not have yet (an existing
    tag of the same name is kept: a classifier's earlier or hand-made answer is not overwritten).
    """
    if mode == "create":
        return list(predicted)
    if mode == "replace":
        new = {name(t) for t in predicted}
        return [t for t in current if name(t) not in new] + list(predicted)
    if mode in ("append", "iou_merge"):
        have = {name(t) for t in current}
        return list(current) + [t for t in predicted if name(t) not in have]
    raise ValueError(f"unknown upload mode {mode!r}")


def merge_annotation(mode: str, current: Annotation | None, predicted: Annotation, threshold: float) -> Annotation:
    """The annotation an item gets under `mode`.

    create: the prediction. append: current + predicted objects. replace: predicted objects, the current image
    tags kept. iou_merge: current + the predicted objects that `iou_merge_keep` keeps. Predicted image tags (a
    classifier's class) combine with the current ones as `merge_tags` says.
    """
    if mode == "create" or current is None:
        return predicted
    tags = tuple(merge_tags(mode, current.img_tags, predicted.img_tags, lambda t: t.name))
    if mode == "append":
        return current.add_labels(predicted.labels).clone(img_tags=tags)
    if mode == "replace":
        return current.clone(labels=tuple(predicted.labels), img_tags=tags)
    if mode == "iou_merge":
        h, w = current.img_size
        keep = iou_merge_keep(current.labels, predicted.labels, threshold, h, w)
        return current.add_labels([lab for lab, k in zip(predicted.labels, keep) if k]).clone(img_tags=tags)
    raise ValueError(f"unknown upload mode {mode!r}")


# --- videos ---------------------------------------------------------------------------------------------------

MODES = ("create", "append", "replace", "iou_merge")


def labels_to_video(frame: int, labels: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """(objects, figures) for the predicted `labels` of `frame`: one `VideoObject` per label, its `confidence`
    tag (if the label has one) moved onto the object with `frame_range (frame, frame)`, one `VideoFigure` each."""
    from pipeline.annotation import VideoFigure, VideoObject, VideoTag

    objects, figures = [], []
    for lab in labels:
        tags = tuple(VideoTag(t.meta, t.value, (frame, frame)) for t in lab.tags)
        obj = VideoObject(lab.obj_class, tags)
        objects.append(obj)
        figures.append(VideoFigure(obj, lab.geometry, frame))
    return objects, figures


def merge_video_annotation(mode: str, current: Any, predicted: Mapping[int, Sequence[Any]],
                           threshold: float = 0.9) -> Any:
    """The video annotation after writing `predicted` = {frame index: predicted `Label`s} into `current` under
    `mode`, frame by frame, leaving every other frame as it was.

    create / append: the predicted objects are added. replace: the figures already on a predicted frame are
    removed first, and so is every object left with no figure by that (objects that never had figures stay).
    iou_merge: like append, minus each predicted label that `iou_merge_keep` drops against the figures already on
    its frame (same class, IoU >= threshold).
    """
    from pipeline.annotation import Label

    if mode not in MODES:
        raise ValueError(f"unknown upload mode {mode!r}")
    ann = current
    if mode == "replace" and predicted:
        frames = set(predicted)
        had = {f.video_object.key for f in ann.figures}
        kept_frames = tuple(fr for fr in ann.frames if fr.index not in frames)
        still = {f.video_object.key for fr in kept_frames for f in fr.figures}
        objects = tuple(o for o in ann.objects if o.key in still or o.key not in had)
        ann = ann.clone(frames=kept_frames, objects=objects)
    h, w = ann.img_size
    new_objects, new_figures = [], []
    for frame in sorted(predicted):
        labels = list(predicted[frame])
        if mode == "iou_merge" and labels:
            existing = [Label(f.geometry, f.video_object.obj_class) for f in ann.figures_on_frame(frame)]
            keep = iou_merge_keep(existing, labels, threshold, h, w)
            labels = [lab for lab, k in zip(labels, keep) if k]
        objects, figures = labels_to_video(frame, labels)
        new_objects += objects
        new_figures += figures
    if not new_objects:
        return ann
    return ann.add_objects(new_objects).add_figures(new_figures)


def stored_labels(rows: Mapping[int, Sequence[tuple[str | None, Mapping[str, Any]]]]) -> dict[int, list[Any]]:
    """{frame: its stored figures as `Label`s (geometry and class name)} from {frame: [(classTitle, figure JSON)]}
    (`pipeline.platform.video_rows.figures_on_frames`): only the figures given are decoded, which is what
    `iou_merge` compares the predictions of those frames with."""
    from pipeline.annotation import Label, ObjClass, geometry_from_json

    classes: dict[str, Any] = {}
    out: dict[int, list[Any]] = {}
    for index, figs in rows.items():
        for j, (title, fig) in enumerate(figs):
            where = f"video annotation: frame {index} figure {j}"
            if title is None:
                raise FormatError(f"{where}: objectKey {fig.get('objectKey')!r} is not one of the annotation's objects")
            geometry = geometry_from_json(str(fig.get("geometryType")), fig.get("geometry") or {}, where)
            cls = classes.setdefault(title, ObjClass(title, "any_shape"))
            out.setdefault(index, []).append(Label(geometry, cls))
    return out


def kept_on_frames(mode: str, existing: Mapping[int, Sequence[Any]], predicted: Mapping[int, Sequence[Any]],
                   img_size: tuple[int, int], threshold: float = 0.9) -> dict[int, list[int]]:
    """Per predicted frame, the indices of its predicted `Label`s that are written under `mode`: all of them
    (create, append, replace: `replace` removes the frame's stored figures first), or those `iou_merge_keep`
    keeps against the `existing` figures of the same frame ({frame: stored `Label`s}, iou_merge). The rules of
    `merge_video_annotation`, decided per frame on what is stored there only."""
    if mode not in MODES:
        raise ValueError(f"unknown upload mode {mode!r}")
    out = {}
    for frame in sorted(predicted):
        labels = list(predicted[frame])
        keep = [True] * len(labels)
        if mode == "iou_merge" and labels:
            keep = iou_merge_keep(existing.get(frame, []), labels, threshold, *img_size)
        out[frame] = [i for i, k in enumerate(keep) if k]
    return out
