"""Tiled (sliced) inference for large images: SAHI-style windows, tile outputs shifted back and merged.

    check_tiling({"tile": 640, "overlap": 0.2, "merge": "nmm"}, task_type)   # before any work
    dets = predict_tiled(image, predict, tiling, batch_size=16)             # predict(list of views) -> outputs

* `tile_grid(h, w, tile, overlap)`: windows `(y0, x0, y1, x1)` of `tile` pixels, stepping `tile - int(tile *
  overlap)`, row by row; the last row and column are shifted back to end at the border, so every window is a full
  tile (SAHI's `get_slice_bboxes`). An image side shorter than a tile gets one window of that side.
* Tiles are views of the one decoded array (`image[y0:y1, x0:x1]`, no copy); `iter_tile_batches` yields them
  `batch_size` at a time, so a run holds one batch of tiles in the model at once, never all of them.
* `shift_back` moves a tile's boxes into image pixels and cuts each mask to its box (`MaskCrop`): a mask costs
  its box's area, not the image's. `paste_masks` makes the (N, H, W) masks of `ModelOutput` when the image is small
  enough for that (N * H * W bytes); a Supervisely bitmap figure is a crop with an origin anyway.
* `merge`: `"nms"` is class-aware `torchvision.ops.batched_nms` (IoU); `"nmm"` is SAHI's greedy non-maximum
  merging (`GreedyNMMPostprocess`, SAHI's default for sliced prediction, with its defaults IOS 0.5): boxes in
  score order, each unmerged box takes every later one with metric >= threshold as candidates, then merges them
  in score order while the growing merged box still matches (> threshold): box = union, score = max, class = the
  higher-scored one's, mask = union. The optional full-image pass's detections are merged with the tiles' ones
  (SAHI's `perform_standard_pred`), which keeps objects larger than a tile whole.

Memory for an H x W image with `batch_size` tiles of T x T per step: the decoded image (H * W * 3 bytes: 1.2 GB at
20000 x 20000), plus one batch in the model (`batch_size` tiles copied contiguous, T * T * 3 bytes each, and the
model's own activations for that batch), plus the detections so far (boxes, and mask crops of their boxes' area).
The window list is `ceil((H - T) / step + 1) * ceil((W - T) / step + 1)` tuples (1,521 at 20000 x 20000, T 640,
overlap 0.2). Nothing scales with H * W except the image itself.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.exceptions import InvalidArgumentError

__all__ = [
    "DEFAULT_TILING",
    "run_tiled",
    "MIN_TILE",
    "Detections",
    "MaskCrop",
    "check_tiling",
    "concat",
    "iter_tile_batches",
    "merge",
    "paste_masks",
    "predict_tiled",
    "shift_back",
    "tile_grid",
]

MIN_TILE = 32
MAX_OVERLAP = 0.9
TILED_TASKS = ("detection", "instance_segmentation", "oriented_detection")
# merge "nmm" with IOS 0.5 and class-aware: SAHI's defaults for sliced prediction. A box cut by a tile border lies
# inside the object's whole box (IOS 1) but overlaps it little (IoU ~ the visible fraction), so IoU-based NMS keeps
# such halves as extra objects (on benchmarks/tile_eval.py: 168 detections with nms, 136 with nmm, for 60 shapes at
# the same recall). merge_iou None: 0.5; merge_metric None: IOU for nms (all batched_nms computes), IOS for nmm.
DEFAULT_TILING: dict[str, Any] = {"tile": 640, "overlap": 0.2, "merge": "nmm", "merge_iou": None,
                                  "merge_metric": None, "full_image": False, "class_agnostic": False}


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _tile_hw(tile: Any) -> tuple[int, int]:
    """`tile` as (height, width): an int >= 32, or a pair of them."""
    pair = tuple(tile) if isinstance(tile, list | tuple) else (tile, tile)
    if len(pair) != 2 or not all(_is_int(v) for v in pair):
        raise InvalidArgumentError(f"tiling['tile'] must be an int (pixels) or a (height, width) pair of ints; "
                                   f"got {tile!r}")
    if min(pair) < MIN_TILE:
        raise InvalidArgumentError(f"tiling['tile'] must be at least {MIN_TILE} px; got {tile!r} (a tile that "
                                   "small holds no object a detector can see)")
    return int(pair[0]), int(pair[1])


def _check_overlap(overlap: Any) -> float:
    if isinstance(overlap, bool) or not isinstance(overlap, int | float) or not math.isfinite(overlap) \
            or not 0.0 <= overlap < MAX_OVERLAP:
        raise InvalidArgumentError(f"tiling['overlap'] must be a number in [0, {MAX_OVERLAP}) (the fraction of a "
                                   f"tile its neighbour overlaps); got {overlap!r}")
    return float(overlap)


def check_tiling(tiling: Any, task_type: str | None = None) -> dict[str, Any] | None:
    """`tiling` checked before any work: None stays None (no tiling), True means the defaults, a dict gets every
    key of `DEFAULT_TILING` filled in. `InvalidArgumentError` for an unknown key (did-you-mean), a tile under
    32 px, an overlap outside [0, 0.9), an unknown merge method or metric, IOS with nms (batched_nms computes IoU
    only), a threshold outside (0, 1], and a model task that tiles cannot serve."""
    if tiling is None or tiling is False:
        return None
    if tiling is True:
        tiling = {}
    if not isinstance(tiling, dict):
        raise InvalidArgumentError(f"tiling must be a dict (keys {', '.join(DEFAULT_TILING)}) or True; "
                                   f"got {type(tiling).__name__}")
    for key in tiling:
        if key not in DEFAULT_TILING:
            close = difflib.get_close_matches(str(key), list(DEFAULT_TILING), n=1)
            raise InvalidArgumentError(f"unknown tiling key {key!r}" + (f" (did you mean {close[0]!r}?)" if close
                                       else "") + f"; the keys are {', '.join(DEFAULT_TILING)}")
    out = {k: DEFAULT_TILING[k] if tiling.get(k) is None else tiling[k] for k in DEFAULT_TILING}
    if task_type == "oriented_detection":
        if tiling.get("merge") not in (None, "nms"):
            raise InvalidArgumentError(
                f"tiling['merge'] {tiling['merge']!r} merges axis-aligned boxes; an oriented-box model's tiles merge "
                "with rotated NMS: leave merge unset or use 'nms'")
        out["merge"] = "nms"
    out["tile"] = _tile_hw(out["tile"])
    out["overlap"] = _check_overlap(out["overlap"])
    method, metric = out["merge"], out["merge_metric"]
    if method not in ("nms", "nmm"):
        raise InvalidArgumentError(f"tiling['merge'] must be 'nms' or 'nmm'; got {method!r}")
    metric = metric or ("IOU" if method == "nms" else "IOS")
    if metric not in ("IOU", "IOS"):
        raise InvalidArgumentError(f"tiling['merge_metric'] must be 'IOU' or 'IOS'; got {metric!r}")
    if method == "nms" and metric != "IOU":
        raise InvalidArgumentError("tiling['merge_metric'] 'IOS' needs merge='nmm' (nms is torchvision's "
                                   "batched_nms, which measures IoU)")
    out["merge_metric"] = metric
    thr = 0.5 if out["merge_iou"] is None else out["merge_iou"]
    if isinstance(thr, bool) or not isinstance(thr, int | float) or not 0.0 < thr <= 1.0:
        raise InvalidArgumentError(f"tiling['merge_iou'] must be a number in (0, 1]; got {thr!r}")
    out["merge_iou"] = float(thr)
    for key in ("full_image", "class_agnostic"):
        if not isinstance(out[key], bool):
            raise InvalidArgumentError(f"tiling[{key!r}] must be True or False; got {out[key]!r}")
    if task_type is not None and task_type not in TILED_TASKS:
        raise InvalidArgumentError(f"tiling works with detection, instance-segmentation and oriented-box models; "
                                   f"this model's task is {task_type!r} (its outputs do not merge across tiles)")
    return out


def _starts(length: int, tile: int, step: int) -> list[int]:
    """Window starts along one axis: 0, step, 2 step, ... and a last one ending at `length`."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def tile_grid(h: int, w: int, tile: int | tuple[int, int], overlap: float) -> list[tuple[int, int, int, int]]:
    """Windows `(y0, x0, y1, x1)` (pixels, end exclusive) covering an `h` x `w` image, row by row (see the module
    doc). Raises `InvalidArgumentError` for a tile under 32 px or an overlap outside [0, 0.9)."""
    th, tw = _tile_hw(tile)
    overlap = _check_overlap(overlap)
    if not (_is_int(h) and _is_int(w)) or h < 1 or w < 1:
        raise InvalidArgumentError(f"an image of {h} x {w} pixels cannot be tiled")
    ys = _starts(h, th, th - int(th * overlap))
    xs = _starts(w, tw, tw - int(tw * overlap))
    return [(y, x, min(y + th, h), min(x + tw, w)) for y in ys for x in xs]


