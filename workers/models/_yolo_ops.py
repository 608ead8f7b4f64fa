"""YOLO pre- and post-processing with Ultralytics' own functions, shared by the `ultralytics` and `onnx` adapters.

What Ultralytics' `predict` does, step by step (`ultralytics/engine/predictor.py`, `models/yolo/*/predict.py`):
`check_imgsz(imgsz, stride)` -> `LetterBox(imgsz, auto=rect, stride)` per image (grey 114 padding, centred) ->
uint8 NCHW -> float / 255 -> model -> `non_max_suppression(conf, iou, classes, agnostic, max_det, nc, end2end)` ->
boxes `scale_boxes`'d back, masks by `process_mask` (prototypes x coefficients, upsampled to the input, cropped to
the box; empty masks dropped), keypoints `scale_coords`'d; oriented boxes (obb) by rotated NMS and
`scale_boxes(xywh=True)`. Classification: `classify_transforms` (resize the short
side, centre crop) and the softmax the head returns.

Batching. Ultralytics letterboxes a list of same-shape images to the minimal stride-aligned rectangle (`auto`) but a
list of mixed shapes to the full `imgsz` square, so its results for an image depend on what else is in the list. Here
every image is letterboxed as `predict` letterboxes it alone (`auto=True` for PyTorch and dynamic-shape models), and
the images whose letterboxed shapes agree run as one forward pass: each image's result equals
`YOLO(path).predict(image)`. A fixed-shape export (ONNX) always gets the full `imgsz` input, as in Ultralytics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.exceptions import InvalidArgumentError
from workers.messages import ModelOutput

__all__ = [
    "YOLO_TASKS",
    "spec_img_size",
    "yolo_imgsz",
    "letterbox",
    "group_by_shape",
    "to_batch",
    "classify_batch",
    "check_settings",
    "detections",
    "classifications",
    "kpt_names_per_class",
]

# Ultralytics task -> our task type
YOLO_TASKS = {
    "detect": "detection",
    "segment": "instance_segmentation",
    "pose": "pose",
    "classify": "classification",
    "obb": "oriented_detection",
    "semantic": "semantic_segmentation",
}


def spec_img_size(imgsz: Any) -> tuple[int | None, int | list[int] | None]:
    """(the spec's `img_size`, the model's own `imgsz`) of an Ultralytics input size (int or [h, w]).

    The spec says an int only: the pipeline reads a (h, w) `img_size` as "resize exactly while decoding", which
    is not what Ultralytics does with a rectangular `imgsz` (it letterboxes into it); the adapter keeps that one
    in `arch_kwargs["imgsz"]` and applies it itself.
    """
    if isinstance(imgsz, list | tuple) and len(imgsz) == 2 and all(isinstance(v, int) and v > 0 for v in imgsz):
        return (int(imgsz[0]) if imgsz[0] == imgsz[1] else None), [int(imgsz[0]), int(imgsz[1])]
    if isinstance(imgsz, int) and not isinstance(imgsz, bool) and imgsz > 0:
        return imgsz, imgsz
    return None, None


def yolo_imgsz(img_size: Any, default: Any, stride: int) -> list[int]:
    """`[h, w]` of the letterbox target as `check_imgsz` makes it: `img_size` (None: `default`, the file's own
    size, else 640), rounded up to a multiple of `stride`."""
    from ultralytics.utils.checks import check_imgsz

    size = img_size if img_size is not None else (default if default is not None else 640)
    if isinstance(size, tuple):
        size = list(size)
    return check_imgsz(size, stride=stride, min_dim=2)


def decode_hint(task: str, img_size: Any, own: Any, stride: int, stretch: bool = False) -> tuple:
    """What an Ultralytics model's own resize keeps of an image (`ModelAdapter.decode_hint`), computed without
    Ultralytics: the letterbox into `imgsz` rounded up to the stride ("contain"); a classifier's resize of the
    shorter side to the crop size (a square) or to exactly (h, w); an exact (h, w) `img_size` is resized to while
    decoding ("cover")."""
    if isinstance(img_size, tuple):
        return ("cover", *img_size)
    size = img_size if img_size is not None else (own if own is not None else 640)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    h, w = (max(math.ceil(v / stride) * stride, stride) for v in (h, w))
    if task == "classify":
        return ("fit", h, float("inf")) if h == w else ("cover", h, w)
    return ("cover", h, w) if stretch else ("contain", h, w)


def letterbox(images: Sequence[np.ndarray], imgsz: list[int], stride: int, auto: bool,
              stretch: bool = False) -> list[np.ndarray]:
    """Ultralytics' `LetterBox` applied to each HWC uint8 image alone; returns the padded HWC uint8 arrays.
    `stretch`: resized to exactly `imgsz`, no padding (`scale_fill`, what RT-DETR's predictor does)."""
    from ultralytics.data.augment import LetterBox

    lb = LetterBox(imgsz, auto=auto and not stretch, scale_fill=stretch, stride=stride)
    # LetterBox resizes and pads the three channels alike (pad value 114 on each), so RGB in = RGB out
    return [lb(image=np.ascontiguousarray(img)) for img in images]


def group_by_shape(arrays: Sequence[np.ndarray]) -> list[list[int]]:
    """Indices of `arrays` grouped by shape, in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(tuple(a.shape), []).append(i)
    return list(groups.values())


def to_batch(arrays: Sequence[np.ndarray], device: Any, half: bool):
    """Same-shape HWC uint8 RGB arrays -> (B, 3, H, W) float tensor in [0, 1] on `device` (fp16 when `half`)."""
    import torch

    x = torch.from_numpy(np.stack(arrays)).to(device)
    x = x.permute(0, 3, 1, 2).contiguous()
    return (x.half() if half else x.float()).div_(255)


def classify_batch(images: Sequence[np.ndarray], transforms: Any, device: Any, half: bool):
    """HWC uint8 RGB images -> (B, 3, H, W) through Ultralytics' classification transforms (PIL resize + centre
    crop, ToTensor, Normalize: what `ClassificationPredictor` applies)."""
    import torch
    from PIL import Image

    x = torch.stack([transforms(Image.fromarray(np.ascontiguousarray(img))) for img in images]).to(device)
    return x.half() if half else x.float()


def check_settings(settings: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """conf, iou, max_det, classes (indices or names), the flags: checked and normalised; `InvalidArgumentError`."""
    out = dict(settings)
    for key in ("conf", "iou"):
        value = out.get(key)
        if key == "iou" and value is None:
            out[key] = 0.7  # Ultralytics' predict default
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise InvalidArgumentError(f"setting {key!r} must be a number in [0, 1]; got {value!r}")
    max_det = out.get("max_det")
    if isinstance(max_det, bool) or not isinstance(max_det, int) or max_det < 1:
        raise InvalidArgumentError(f"setting 'max_det' must be a positive integer; got {max_det!r}")
    for key in ("agnostic", "half", "retina_masks"):
        if key in out and not isinstance(out[key], bool):
            raise InvalidArgumentError(f"setting {key!r} must be True or False; got {out[key]!r}")
    if out.get("end2end") is not None and not isinstance(out["end2end"], bool):
        raise InvalidArgumentError(f"setting 'end2end' must be None, True or False; got {out['end2end']!r}")
    out["classes"] = _class_filter(out.get("classes"), classes)
    return out


def _class_filter(value: Any, classes: list[str]) -> list[int] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, int | str) else list(value)
    ids = []
    for item in items:
        if isinstance(item, str) and item in classes:
            ids.append(classes.index(item))
        elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(classes):
            ids.append(item)
        else:
            raise InvalidArgumentError(
                f"setting 'classes' takes class indices (0..{len(classes) - 1}) or names of the model's classes; "
                f"{item!r} is neither"
            )
    return ids


def detections(
    preds: Any,
    in_shape: tuple[int, int],
    sizes: Sequence[tuple[int, int]],
    task: str,
    settings: dict[str, Any],
    nc: int,
    end2end: bool,
    kpt_shape: Sequence[int] | None = None,
) -> list[ModelOutput]:
    """Raw YOLO outputs of one batch -> a `ModelOutput` per image, in the pixels of each image (`sizes`: (h, w)).

    `preds` is what the model returns (a tensor (B, 4 + nc + extra, A), a tuple whose first item is that, or for
    segment models `(det, protos)`); `in_shape` the (h, w) of the batch input. Masks (N, h, w) bool at the image
    size, keypoints (N, K, 3) `x, y, score`.
    """
    from ultralytics.utils import nms

    if task == "semantic":
        return semantics(preds, in_shape, sizes, settings, nc)
    protos = None
    if task == "segment":
        protos = preds[0][1] if isinstance(preds[0], tuple | list) else preds[1]
        preds = preds[0]
    kept = nms.non_max_suppression(
        preds,
        float(settings["conf"]),
        float(settings["iou"]),
        settings.get("classes"),
        bool(settings.get("agnostic")),
        max_det=int(settings["max_det"]),
        nc=0 if task == "detect" else nc,
        end2end=end2end,
        rotated=task == "obb",
        # Ultralytics stops NMS (leaving the batch's remaining images empty) after 2 s + 0.05 s per image; on a busy
        # CPU that silently loses detections, so the budget is wider here (results are otherwise identical).
        max_time_img=2.0,
    )
    out = []
    for i, (pred, size) in enumerate(zip(kept, sizes)):
        proto = protos[i] if protos is not None else None
        out.append(_one_image(pred, in_shape, tuple(size), task, settings, proto, kpt_shape))
    return out


def rtdetr_detections(preds: Any, sizes: Sequence[tuple[int, int]], settings: dict[str, Any]) -> list[ModelOutput]:
    """`RTDETRPredictor.postprocess`: the decoder's top queries (B, Q, 6) `cx, cy, w, h, score, class`, normalised
    to the (stretched) input, so scaled by each image's own size; kept when score > conf (and of `classes`), the
    first `max_det`, in the decoder's order (best first). No NMS, no clipping: as Ultralytics."""
    import torch
    from ultralytics.utils import ops

    if isinstance(preds, tuple | list):
        preds = preds[0]
    out = []
    for pred, (h, w) in zip(preds, sizes):
        bbox, score, label = pred.float().split((4, 1, 1), dim=-1)
        keep = score.squeeze(-1) > float(settings["conf"])
        if settings.get("classes") is not None:
            keep &= (label == torch.tensor(settings["classes"], device=label.device)).any(1)
        kept = torch.cat([ops.xywh2xyxy(bbox), score, label], dim=-1)[keep][: int(settings["max_det"])]
        kept[:, [0, 2]] *= w
        kept[:, [1, 3]] *= h
        out.append(ModelOutput(boxes=kept[:, :4].cpu().numpy().astype(np.float32),
                               scores=kept[:, 4].cpu().numpy().astype(np.float32),
                               class_ids=kept[:, 5].cpu().numpy().astype(np.int64)))
    return out


