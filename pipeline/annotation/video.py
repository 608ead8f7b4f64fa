"""Video annotations in the Supervisely video format: objects that live across frames, figures per frame.

JSON (SDK: `supervisely/video_annotation/video_annotation.py`, `video_object.py`, `video_figure.py`, `frame.py`,
`video_tag.py`):
    {"size": {"height", "width"}, "description", "key",
     "tags": [{"name", "value", "frameRange": [start, end], "key"}],
     "objects": [{"key", "classTitle", "tags": [...]}],
     "frames": [{"index": i, "figures": [{"key", "objectKey", "geometryType", "geometry": {"points"|"bitmap": ...}}]}],
     "framesCount": n}
Keys are uuid4 hex strings (the SDK parses them with `uuid.UUID`). Frame indices count from 0.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.annotation._util import extra_keys, frozen, optional, require
from pipeline.annotation.annotation import meta_of
from pipeline.annotation.geometry import GEOMETRY_TYPES, Geometry, geometry_from_json
from pipeline.annotation.meta import ObjClass, ProjectMeta, Tag, TagMeta, tags_from_json
from pipeline.exceptions import FormatError, InvalidArgumentError

__all__ = ["VideoAnnotation", "VideoFigure", "VideoFrame", "VideoObject", "VideoTag"]

_VIDEO_KEYS = ("size", "description", "key", "tags", "objects", "frames", "framesCount")
_OBJECT_KEYS = ("key", "classTitle", "tags")
_FIGURE_KEYS = ("key", "objectKey", "geometryType", "geometry")
_FRAME_KEYS = ("index", "figures")
_VTAG_KEYS = ("name", "value", "frameRange", "key")


def new_key() -> str:
    """A fresh key: uuid4 as 32 hex digits."""
    return uuid.uuid4().hex


def _frozen(extra: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return frozen(extra)


@dataclass(frozen=True)
class VideoTag:
    """A tag on a whole video, or on the frames `frame_range` = (first, last), both inclusive."""

    meta: TagMeta | str
    value: Any = None
    frame_range: tuple[int, int] | None = None
    key: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        tag = Tag(self.meta, self.value)  # validates the value against the meta
        object.__setattr__(self, "meta", tag.meta)
        object.__setattr__(self, "value", tag.value)
        if self.frame_range is not None:
            start, end = (int(v) for v in self.frame_range)
            if start < 0 or end < start:
                raise InvalidArgumentError(f"tag {tag.name!r}: frame_range must be (first, last); got {self.frame_range}")
            object.__setattr__(self, "frame_range", (start, end))
        object.__setattr__(self, "key", self.key or new_key())
        object.__setattr__(self, "extra", _frozen(self.extra))

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def name(self) -> str:
        return self.meta.name  # type: ignore[union-attr]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.value is not None:
            out["value"] = self.value
        if self.frame_range is not None:
            out["frameRange"] = list(self.frame_range)
        out["key"] = self.key
        out.update((k, v) for k, v in self.extra.items() if k not in out)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], meta: ProjectMeta | None, where: str) -> VideoTag:
        tag = Tag.from_json({k: v for k, v in data.items() if k in ("name", "value")}, meta, where)
        frame_range = optional(data, "frameRange", (list, type(None)), None, where)
        if frame_range is not None and (len(frame_range) != 2 or not all(isinstance(v, int) for v in frame_range)):
            raise FormatError(f"{where}: frameRange must be [first, last]; got {frame_range!r}")
        try:
            return cls(
                tag.meta, tag.value, tuple(frame_range) if frame_range else None,
                optional(data, "key", str, None, where), extra_keys(data, _VTAG_KEYS),
            )
        except InvalidArgumentError as exc:
            raise FormatError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class VideoObject:
    """An object tracked through a video: its class, tags and `key` (uuid4 hex, generated when None)."""

    obj_class: ObjClass
    tags: tuple[Tag, ...] = ()
    key: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.obj_class, ObjClass):
            raise InvalidArgumentError(f"obj_class must be an ObjClass; got {self.obj_class!r}")
        object.__setattr__(self, "tags", tuple(self.tags))
        object.__setattr__(self, "key", self.key or new_key())
        object.__setattr__(self, "extra", _frozen(self.extra))

    def __hash__(self) -> int:
        return hash(self.key)

    def to_json(self) -> dict[str, Any]:
        out = {"key": self.key, "classTitle": self.obj_class.name, "tags": [t.to_json() for t in self.tags]}
        out.update((k, v) for k, v in self.extra.items() if k not in out)
        return out


@dataclass(frozen=True)
class VideoFigure:
    """The geometry (pixels) of `video_object` on frame `frame_index`."""

    video_object: VideoObject
    geometry: Geometry
    frame_index: int
    key: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.geometry, Geometry):
            raise InvalidArgumentError(f"figure geometry must be a Rectangle, Bitmap or Polygon; got {self.geometry!r}")
        cls = self.video_object.obj_class
        if not cls.accepts(self.geometry.geometry_type):
            raise InvalidArgumentError(
                f"class {cls.name!r} is a {cls.shape} class; it cannot hold a {self.geometry.geometry_type}"
            )
        if int(self.frame_index) < 0:
            raise InvalidArgumentError(f"frame_index must be >= 0; got {self.frame_index}")
        object.__setattr__(self, "frame_index", int(self.frame_index))
        object.__setattr__(self, "key", self.key or new_key())
        object.__setattr__(self, "extra", _frozen(self.extra))

    def __hash__(self) -> int:
        return hash(self.key)

    def to_json(self) -> dict[str, Any]:
        out = {
            "key": self.key,
            "objectKey": self.video_object.key,
            "geometryType": self.geometry.geometry_type,
            "geometry": self.geometry.to_json(),
        }
        out.update((k, v) for k, v in self.extra.items() if k not in out)
        return out


@dataclass(frozen=True)
class VideoFrame:
    """The figures on frame `index`."""

    index: int
    figures: tuple[VideoFigure, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        figures = tuple(self.figures)
        for f in figures:
            if f.frame_index != self.index:
                raise InvalidArgumentError(f"figure {f.key} is for frame {f.frame_index}, not frame {self.index}")
        object.__setattr__(self, "index", int(self.index))
        object.__setattr__(self, "figures", figures)
        object.__setattr__(self, "extra", _frozen(self.extra))

    def __hash__(self) -> int:
        return hash((self.index, self.figures))

    def to_json(self) -> dict[str, Any]:
        out = {"index": self.index, "figures": [f.to_json() for f in self.figures]}
        out.update((k, v) for k, v in self.extra.items() if k not in out)
        return out


@dataclass(frozen=True)
class VideoAnnotation:
    """The annotation of one video: `img_size` (height, width) pixels, `frames_count`, `objects`, the `frames`
    that have figures, video `tags`, `description`, `key`. Immutable: `add_*` return a new one."""

    img_size: tuple[int, int]
    frames_count: int
    objects: tuple[VideoObject, ...] = ()
    frames: tuple[VideoFrame, ...] = ()
    tags: tuple[VideoTag, ...] = ()
    description: str = ""
    key: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        h, w = (int(v) for v in self.img_size)
        if h < 0 or w < 0 or int(self.frames_count) < 0:
            raise InvalidArgumentError(f"img_size and frames_count must not be negative; got {self.img_size}")
        objects, frames = tuple(self.objects), tuple(self.frames)
        keys = {o.key for o in objects}
        if len(keys) != len(objects):
            raise InvalidArgumentError("two video objects share a key")
        for fr in frames:
            if fr.index >= int(self.frames_count):
                raise InvalidArgumentError(f"frame {fr.index} is past the end (framesCount {self.frames_count})")
            for fig in fr.figures:
                if fig.video_object.key not in keys:
                    raise InvalidArgumentError(f"figure {fig.key} refers to object {fig.video_object.key}, not in objects")
        object.__setattr__(self, "img_size", (h, w))
        object.__setattr__(self, "frames_count", int(self.frames_count))
        object.__setattr__(self, "objects", objects)
        object.__setattr__(self, "frames", frames)
        object.__setattr__(self, "tags", tuple(self.tags))
        object.__setattr__(self, "key", self.key or new_key())
        object.__setattr__(self, "extra", _frozen(self.extra))

    def __hash__(self) -> int:
        return hash(self.key)

    def figures_on_frame(self, index: int) -> list[VideoFigure]:
        """The figures on frame `index` (an empty list when it has none)."""
        return [f for fr in self.frames if fr.index == index for f in fr.figures]

    @property
    def figures(self) -> list[VideoFigure]:
        """Every figure, frame by frame."""
        return [f for fr in self.frames for f in fr.figures]

    def add_objects(self, objects: Iterable[VideoObject]) -> VideoAnnotation:
        """A new annotation with `objects` added."""
        return replace(self, objects=self.objects + tuple(objects))

    def add_figures(self, figures: Iterable[VideoFigure]) -> VideoAnnotation:
        """A new annotation with `figures` added to their frames (their objects must be in `objects`)."""
        by_index = {fr.index: list(fr.figures) for fr in self.frames}
        extras = {fr.index: fr.extra for fr in self.frames}
        for fig in figures:
            by_index.setdefault(fig.frame_index, []).append(fig)
        frames = tuple(VideoFrame(i, tuple(figs), extras.get(i, {})) for i, figs in sorted(by_index.items()))
        return replace(self, frames=frames)

    def add_tags(self, tags: Iterable[VideoTag]) -> VideoAnnotation:
        return replace(self, tags=self.tags + tuple(tags))

    def clone(self, **changes: Any) -> VideoAnnotation:
        return replace(self, **changes)

    def required_meta(self) -> ProjectMeta:
        """A "videos" `ProjectMeta` of the classes and tag metas this annotation uses."""
        return meta_of(
            [o.obj_class for o in self.objects],
            [t.meta for t in self.tags] + [t.meta for o in self.objects for t in o.tags],  # type: ignore[misc]
            "videos",
        )

    def to_json(self) -> dict[str, Any]:
        out = {
            "size": {"height": self.img_size[0], "width": self.img_size[1]},
            "description": self.description,
            "key": self.key,
            "tags": [t.to_json() for t in self.tags],
            "objects": [o.to_json() for o in self.objects],
            "frames": [fr.to_json() for fr in self.frames],
            "framesCount": self.frames_count,
        }
        out.update((k, v) for k, v in self.extra.items() if k not in out)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], meta: ProjectMeta | None = None) -> VideoAnnotation:
        """From Supervisely video annotation JSON, with the same validation as `Annotation.from_json`; a figure
        whose `objectKey` is not an object, or a frame index >= `framesCount`, is a `FormatError` too."""
        where = "video annotation"
        if not isinstance(data, dict):
            raise FormatError(f"{where}: expected a JSON object; got {type(data).__name__}")
        size = require(data, "size", dict, where)
        height = require(size, "height", int, f"{where} size")
        width = require(size, "width", int, f"{where} size")
        frames_count = require(data, "framesCount", int, where)
        tags = tuple(
            VideoTag.from_json(t, meta, f"video tag {i}")
            for i, t in enumerate(optional(data, "tags", list, [], where))
        )
        frames_json = optional(data, "frames", list, [], where)
        shapes = _figure_shapes(frames_json) if meta is None else {}
        objects = []
        for i, obj in enumerate(optional(data, "objects", list, [], where)):
            objects.append(_object_from_json(obj, meta, shapes, f"video object {i}"))
        by_key = {o.key: o for o in objects}
        if len(by_key) != len(objects):
            raise FormatError(f"{where}: two objects share a key")
        frames = []
        for i, fr in enumerate(frames_json):
            w = f"frame {i}"
            index = require(fr, "index", int, w)
            if not 0 <= index < frames_count:
                raise FormatError(f"{w}: index {index} is outside 0..{frames_count - 1} (framesCount {frames_count})")
            figures = tuple(
                _figure_from_json(f, by_key, index, f"frame {index} figure {j}")
                for j, f in enumerate(require(fr, "figures", list, w))
            )
            frames.append(VideoFrame(index, figures, extra_keys(fr, _FRAME_KEYS)))
        try:
            return cls(
                img_size=(height, width),
                frames_count=frames_count,
                objects=tuple(objects),
                frames=tuple(frames),
                tags=tags,
                description=optional(data, "description", str, "", where),
                key=optional(data, "key", str, None, where),
                extra=extra_keys(data, _VIDEO_KEYS),
            )
        except InvalidArgumentError as exc:
            raise FormatError(f"{where}: {exc}") from None


def _figure_shapes(frames: list[Any]) -> dict[str, str]:
    """objectKey -> the class shape to give it when there is no meta: its figures' geometry type if they all have
    the same known one, else "any_shape"."""
    seen: dict[str, set[str]] = {}
    for fr in frames:
        for fig in fr.get("figures", []) if isinstance(fr, dict) and isinstance(fr.get("figures"), list) else []:
            if isinstance(fig, dict) and isinstance(fig.get("objectKey"), str):
                seen.setdefault(fig["objectKey"], set()).add(str(fig.get("geometryType")))
    return {k: next(iter(v)) if len(v) == 1 and next(iter(v)) in GEOMETRY_TYPES else "any_shape" for k, v in seen.items()}


def _object_from_json(
    data: dict[str, Any], meta: ProjectMeta | None, shapes: dict[str, str], where: str
) -> VideoObject:
    title = require(data, "classTitle", str, where)
    where = f"{where} (class {title!r})"
    if meta is not None:
        obj_class = meta.get_obj_class(title)
        if obj_class is None:
            raise FormatError(f"{where}: class {title!r} is not in the project meta")
    else:
        obj_class = ObjClass(title, shapes.get(str(data.get("key")), "any_shape"))
    tags = tags_from_json(data.get("tags", []), meta, where)
    return VideoObject(obj_class, tags, optional(data, "key", str, None, where), extra_keys(data, _OBJECT_KEYS))


def _figure_from_json(data: dict[str, Any], objects: dict[str, VideoObject], index: int, where: str) -> VideoFigure:
    object_key = require(data, "objectKey", str, where)
    obj = objects.get(object_key)
    if obj is None:
        raise FormatError(f"{where}: objectKey {object_key!r} is not one of the annotation's objects")
    geometry_type = require(data, "geometryType", str, where)
    cls = obj.obj_class
    if geometry_type in GEOMETRY_TYPES and not cls.accepts(geometry_type):
        raise FormatError(
            f"{where}: class {cls.name!r} is a {cls.shape} class in the project meta; this figure is a {geometry_type}"
        )
    geometry = geometry_from_json(geometry_type, require(data, "geometry", dict, where), where)
    return VideoFigure(obj, geometry, index, optional(data, "key", str, None, where), extra_keys(data, _FIGURE_KEYS))