def iter_tile_batches(image: np.ndarray, tile: int | tuple[int, int], overlap: float, batch_size: int,
                      ) -> Iterator[list[tuple[tuple[int, int, int, int], np.ndarray]]]:
    """Batches of `(window, view)`: each view is `image[y0:y1, x0:x1]`, a view of `image` (HWC), never a copy."""
    if not _is_int(batch_size) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be an int >= 1; got {batch_size!r}")
    batch = []
    for win in tile_grid(image.shape[0], image.shape[1], tile, overlap):
        y0, x0, y1, x1 = win
        batch.append((win, image[y0:y1, x0:x1]))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class MaskCrop:
    """One object's mask as the crop of its box: `mask` (h, w) bool whose pixel (0, 0) is image pixel (y0, x0)."""

    y0: int
    x0: int
    mask: np.ndarray


@dataclass
class Detections:
    """Detections in image pixels. boxes (N, 4) float32 xyxy; scores (N,) float32; class_ids (N,) int64; masks
    one `MaskCrop` each, or None for a box model; groups[i] lists the input indices merged into output i (by
    `merge`; empty otherwise); obb (N, 5) `cx, cy, w, h, angle` of an oriented-box model, else None."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    masks: list[MaskCrop] | None = None
    groups: list[list[int]] = field(default_factory=list)
    obb: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls, with_masks: bool = False) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                   [] if with_masks else None)


def _crop(mask: np.ndarray, box: np.ndarray, dy: int, dx: int) -> MaskCrop:
    """A tile's (th, tw) mask cut to `box` (tile pixels, widened to whole pixels), placed at image offset."""
    th, tw = mask.shape
    x0, y0 = max(0, int(math.floor(box[0]))), max(0, int(math.floor(box[1])))
    x1, y1 = min(tw, max(x0, int(math.ceil(box[2])))), min(th, max(y0, int(math.ceil(box[3]))))
    return MaskCrop(y0 + dy, x0 + dx, np.ascontiguousarray(mask[y0:y1, x0:x1]))