def _one_image(pred, in_shape, size, task, settings, proto, kpt_shape) -> ModelOutput:
    """One image's NMS output (N, 6 + extra) -> `ModelOutput`, as the task's predictor builds its `Results`."""
    from ultralytics.utils import ops

    masks = keypoints = None
    if task == "obb":
        return _oriented(pred, in_shape, size)
    if task == "segment":
        pred, masks = _masks(pred, in_shape, size, proto, bool(settings.get("retina_masks")))
    else:
        pred[:, :4] = ops.scale_boxes(in_shape, pred[:, :4], size)
    if task == "pose":
        kpts = ops.scale_coords(in_shape, pred[:, 6:].view(pred.shape[0], *kpt_shape), size).float().cpu().numpy()
        if kpts.shape[-1] == 2:  # a model without keypoint confidences: each keypoint counts as visible
            kpts = np.concatenate([kpts, np.ones((*kpts.shape[:2], 1), np.float32)], -1)
        keypoints = kpts.astype(np.float32)
    return ModelOutput(
        boxes=pred[:, :4].float().cpu().numpy().astype(np.float32),
        scores=pred[:, 4].float().cpu().numpy().astype(np.float32),
        class_ids=pred[:, 5].cpu().numpy().astype(np.int64),
        masks=masks,
        keypoints=keypoints,
    )


