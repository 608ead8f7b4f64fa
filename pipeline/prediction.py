"""The records of a run: `Item` (one thing to predict and where it came from), `Prediction` (its objects, as
parallel numpy arrays, plus the `Item`) and `UploadTarget` (where an uploaded prediction went)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = ["KEYPOINT_MIN_SCORE", "Item", "Prediction", "UploadTarget", "obb_corners"]

# A keypoint scored under this is a disabled (hidden) node of its graph: Ultralytics draws keypoints from this score
# on (`Annotator.kpts(conf_thres=0.25)`).
KEYPOINT_MIN_SCORE = 0.25


@dataclass
class Item:
    """One thing to predict, and everything a `Prediction` says about where it came from.

    `path` is the file the pixels are read from (a user's image or video file, or a platform blob); `image_path`,
    `image_url` and `image` say what the user gave (a file, a URL, an array); `key` is stable across re-runs of
    the same job (what a resumed job skips by).
    """

    index: int
    key: str
    name: str
    source: Any = None
    path: str | None = None
    url: str | None = None
    image_path: str | None = None
    image_url: str | None = None
    image: np.ndarray | None = None
    project_id: int | None = None
    dataset_id: int | None = None
    image_id: int | None = None
    video_id: int | None = None
    frame_idx: int | None = None
    video_path: str | None = None
    dataset: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class UploadTarget:
    """Where an uploaded prediction went on the platform."""

    project_id: int
    dataset_id: int
    image_id: int | None = None
    video_id: int | None = None
    frame_idx: int | None = None


# What a Prediction tells about its item: read through to `Prediction.item`.
_ITEM_FIELDS = ("index", "key", "name", "source", "image_path", "image_url", "image", "project_id", "dataset_id",
                "image_id", "video_id", "frame_idx", "dataset")


@dataclass(eq=False)
class Prediction:
    """The predictions for one image (or one video frame), in pixels of the original image, and its `Item`.

    Attributes:
        boxes: (N, 4) float32, xyxy in original-image pixels.
        scores: (N,) float32 confidences.
        class_ids: (N,) int64 indices into the model's classes.
        classes: N class names, `classes[i]` the name of object i.
        masks: (N, H, W) bool aligned with `boxes`, or None for box-only models.
        keypoints: (N, K, 3) float32 `x, y, score` per keypoint (pose models), else None.
        probs: (C,) float32 class probabilities of the whole image (classification models), else None; the
            top class becomes an image tag (`image_tags`).
        class_names: the model's class names, what `class_ids` and `probs` index (set by the run); `top_class` /
            `top_score` read `probs` with them.
        keypoint_names: the K keypoint names of a pose model (the graph nodes of its objects); None: "0".."K-1".
        skeleton: the pose model's edges as pairs of keypoint indices (drawn between graph nodes).
        track_ids: (N,) int64 track of each object in its video, -1 where it joined none; None for images.
        obb: (N, 5) float32 oriented boxes `cx, cy, w, h, angle` (oriented-detection models, e.g. Ultralytics'
            obb: the angle in radians, clockwise in image coordinates, as `Results.obb.xywhr`), else None;
            `boxes` are then their enclosing axis-aligned boxes and each object is a 4-point polygon
            (`obb_corners`).
        item: the `Item` this prediction is of. Its fields read through: `source` (a path, a URL, the array, or
            the platform id), `image_path` / `image_url` / `image` (set by input kind), `project_id`,
            `dataset_id`, `image_id`, `video_id`, `frame_idx`, `name`, `dataset` (the item's dataset path inside
            its source, e.g. ("train", "city")), `index` (its position in the run).
        error: None, or why this item failed (unreadable file, HTTP error, ...); such a prediction has no objects.
        orig_size: (height, width) of the original image in pixels; None when the item could not be read.
        target: where the prediction was uploaded, when it was.
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    classes: list[str] = field(default_factory=list)
    masks: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    probs: np.ndarray | None = None
    class_names: list[str] | None = None
    keypoint_names: list[str] | None = None
    skeleton: list[tuple[int, int]] | None = None
    track_ids: np.ndarray | None = None
    obb: np.ndarray | None = None
    item: Item = field(default_factory=lambda: Item(index=-1, key="", name=""), repr=False)
    error: str | None = None
    orig_size: tuple[int, int] | None = None
    target: UploadTarget | None = None
    _annotation: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        self.classes = list(self.classes)
        if not (len(self.scores) == len(self.class_ids) == len(self.classes) == n):
            raise ValueError(
                f"Prediction arrays disagree: boxes {n}, scores {len(self.scores)}, class_ids "
                f"{len(self.class_ids)}, classes {len(self.classes)}"
            )
        if self.orig_size is not None:
            self.orig_size = (int(self.orig_size[0]), int(self.orig_size[1]))
        if self.masks is not None:
            self.masks = np.asarray(self.masks, dtype=bool)
            if self.masks.ndim != 3 or len(self.masks) != n:
                raise ValueError(f"masks must be (N, H, W) with N={n}; got {self.masks.shape}")
            if self.orig_size is not None and n and tuple(self.masks.shape[1:]) != self.orig_size:
                raise ValueError(f"masks are {self.masks.shape[1:]} but the image is {self.orig_size}")
        if self.keypoints is not None:
            self.keypoints = np.asarray(self.keypoints, dtype=np.float32)
            if self.keypoints.ndim != 3 or len(self.keypoints) != n or self.keypoints.shape[2] != 3:
                raise ValueError(f"keypoints must be (N, K, 3) with N={n}; got {self.keypoints.shape}")
        if self.probs is not None:
            self.probs = np.asarray(self.probs, dtype=np.float32).reshape(-1)
            if self.class_names is not None and len(self.class_names) != len(self.probs):
                raise ValueError(f"probs has {len(self.probs)} classes but class_names {len(self.class_names)}")
        if self.keypoint_names is not None:
            self.keypoint_names = [str(n) for n in self.keypoint_names]
            if self.keypoints is not None and self.keypoints.shape[1] != len(self.keypoint_names) and n:
                raise ValueError(f"keypoints has {self.keypoints.shape[1]} keypoints but keypoint_names "
                                 f"{len(self.keypoint_names)}")
        if self.skeleton is not None:
            self.skeleton = [(int(a), int(b)) for a, b in self.skeleton]
        if self.track_ids is not None:
            self.track_ids = np.asarray(self.track_ids, dtype=np.int64).reshape(-1)
            if len(self.track_ids) != n:
                raise ValueError(f"track_ids must be ({n},); got {self.track_ids.shape}")
        if self.obb is not None:
            self.obb = np.asarray(self.obb, dtype=np.float32)
            if self.obb.size == 0:
                self.obb = self.obb.reshape(0, 5)
            if self.obb.shape != (n, 5):
                raise ValueError(f"obb must be (N, 5) with N={n}; got {self.obb.shape}")

    @classmethod
    def empty(cls, item: Item | None = None, error: str | None = None, orig_size: tuple[int, int] | None = None,
              with_masks: bool = False) -> Prediction:
        """A prediction with no objects (of a failed item, when `error` says why)."""
        masks = np.zeros((0, *orig_size), bool) if with_masks and orig_size else None
        extra = {"item": item} if item is not None else {}
        return cls(error=error, orig_size=orig_size, masks=masks, **extra)

    def __getitem__(self, index: Any) -> Prediction:
        """The objects selected by a boolean mask (N,) or an index array, as a new `Prediction` of the same
        item (as `supervision.Detections` indexes)."""
        sel = np.asarray(index)
        if sel.dtype == bool and sel.shape != (len(self),):
            raise IndexError(f"a boolean index must have shape ({len(self)},); got {sel.shape}")
        ids = np.flatnonzero(sel) if sel.dtype == bool else sel.reshape(-1).astype(np.int64)

        def take(arr: np.ndarray | None) -> np.ndarray | None:
            return None if arr is None else arr[ids]

        return replace(self, boxes=self.boxes[ids], scores=self.scores[ids], class_ids=self.class_ids[ids],
                       classes=[self.classes[i] for i in ids.tolist()], masks=take(self.masks),
                       keypoints=take(self.keypoints), track_ids=take(self.track_ids), obb=take(self.obb),
                       _annotation=None)

    def __len__(self) -> int:
        return len(self.boxes)

    def __repr__(self) -> str:
        where = self.name or self.image_path or self.image_url or self.image_id or "array"
        frame = f", frame_idx={self.frame_idx}" if self.frame_idx is not None else ""
        err = f", error={self.error!r}" if self.error else ""
        return f"Prediction({where!s}{frame}, {len(self)} objects{err})"

    # -- classification -------------------------------------------------------------------------------------
    @property
    def top_class(self) -> str | None:
        """The most probable class of a classifier's prediction (None without `probs` or `class_names`)."""
        if self.probs is None or not len(self.probs) or self.class_names is None:
            return None
        return self.class_names[int(np.argmax(self.probs))]

    @property
    def top_score(self) -> float | None:
        """The probability of `top_class`."""
        return None if self.probs is None or not len(self.probs) else float(np.max(self.probs))

    # -- annotation -----------------------------------------------------------------------------------------
    @property
    def object_shape(self) -> str:
        """The Supervisely shape of this prediction's objects: "graph" (keypoints), "bitmap" (masks), "polygon"
        (oriented boxes), "rectangle"."""
        if self.keypoints is not None:
            return "graph"
        return "bitmap" if self.masks is not None else "polygon" if self.obb is not None else "rectangle"

    @property
    def obb_corners(self) -> np.ndarray | None:
        """(N, 4, 2) float32 corners `x, y` of the oriented boxes (as Ultralytics' `Results.obb.xyxyxyxy`: from
        the corner at +w/2, +h/2 in the box's frame, in turn), None without `obb`."""
        return None if self.obb is None else obb_corners(self.obb)

    def obj_class(self, name: str):
        """The `ObjClass` an object of class `name` is written in: of `object_shape`; a graph class carries the
        keypoint template (its nodes and the skeleton's edges) in its `geometry_config`, as the Supervisely SDK
        requires of keypoint classes."""
        from pipeline.annotation import ObjClass
        from pipeline.annotation.graph import keypoints_config

        shape = self.object_shape
        if shape != "graph":
            return ObjClass(name, shape)
        return ObjClass(name, shape, geometry_config=keypoints_config(self._keypoint_names(), self.skeleton))

    def _keypoint_names(self) -> list[str]:
        if self.keypoint_names is not None:
            return list(self.keypoint_names)
        return [str(i) for i in range(self.keypoints.shape[1] if self.keypoints is not None else 0)]

    def image_tags(self) -> list:
        """The image tags of the prediction: a classifier's top class, named after it, with its probability
        (`{"name": "cat", "value": 0.93}`, an any_number tag); none for other models."""
        from pipeline.annotation import Tag, TagMeta

        top = self.top_class
        if top is None:
            return []
        return [Tag(TagMeta(top, "any_number"), round(float(self.top_score), 4))]

    @property
    def annotation(self):
        """The Supervisely-format `Annotation` of the objects (computed once)."""
        if self._annotation is None:
            self._annotation = self.to_annotation()
        return self._annotation

    def to_annotation(self):
        """A new `Annotation`: per object a `Graph` of its keypoints (pose models; a keypoint scored under
        `KEYPOINT_MIN_SCORE` is a disabled node), else a `Bitmap` when there are masks, else a 4-point `Polygon`
        of its oriented box, else a `Rectangle`; each label carries a `confidence` tag with its score. A
        classifier's top class is an image tag (`image_tags`)."""
        from pipeline.annotation import CONFIDENCE_TAG, Annotation, Bitmap, Graph, Label, Polygon, Rectangle, Tag

        h, w = self.orig_size or (0, 0)
        labels = []
        classes: dict[str, Any] = {}
        names = self._keypoint_names() if self.keypoints is not None else None
        corners = self.obb_corners
        for i in range(len(self)):
            name = self.classes[i]
            if name not in classes:
                classes[name] = self.obj_class(name)
            cls = classes[name]
            if self.keypoints is not None:
                geometry = Graph.from_keypoints(self.keypoints[i], names, KEYPOINT_MIN_SCORE)
            elif self.masks is not None:
                if not self.masks[i].any():
                    continue
                geometry = Bitmap.from_mask(self.masks[i])
            elif corners is not None:
                geometry = Polygon([[float(x), float(y)] for x, y in corners[i]])
            else:
                geometry = Rectangle.from_xyxy(*[float(v) for v in self.boxes[i]])
            labels.append(Label(geometry, cls, tags=[Tag(CONFIDENCE_TAG, round(float(self.scores[i]), 4))]))
        return Annotation(img_size=(h, w), labels=labels, img_tags=self.image_tags())

    # -- pixels ---------------------------------------------------------------------------------------------
    def load_image(self) -> np.ndarray:
        """The original image (or video frame), HWC RGB uint8."""
        from workers.decode import decode_image_bytes, fetch_bytes, read_image_file, to_rgb_array
        from workers.video import read_video_frame

        if self.image is not None:
            return to_rgb_array(self.image)
        path = self.item.path or self.image_path
        if self.frame_idx is not None and path:
            return read_video_frame(path, self.frame_idx)
        if path:
            return read_image_file(path)
        if self.image_url:
            return decode_image_bytes(fetch_bytes(self.image_url))
        raise ValueError(f"{self!r} has no image to load")

    def draw(self, image: np.ndarray | None = None, *, alpha: float = 0.45, show_scores: bool = True,
             line_width: int | None = None) -> np.ndarray:
        """The image with boxes (oriented ones as their outlines), translucent masks, class names and scores drawn
        on it (HWC RGB uint8)."""
        from pipeline.annotation import draw_boxes

        img = self.load_image() if image is None else image
        return draw_boxes(
            img, self.boxes, self.classes, self.scores if show_scores else None, masks=self.masks,
            alpha=alpha, line_width=line_width, polygons=self.obb_corners,
        )

    # -- serialisation --------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict: arrays as lists, masks as Supervisely bitmaps (base64 PNG cropped to the box)."""
        from pipeline.annotation import Bitmap

        masks = None
        if self.masks is not None:
            masks = []
            for m in self.masks:
                if m.any():
                    b = Bitmap.from_mask(m)
                    masks.append(b.to_json()["bitmap"])
                else:
                    masks.append(None)
        source = self.source
        if isinstance(source, np.ndarray):
            source = f"<array {'x'.join(map(str, source.shape))} {source.dtype}>"
        elif source is not None and not isinstance(source, str | int | float):
            source = str(source)
        return {
            "boxes": self.boxes.round(3).tolist(),
            "scores": self.scores.round(5).tolist(),
            "class_ids": self.class_ids.tolist(),
            "classes": list(self.classes),
            "masks": masks,
            "keypoints": None if self.keypoints is None else self.keypoints.round(3).tolist(),
            "probs": None if self.probs is None else self.probs.round(5).tolist(),
            "class_names": self.class_names,
            "keypoint_names": self.keypoint_names,
            "skeleton": None if self.skeleton is None else [list(e) for e in self.skeleton],
            "track_ids": None if self.track_ids is None else self.track_ids.tolist(),
            "obb": None if self.obb is None else self.obb.round(5).tolist(),
            "source": source,
            "image_path": self.image_path,
            "image_url": self.image_url,
            "project_id": self.project_id,
            "dataset_id": self.dataset_id,
            "image_id": self.image_id,
            "video_id": self.video_id,
            "frame_idx": self.frame_idx,
            "error": self.error,
            "orig_size": list(self.orig_size) if self.orig_size else None,
            "name": self.name,
            "dataset": list(self.dataset),
            "target": None if self.target is None else dict(self.target.__dict__),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> Prediction:
        """The prediction `to_json` wrote (its item rebuilt from the same fields)."""
        from pipeline.annotation import Bitmap

        if isinstance(data, str):
            data = json.loads(data)
        size = data.get("orig_size") or data.get("img_size")  # "img_size": files written before the rename
        orig_size = tuple(size) if size else None
        masks = None
        if data.get("masks") is not None:
            h, w = orig_size
            layers = []
            for m in data["masks"]:
                if m is None:
                    layers.append(np.zeros((h, w), bool))
                else:
                    layers.append(Bitmap.from_json({"geometryType": "bitmap", "bitmap": m}).to_mask(h, w))
            masks = np.stack(layers) if layers else np.zeros((0, h, w), bool)
        target = data.get("target")
        item = Item(index=-1, key="", name=data.get("name") or "", source=data.get("source"),
                    image_path=data.get("image_path"), image_url=data.get("image_url"),
                    project_id=data.get("project_id"), dataset_id=data.get("dataset_id"),
                    image_id=data.get("image_id"), video_id=data.get("video_id"), frame_idx=data.get("frame_idx"),
                    dataset=tuple(data.get("dataset") or ()))
        return cls(
            boxes=np.asarray(data["boxes"], np.float32).reshape(-1, 4),
            scores=data["scores"],
            class_ids=data["class_ids"],
            classes=data["classes"],
            masks=masks,
            keypoints=data.get("keypoints"),
            probs=data.get("probs"),
            class_names=data.get("class_names"),
            keypoint_names=data.get("keypoint_names"),
            skeleton=data.get("skeleton"),
            track_ids=data.get("track_ids"),
            obb=data.get("obb"),
            item=item,
            error=data.get("error"),
            orig_size=orig_size,
            target=UploadTarget(**target) if target else None,
        )


def obb_corners(obb: np.ndarray) -> np.ndarray:
    """(N, 4, 2) float32 corners of oriented boxes (N, 5) `cx, cy, w, h, angle`, in Ultralytics' order
    (`ops.xywhr2xyxyxyxy`): centre + v1 + v2, centre + v1 - v2, centre - v1 - v2, centre - v1 + v2, where v1 is
    half the width along the angle and v2 half the height across it."""
    obb = np.asarray(obb, np.float64).reshape(-1, 5)
    ctr = obb[:, :2]
    cos, sin = np.cos(obb[:, 4:5]), np.sin(obb[:, 4:5])
    v1 = np.concatenate([obb[:, 2:3] / 2 * cos, obb[:, 2:3] / 2 * sin], 1)
    v2 = np.concatenate([-obb[:, 3:4] / 2 * sin, obb[:, 3:4] / 2 * cos], 1)
    return np.stack([ctr + v1 + v2, ctr + v1 - v2, ctr - v1 - v2, ctr - v1 + v2], 1).astype(np.float32)


def _item_field(name: str) -> property:
    return property(lambda self: getattr(self.item, name), doc=f"`item.{name}`")


for _name in _ITEM_FIELDS:
    setattr(Prediction, _name, _item_field(_name))