def shift_back(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, masks: np.ndarray | None,
               window: tuple[int, int, int, int], obb: np.ndarray | None = None) -> Detections:
    """One tile's outputs (boxes (N, 4) xyxy in tile pixels, masks (N, th, tw) bool or None, oriented boxes (N, 5)
    or None) in image pixels: boxes and oriented boxes' centres moved by the window's origin, masks cut to their
    boxes (`MaskCrop`)."""
    y0, x0 = int(window[0]), int(window[1])
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    crops = None if masks is None else [_crop(m, box, y0, x0) for m, box in zip(masks, b)]
    moved = None if obb is None else np.asarray(obb, np.float32).reshape(-1, 5) + np.array([x0, y0, 0, 0, 0],
                                                                                          np.float32)
    return Detections(b + np.array([x0, y0, x0, y0], np.float32), np.asarray(scores, np.float32).reshape(-1),
                      np.asarray(class_ids, np.int64).reshape(-1), crops, obb=moved)


def concat(parts: Sequence[Detections]) -> Detections:
    """The detections of several tiles (and the full-image pass) as one `Detections`."""
    if not parts:
        return Detections.empty()
    with_masks = all(p.masks is not None for p in parts)
    with_obb = all(p.obb is not None for p in parts)
    return Detections(
        np.concatenate([p.boxes for p in parts]).astype(np.float32).reshape(-1, 4),
        np.concatenate([p.scores for p in parts]).astype(np.float32),
        np.concatenate([p.class_ids for p in parts]).astype(np.int64),
        [m for p in parts for m in p.masks] if with_masks else None,  # type: ignore[union-attr]
        obb=np.concatenate([p.obb for p in parts]).astype(np.float32).reshape(-1, 5) if with_obb else None,
    )