def _oriented(pred, in_shape, size) -> ModelOutput:
    """`OBBPredictor.construct_result`: NMS rows (N, 7) `cx, cy, w, h, conf, class, angle` at the input -> oriented
    boxes `cx, cy, w, h, angle` in image pixels (`scale_boxes(xywh=True)`: the letterbox undone, not clipped), and
    their enclosing axis-aligned boxes as `Results.obb.xyxy` computes them (from the four corners)."""
    import torch
    from ultralytics.utils import ops

    rboxes = torch.cat([pred[:, :4], pred[:, -1:]], dim=-1)
    rboxes[:, :4] = ops.scale_boxes(in_shape, rboxes[:, :4], size, xywh=True)
    corners = ops.xywhr2xyxyxyxy(rboxes)
    boxes = torch.cat([corners.amin(1), corners.amax(1)], dim=-1) if len(rboxes) else torch.zeros((0, 4))
    return ModelOutput(
        boxes=boxes.float().cpu().numpy().astype(np.float32),
        scores=pred[:, 4].float().cpu().numpy().astype(np.float32),
        class_ids=pred[:, 5].cpu().numpy().astype(np.int64),
        obb=rboxes.float().cpu().numpy().astype(np.float32),
    )


def _masks(pred, in_shape, size, proto, retina: bool):
    """`SegmentationPredictor.construct_result`: masks from prototypes, empty ones dropped, then brought to the image
    size (`scale_masks`, the letterbox padding cut off, bilinear, > 0.5) unless `retina` built them there."""
    from ultralytics.utils import ops

    h, w = size
    if pred.shape[0] == 0:
        return pred, np.zeros((0, h, w), dtype=bool)
    if retina:
        pred[:, :4] = ops.scale_boxes(in_shape, pred[:, :4], size)
        masks = ops.process_mask_native(proto, pred[:, 6:], pred[:, :4], size)
    else:
        masks = ops.process_mask(proto, pred[:, 6:], pred[:, :4], in_shape, upsample=True)
        pred[:, :4] = ops.scale_boxes(in_shape, pred[:, :4], size)
    keep = masks.amax((-2, -1)) > 0  # Ultralytics keeps only predictions with a mask
    if not keep.all():
        pred, masks = pred[keep], masks[keep]
    if not retina:
        masks = _scale_masks(masks, size)  # also when every mask was dropped: (0, H, W)
    return pred, masks.bool().cpu().numpy()


