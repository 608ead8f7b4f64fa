"""`Prediction`: one item's predictions as parallel numpy arrays, plus where the item came from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Prediction", "UploadTarget"]


@dataclass(frozen=True)
class UploadTarget:
    """Where an uploaded prediction went on the platform."""

    project_id: int
    dataset_id: int
    image_id: int | None = None
    video_id: int | None = None
    frame_idx: int | None = None


@dataclass(eq=False)
class Prediction:
    """The predictions for one image (or one video frame), in pixels of the original image.

    Attributes:
        boxes: (N, 4) float32, xyxy in original-image pixels.
        scores: (N,) float32 confidences.
        class_ids: (N,) int64 indices into the model's classes.
        classes: N class names, `classes[i]` the name of object i.
        masks: (N, H, W) bool aligned with `boxes`, or None for box-only models.
        source: what the item came from: a path, a URL, the array, or the platform id.
        image_path / image_url / image: set by input kind (file, URL, array), else None.
        project_id / dataset_id / image_id / video_id / frame_idx: set for platform items and video frames.
        error: None, or why this item failed (unreadable file, HTTP error, ...); such a prediction has no objects.
        img_size: (height, width) of the original image; None when the item could not be read.
        name: the item's name (file name, platform image name, or a generated one).
        dataset: the item's dataset path inside its source (e.g. ("train", "city")), () when it has none.
        target: where the prediction was uploaded, when it was.
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    classes: list[str] = field(default_factory=list)
    masks: np.ndarray | None = None
    source: Any = None
    image_path: str | None = None
    image_url: str | None = None
    image: np.ndarray | None = None
    project_id: int | None = None
    dataset_id: int | None = None
    image_id: int | None = None
    video_id: int | None = None
    frame_idx: int | None = None
    error: str | None = None
    img_size: tuple[int, int] | None = None
    name: str | None = None
    dataset: tuple[str, ...] = ()
    target: UploadTarget | None = None
    index: int = -1
    _blob_path: str | None = field(default=None, repr=False)
    _key: str | None = field(default=None, repr=False)  # the item's stable key (job resume)
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
        if self.masks is not None:
            self.masks = np.asarray(self.masks, dtype=bool)
            if self.masks.ndim != 3 or len(self.masks) != n:
                raise ValueError(f"masks must be (N, H, W) with N={n}; got {self.masks.shape}")
            if self.img_size is not None and n and tuple(self.masks.shape[1:]) != tuple(self.img_size):
                raise ValueError(f"masks are {self.masks.shape[1:]} but the image is {self.img_size}")
        if self.img_size is not None:
            self.img_size = (int(self.img_size[0]), int(self.img_size[1]))

    def __len__(self) -> int:
        return len(self.boxes)

    def __repr__(self) -> str:
        where = self.name or self.image_path or self.image_url or self.image_id or "array"
        frame = f", frame_idx={self.frame_idx}" if self.frame_idx is not None else ""
        err = f", error={self.error!r}" if self.error else ""
        return f"Prediction({where!s}{frame}, {len(self)} objects{err})"

    # -- annotation -----------------------------------------------------------------------------------------
    @property
    def annotation(self):
        """The Supervisely-format `Annotation` of the objects (computed once)."""
        if self._annotation is None:
            self._annotation = self.to_annotation()
        return self._annotation

    def to_annotation(self):
        """A new `Annotation`: a `Bitmap` per object when there are masks, else a `Rectangle`; each label
        carries a `confidence` tag with its score."""
        from pipeline.annotation import CONFIDENCE_TAG, Annotation, Bitmap, Label, ObjClass, Rectangle, Tag

        h, w = self.img_size or (0, 0)
        labels = []
        shape = "bitmap" if self.masks is not None else "rectangle"
        classes: dict[str, Any] = {}
        for i in range(len(self)):
            name = self.classes[i]
            cls = classes.setdefault(name, ObjClass(name, shape))
            if self.masks is not None:
                if not self.masks[i].any():
                    continue
                geometry = Bitmap.from_mask(self.masks[i])
            else:
                geometry = Rectangle.from_xyxy(*[float(v) for v in self.boxes[i]])
            labels.append(Label(geometry, cls, tags=[Tag(CONFIDENCE_TAG, round(float(self.scores[i]), 4))]))
        return Annotation(img_size=(h, w), labels=labels)

    # -- pixels ---------------------------------------------------------------------------------------------
    def load_image(self) -> np.ndarray:
        """The original image (or video frame), HWC RGB uint8."""
        from workers.decode import decode_image_bytes, decode_video_frame, fetch_url, read_image_file, to_rgb_array

        if self.image is not None:
            return to_rgb_array(self.image)
        if self.frame_idx is not None and (self.image_path or self._blob_path):
            return decode_video_frame(self.image_path or self._blob_path, self.frame_idx)
        if self._blob_path or self.image_path:
            return read_image_file(self._blob_path or self.image_path)
        if self.image_url:
            return decode_image_bytes(fetch_url(self.image_url))
        raise ValueError(f"{self!r} has no image to load")

    def draw(self, image: np.ndarray | None = None, *, alpha: float = 0.45, show_scores: bool = True,
             line_width: int | None = None) -> np.ndarray:
        """The image with boxes, translucent masks, class names and scores drawn on it (HWC RGB uint8)."""
        from pipeline.annotation import draw_boxes

        img = self.load_image() if image is None else image
        return draw_boxes(
            img, self.boxes, self.classes, self.scores if show_scores else None, masks=self.masks,
            alpha=alpha, line_width=line_width,
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
            "source": source,
            "image_path": self.image_path,
            "image_url": self.image_url,
            "project_id": self.project_id,
            "dataset_id": self.dataset_id,
            "image_id": self.image_id,
            "video_id": self.video_id,
            "frame_idx": self.frame_idx,
            "error": self.error,
            "img_size": list(self.img_size) if self.img_size else None,
            "name": self.name,
            "dataset": list(self.dataset),
            "target": None if self.target is None else dict(self.target.__dict__),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> Prediction:
        from pipeline.annotation import Bitmap

        if isinstance(data, str):
            data = json.loads(data)
        img_size = tuple(data["img_size"]) if data.get("img_size") else None
        masks = None
        if data.get("masks") is not None:
            h, w = img_size
            layers = []
            for m in data["masks"]:
                if m is None:
                    layers.append(np.zeros((h, w), bool))
                else:
                    layers.append(Bitmap.from_json({"geometryType": "bitmap", "bitmap": m}).to_mask(h, w))
            masks = np.stack(layers) if layers else np.zeros((0, h, w), bool)
        target = data.get("target")
        return cls(
            boxes=np.asarray(data["boxes"], np.float32).reshape(-1, 4),
            scores=data["scores"],
            class_ids=data["class_ids"],
            classes=data["classes"],
            masks=masks,
            source=data.get("source"),
            image_path=data.get("image_path"),
            image_url=data.get("image_url"),
            project_id=data.get("project_id"),
            dataset_id=data.get("dataset_id"),
            image_id=data.get("image_id"),
            video_id=data.get("video_id"),
            frame_idx=data.get("frame_idx"),
            error=data.get("error"),
            img_size=img_size,
            name=data.get("name"),
            dataset=tuple(data.get("dataset") or ()),
            target=UploadTarget(**target) if target else None,
        )