def _areas(b: np.ndarray) -> np.ndarray:
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def _metric(a: np.ndarray, b: np.ndarray, kind: str) -> np.ndarray:
    """IoU or IoS (intersection over the smaller area) of box rows a[k] and b[k]; 0 where undefined."""
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    aa, ab = _areas(a), _areas(b)
    den = aa + ab - inter if kind == "IOU" else np.minimum(aa, ab)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, inter / np.where(den > 0, den, 1), 0.0)


def _overlapping_pairs(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) of boxes whose interiors intersect: a sweep over x, so the cost follows the number of
    overlaps, not N^2 (tens of thousands of small boxes of a huge image)."""
    order = np.argsort(b[:, 0], kind="stable")
    xs = b[order, 0]
    ii, jj = [], []
    for r, i in enumerate(order):
        stop = np.searchsorted(xs, b[i, 2], side="left")
        cand = order[r + 1:stop]
        if len(cand):
            cand = cand[(b[cand, 1] < b[i, 3]) & (b[cand, 3] > b[i, 1]) & (b[cand, 2] > b[i, 0])]
            ii.append(np.full(len(cand), i))
            jj.append(cand)
    if not ii:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(ii).astype(np.int64), np.concatenate(jj).astype(np.int64)


def _greedy_nmm(b: np.ndarray, scores: np.ndarray, groups_of: np.ndarray, metric: str,
                thr: float) -> list[tuple[int, list[int]]]:
    """SAHI's greedy NMM candidate lists: (keeper, [candidates in score order]) in score order, boxes of
    different `groups_of` never matched. Ties in score break by x1, y1, x2, y2 ascending (SAHI's lexsort)."""
    order = np.lexsort((b[:, 3], b[:, 2], b[:, 1], b[:, 0], -scores))
    rank = np.empty(len(b), np.int64)
    rank[order] = np.arange(len(b))
    i, j = _overlapping_pairs(b)
    same = groups_of[i] == groups_of[j]
    i, j = i[same], j[same]
    m = _metric(b[i], b[j], metric)
    hit = m >= thr
    neighbours: dict[int, list[int]] = {}
    for a, c in zip(np.concatenate([i[hit], j[hit]]).tolist(), np.concatenate([j[hit], i[hit]]).tolist()):
        neighbours.setdefault(a, []).append(c)
    taken = np.zeros(len(b), bool)
    out = []
    for k in order.tolist():
        if taken[k]:
            continue
        later = [c for c in neighbours.get(k, ()) if rank[c] > rank[k] and not taken[c]]
        later.sort(key=lambda c: rank[c])
        taken[later] = True
        out.append((k, later))
    return out


def _merge_pair(box: np.ndarray, score: float, cls: int, mask: MaskCrop | None, b2: np.ndarray, s2: float,
                c2: int, m2: MaskCrop | None) -> tuple[np.ndarray, float, int, MaskCrop | None]:
    """SAHI's `merge_object_prediction_pair`: union box, max score, the higher-scored class, union mask."""
    union = np.concatenate([np.minimum(box[:2], b2[:2]), np.maximum(box[2:], b2[2:])])
    merged = None
    if mask is not None and m2 is not None:
        y0, x0 = min(mask.y0, m2.y0), min(mask.x0, m2.x0)
        y1 = max(mask.y0 + mask.mask.shape[0], m2.y0 + m2.mask.shape[0])
        x1 = max(mask.x0 + mask.mask.shape[1], m2.x0 + m2.mask.shape[1])
        canvas = np.zeros((y1 - y0, x1 - x0), bool)
        for m in (mask, m2):
            canvas[m.y0 - y0:m.y0 - y0 + m.mask.shape[0], m.x0 - x0:m.x0 - x0 + m.mask.shape[1]] |= m.mask
        merged = MaskCrop(y0, x0, canvas)
    return union, max(score, s2), (cls if score > s2 else c2), merged


def _nmm(d: Detections, metric: str, thr: float, groups_of: np.ndarray) -> Detections:
    boxes, scores, ids, masks = d.boxes, d.scores, d.class_ids, d.masks
    out_b, out_s, out_c, out_m, groups = [], [], [], [], []
    for keep, cands in _greedy_nmm(boxes, scores, groups_of, metric, thr):
        box, score, cls = boxes[keep].copy(), float(scores[keep]), int(ids[keep])
        mask = masks[keep] if masks is not None else None
        group = [keep]
        for c in cands:
            # SAHI re-checks each candidate against the merged box so far (has_match: strictly above)
            if _metric(box[None], boxes[c][None], metric)[0] > thr:
                box, score, cls, mask = _merge_pair(box, score, cls, mask, boxes[c], float(scores[c]), int(ids[c]),
                                                    masks[c] if masks is not None else None)
                group.append(c)
        out_b.append(box)
        out_s.append(score)
        out_c.append(cls)
        out_m.append(mask)
        groups.append(group)
    if not out_b:
        return Detections.empty(masks is not None)
    return Detections(np.asarray(out_b, np.float32), np.asarray(out_s, np.float32), np.asarray(out_c, np.int64),
                      out_m if masks is not None else None, groups)


def merge(boxes: np.ndarray | Detections, scores: np.ndarray | None = None, class_ids: np.ndarray | None = None,
          method: str = "nms", iou: float = 0.5, *, metric: str | None = None, class_agnostic: bool = False,
          masks: list[MaskCrop] | None = None) -> Detections:
    """Merge overlapping detections (of overlapping tiles) in image pixels. `boxes` (N, 4) xyxy with `scores`
    (N,) and `class_ids` (N,), or one `Detections`. `method` "nms": `torchvision.ops.batched_nms` per class (or
    over all with `class_agnostic`), threshold `iou`, the kept detections in score order. "nmm": SAHI's greedy
    NMM (module doc) with `metric` "IOS" (default) or "IOU". Returns `Detections` with `groups`."""
    d = boxes if isinstance(boxes, Detections) else Detections(
        np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(-1),
        np.asarray(class_ids, np.int64).reshape(-1), masks)
    metric = metric or ("IOU" if method == "nms" else "IOS")
    if method not in ("nms", "nmm") or metric not in ("IOU", "IOS") or (method == "nms" and metric != "IOU"):
        raise InvalidArgumentError(f"merge: method {method!r} with metric {metric!r}; use nms (IOU) or nmm "
                                   "(IOS or IOU)")
    groups_of = np.zeros(len(d), np.int64) if class_agnostic else d.class_ids
    if len(d) == 0:
        empty = Detections.empty(d.masks is not None)
        empty.obb = None if d.obb is None else np.zeros((0, 5), np.float32)
        return empty
    if d.obb is not None:
        if method != "nms":
            raise InvalidArgumentError("merge: oriented boxes merge with method 'nms' (rotated NMS) only")
        keep = _rotated_nms(d.obb, d.scores, groups_of, float(iou))
        return Detections(d.boxes[keep], d.scores[keep], d.class_ids[keep], None, [[int(k)] for k in keep],
                          obb=d.obb[keep])
    if method == "nmm":
        return _nmm(d, metric, float(iou), groups_of)
    import torch
    from torchvision.ops import batched_nms

    keep = batched_nms(torch.from_numpy(d.boxes), torch.from_numpy(d.scores), torch.from_numpy(groups_of),
                       float(iou)).numpy()
    return Detections(d.boxes[keep], d.scores[keep], d.class_ids[keep],
                      [d.masks[k] for k in keep] if d.masks is not None else None, [[int(k)] for k in keep])


def _rotated_nms(obb: np.ndarray, scores: np.ndarray, groups_of: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by rotated NMS, best first, as Ultralytics' own NMS of oriented boxes runs it: the boxes of
    each group (class) moved apart by a large offset, then Fast-NMS with the probabilistic IoU of oriented boxes
    (`batch_probiou`). Ultralytics is there: every oriented-box adapter runs its post-processing."""
    import torch
    from ultralytics.utils.metrics import batch_probiou
    from ultralytics.utils.nms import TorchNMS

    boxes = torch.from_numpy(np.asarray(obb, np.float32)).clone()
    boxes[:, :2] += torch.from_numpy(np.asarray(groups_of, np.float32))[:, None] * 7680.0  # Ultralytics' max_wh
    keep = TorchNMS.fast_nms(boxes, torch.from_numpy(np.asarray(scores, np.float32)), iou, iou_func=batch_probiou)
    return keep.numpy().astype(np.int64)


def paste_masks(dets: Detections, h: int, w: int) -> np.ndarray:
    """(N, h, w) bool full-image masks from the crops: N * h * w bytes, so only for images where that fits."""
    out = np.zeros((len(dets), h, w), bool)
    for k, m in enumerate(dets.masks or []):
        y1, x1 = min(h, m.y0 + m.mask.shape[0]), min(w, m.x0 + m.mask.shape[1])
        out[k, m.y0:y1, m.x0:x1] = m.mask[:y1 - m.y0, :x1 - m.x0]
    return out


def predict_tiled(image: np.ndarray, predict: Callable[[list[np.ndarray]], Sequence[Any]], tiling: dict[str, Any],
                  batch_size: int = 16) -> Detections:
    """Tiled inference of one HWC image: `predict(images)` returns one output per image with `boxes`, `scores`,
    `class_ids` and `masks` in that image's pixels (a `ModelOutput`); `tiling` as `check_tiling` returns it. The
    tiles go to `predict` `batch_size` at a time; with `full_image` the whole image goes once more, last."""
    parts = []
    for batch in iter_tile_batches(image, tiling["tile"], tiling["overlap"], batch_size):
        outs = predict([view for _, view in batch])
        for (win, _), out in zip(batch, outs):
            parts.append(shift_back(out.boxes, out.scores, out.class_ids, out.masks, win, out.obb))
    if tiling.get("full_image"):
        out = predict([image])[0]
        parts.append(shift_back(out.boxes, out.scores, out.class_ids, out.masks, (0, 0, *image.shape[:2]), out.obb))
    return merge(concat(parts), method=tiling["merge"], iou=tiling["merge_iou"], metric=tiling["merge_metric"],
                 class_agnostic=tiling["class_agnostic"])


def run_tiled(run: Callable[[list[np.ndarray], list[tuple[int, int]]], tuple[list[Any], float]],
              images: list[np.ndarray], tiling: dict[str, Any], batch_size: int) -> tuple[list[Any], float]:
    """Tiled inference of a replica's batch: each image cut into tiles run `batch_size` at a time through
    `run(views, sizes) -> (ModelOutputs in each view's pixels, seconds)` (the adapter's `run`), shifted back and
    merged; returns one `ModelOutput` per image (masks pasted to full size when the model has masks) and the
    seconds spent in the model."""
    from workers.messages import ModelOutput

    seconds = 0.0
    outputs = []
    for image in images:
        def predict(views: list[np.ndarray]) -> Sequence[Any]:
            nonlocal seconds
            outs, spent = run(views, [tuple(v.shape[:2]) for v in views])
            seconds += spent
            return outs

        dets = predict_tiled(image, predict, tiling, batch_size)
        h, w = image.shape[:2]
        outputs.append(ModelOutput(boxes=dets.boxes, scores=dets.scores, class_ids=dets.class_ids,
                                   masks=paste_masks(dets, h, w) if dets.masks is not None else None,
                                   obb=dets.obb))
    return outputs, seconds