def _scale_masks(masks, size):
    """(N, h, w) 0/1 masks at the letterboxed input -> (N, H, W) bool at the image size (`scale_masks`, > 0.5), in
    chunks: one float copy of N full-size masks would take N x H x W x 4 bytes at once."""
    import torch
    from ultralytics.utils import ops

    h, w = size
    out = torch.empty((masks.shape[0], h, w), dtype=torch.bool, device=masks.device)
    step = max(1, 16_000_000 // max(h * w, 1))
    for i in range(0, masks.shape[0], step):
        out[i : i + step] = ops.scale_masks(masks[None, i : i + step].float(), size)[0] > 0.5
    return out


def semantics(preds: Any, in_shape: tuple[int, int], sizes: Sequence[tuple[int, int]], settings: dict[str, Any],
              nc: int) -> list[ModelOutput]:
    """`SemanticSegmentationPredictor.postprocess`: each image's logits (nc, h, w) upsampled to the input, the
    letterbox padding cut off and scaled to the image (`scale_masks`, bilinear), the class map their argmax (one
    class: logit > 0). Then one bitmap object per class present, as the torchvision adapter gives a semantic model's
    classes: scored by the mean, over its pixels, of the class's probability (softmax; one class: sigmoid); classes
    under `conf` or outside `classes` dropped (Ultralytics marks the latter's pixels "ignore"), best `max_det` kept."""
    import torch
    import torch.nn.functional as F
    from ultralytics.utils import ops

    if isinstance(preds, tuple | list):
        preds = preds[0]
    keep = None if settings.get("classes") is None else set(settings["classes"])
    out = []
    for pred, size in zip(preds, sizes):
        logits = pred[None].float()
        if tuple(logits.shape[2:]) != tuple(in_shape):
            logits = F.interpolate(logits, tuple(in_shape), mode="bilinear", align_corners=False)
        logits = ops.scale_masks(logits, tuple(size))[0]  # (nc, H, W)
        if logits.shape[0] > 1:  # as Ultralytics reduces it on each device
            best, label = logits.max(0) if logits.device.type == "cpu" else (logits.amax(0), logits.argmax(0))
            prob = torch.exp(best - torch.logsumexp(logits, 0))  # the softmax probability of the chosen class
        else:
            label = torch.zeros(logits.shape[1:], dtype=torch.int64, device=logits.device)
            prob = torch.sigmoid(logits[0])
            prob = torch.where(logits[0] > 0, prob, torch.zeros_like(prob))  # the class where its logit is > 0
        out.append(_class_objects(label, prob, nc, keep, settings, tuple(size)))
    return out


def _class_objects(label, prob, nc: int, keep: set[int] | None, settings: dict[str, Any],
                   size: tuple[int, int]) -> ModelOutput:
    import torch

    boxes, scores, ids, masks = [], [], [], []
    present = torch.unique(label).tolist() if nc > 1 else ([0] if bool((prob > 0).any()) else [])
    for c in present:
        if keep is not None and c not in keep:
            continue
        mask = label == c if nc > 1 else prob > 0
        score = float(prob[mask].mean())
        if score < float(settings["conf"]):
            continue
        ys, xs = torch.nonzero(mask, as_tuple=True)
        boxes.append([float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1])
        scores.append(score)
        ids.append(int(c))
        masks.append(mask.cpu().numpy())
    order = np.argsort(-np.asarray(scores, dtype=np.float32), kind="stable")[: int(settings["max_det"])]
    if not len(order):
        return ModelOutput.empty(with_masks=True, size=size)
    return ModelOutput(boxes=np.asarray(boxes, np.float32)[order], scores=np.asarray(scores, np.float32)[order],
                       class_ids=np.asarray(ids, np.int64)[order], masks=np.stack(masks)[order])


def classifications(probs: Any) -> list[ModelOutput]:
    """(B, C) class probabilities -> a `ModelOutput` per image with `probs` (C,) and no boxes."""
    arr = probs.float().cpu().numpy() if hasattr(probs, "cpu") else np.asarray(probs, dtype=np.float32)
    out = []
    for row in arr:
        o = ModelOutput.empty()
        o.probs = row.astype(np.float32)
        out.append(o)
    return out


def kpt_names_per_class(value: Any) -> list[list[str]] | None:
    """Keypoint names per class, from a model's `kpt_names` ({class: [names]}, set by Ultralytics' pose trainer and
    written into its exports' metadata), as a list indexed by class; None when absent."""
    if isinstance(value, dict) and sorted(value) == list(range(len(value))):
        value = [value[i] for i in range(len(value))]
    if isinstance(value, list | tuple) and value and all(isinstance(v, list | tuple) for v in value):
        return [[str(n) for n in v] for v in value]
    return None
