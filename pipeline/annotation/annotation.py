"""`Label` (one object: geometry + class + tags) and `Annotation` (the objects and tags of one image).

JSON as Supervisely writes it (SDK: `supervisely/annotation/label.py`, `annotation.py`):
    label       {"classTitle", "description", "tags": [...], "geometryType", "points" | "bitmap", ...}
    annotation  {"description", "tags": [...], "size": {"height", "width"}, "objects": [...], "customBigData": {}}
Keys this model does not interpret ("id", "classId", "labelerLogin", "createdAt", "updatedAt", "nnCreated",
"nnUpdated", ...) are kept and written back, so a read-write round trip is lossless.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pipeline.annotation._util import extra_keys, frozen, optional, require
from pipeline.annotation.geometry import GEOMETRY_TYPES, Geometry, Rectangle, geometry_from_json
from pipeline.annotation.meta import ObjClass, ProjectMeta, Tag, TagMeta, tags_from_json
from pipeline.exceptions import FormatError, InvalidArgumentError

__all__ = ["Annotation", "Label"]

_LABEL_KEYS = ("classTitle", "description", "tags", "geometryType", "points", "bitmap", "nodes")
_ANN_KEYS = ("description", "tags", "size", "objects", "customBigData")


@dataclass(frozen=True, eq=True)
class Label:
    """One object: a `geometry` (`Rectangle`, `Bitmap`, `Polygon`; pixels), its `obj_class`, `tags`, `description`.

    The class's shape must take the geometry ("any_shape" takes all). `extra` holds JSON keys kept for the round
    trip (ids, timestamps, labeler login).
    """

    geometry: Geometry
    obj_class: ObjClass
    tags: tuple[Tag, ...] = ()
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.geometry, Geometry):
            raise InvalidArgumentError(f"label geometry must be a Rectangle, Bitmap or Polygon; got {self.geometry!r}")
        if not isinstance(self.obj_class, ObjClass):
            raise InvalidArgumentError(f"label obj_class must be an ObjClass; got {self.obj_class!r}")
        if not self.obj_class.accepts(self.geometry.geometry_type):
            raise InvalidArgumentError(
                f"class {self.obj_class.name!r} is a {self.obj_class.shape} class; it cannot hold a "
                f"{self.geometry.geometry_type}"
            )
        tags = tuple(self.tags)
        if not all(isinstance(t, Tag) for t in tags):
            raise InvalidArgumentError(f"label tags must be Tag objects; got {tags!r}")
        object.__setattr__(self, "tags", tags)
        object.__setattr__(self, "extra", frozen(self.extra))

    def __hash__(self) -> int:
        return hash((self.geometry, self.obj_class.name, self.tags))

    @property
    def confidence(self) -> float | None:
        """The value of the "confidence" tag (a score in 0..1), or None."""
        for tag in self.tags:
            if tag.name == "confidence" and tag.value is not None:
                return float(tag.value)
        return None

    def to_bbox(self) -> Rectangle:
        return self.geometry.to_bbox()

    def clone(self, **changes: Any) -> Label:
        """A copy with the given fields (`geometry`, `obj_class`, `tags`, `description`, `extra`) replaced."""
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        out = {
            "classTitle": self.obj_class.name,
            "description": self.description,
            "tags": [t.to_json() for t in self.tags],
            "geometryType": self.geometry.geometry_type,
        }
        out.update(self.geometry.to_json())
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], meta: ProjectMeta | None = None, where: str = "object") -> Label:
        """From JSON. With a `meta`, the class must be there and take the geometry, and every tag must be there;
        without one, the class is built from `classTitle` and `geometryType`. Problems are `FormatError`s."""
        title = require(data, "classTitle", str, where)
        where = f"{where} (class {title!r})"
        geometry_type = data.get("geometryType", data.get("shape"))
        if not isinstance(geometry_type, str):
            raise FormatError(f"{where}: missing 'geometryType'")
        if meta is not None:
            obj_class = meta.get_obj_class(title)
            if obj_class is None:
                raise FormatError(f"{where}: class {title!r} is not in the project meta")
            if geometry_type in GEOMETRY_TYPES and not obj_class.accepts(geometry_type):
                raise FormatError(
                    f"{where}: class {title!r} is a {obj_class.shape} class in the project meta; "
                    f"this object is a {geometry_type}"
                )
        else:
            obj_class = None
        geometry = geometry_from_json(geometry_type, data, where)
        if obj_class is None:
            obj_class = ObjClass(title, geometry.geometry_type)
        tags = tags_from_json(data.get("tags", []), meta, where)
        description = optional(data, "description", str, "", where)
        return cls(geometry, obj_class, tags, description, extra_keys(data, _LABEL_KEYS))


@dataclass(frozen=True, eq=True)
class Annotation:
    """The annotation of one image: `img_size` (height, width) in pixels, `labels`, image tags `img_tags`,
    `description`. Immutable: `add_labels`, `add_tags` and `clone` return a new one."""

    img_size: tuple[int, int]
    labels: tuple[Label, ...] = ()
    img_tags: tuple[Tag, ...] = ()
    description: str = ""
    custom_data: Mapping[str, Any] = field(default_factory=dict, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        size = tuple(self.img_size)
        if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size):
            raise InvalidArgumentError(f"img_size must be (height, width) integers; got {self.img_size!r}")
        if size[0] < 0 or size[1] < 0:
            raise InvalidArgumentError(f"img_size must not be negative; got {self.img_size!r}")
        labels, tags = tuple(self.labels), tuple(self.img_tags)
        if not all(isinstance(lb, Label) for lb in labels):
            raise InvalidArgumentError("Annotation labels must be Label objects")
        if not all(isinstance(t, Tag) for t in tags):
            raise InvalidArgumentError("Annotation img_tags must be Tag objects")
        object.__setattr__(self, "img_size", (int(size[0]), int(size[1])))
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "img_tags", tags)
        object.__setattr__(self, "custom_data", frozen(self.custom_data))
        object.__setattr__(self, "extra", frozen(self.extra))

    def __hash__(self) -> int:
        return hash((self.img_size, self.labels, self.img_tags, self.description))

    @property
    def height(self) -> int:
        return self.img_size[0]

    @property
    def width(self) -> int:
        return self.img_size[1]

    def add_labels(self, labels: Iterable[Label]) -> Annotation:
        """A new annotation with `labels` appended."""
        return replace(self, labels=self.labels + tuple(labels))

    def add_label(self, label: Label) -> Annotation:
        return self.add_labels([label])

    def add_tags(self, tags: Iterable[Tag]) -> Annotation:
        """A new annotation with image tags `tags` appended."""
        return replace(self, img_tags=self.img_tags + tuple(tags))

    def clone(self, **changes: Any) -> Annotation:
        """A copy with the given fields (`img_size`, `labels`, `img_tags`, `description`, ...) replaced."""
        return replace(self, **changes)

    def required_meta(self, project_type: str = "images") -> ProjectMeta:
        """A `ProjectMeta` of the classes and tag metas this annotation uses (first definition of a name wins;
        the same class name with two shapes is a `FormatError`)."""
        return meta_of(
            [lb.obj_class for lb in self.labels],
            [t.meta for t in self.img_tags] + [t.meta for lb in self.labels for t in lb.tags],
            project_type,
        )

    def to_json(self) -> dict[str, Any]:
        out = {
            "description": self.description,
            "tags": [t.to_json() for t in self.img_tags],
            "size": {"height": self.img_size[0], "width": self.img_size[1]},
            "objects": [lb.to_json() for lb in self.labels],
            "customBigData": dict(self.custom_data),
        }
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], meta: ProjectMeta | None = None) -> Annotation:
        """From Supervisely annotation JSON.

        With a `meta`: a class not in it, a class whose shape does not take the object's geometry (unless
        "any_shape"), an unknown `geometryType` or a tag not in it is a `FormatError` saying which object and what.
        Without a meta, classes come from `classTitle` + `geometryType` and tag metas from the values.
        """
        if not isinstance(data, dict):
            raise FormatError(f"annotation: expected a JSON object; got {type(data).__name__}")
        size = require(data, "size", dict, "annotation")
        height = require(size, "height", int, "annotation size")
        width = require(size, "width", int, "annotation size")
        objects = optional(data, "objects", list, [], "annotation")
        labels = tuple(Label.from_json(obj, meta, f"object {i}") for i, obj in enumerate(objects))
        tags = tags_from_json(data.get("tags", []), meta, "image")
        try:
            return cls(
                img_size=(height, width),
                labels=labels,
                img_tags=tags,
                description=optional(data, "description", str, "", "annotation"),
                custom_data=optional(data, "customBigData", (dict, type(None)), None, "annotation") or {},
                extra=extra_keys(data, _ANN_KEYS),
            )
        except InvalidArgumentError as exc:
            raise FormatError(f"annotation: {exc}") from None


def meta_of(obj_classes: Iterable[ObjClass], tag_metas: Iterable[TagMeta], project_type: str = "images") -> ProjectMeta:
    """A `ProjectMeta` of the given classes and tag metas, duplicates by name dropped (the first one wins); a name
    used with two shapes or two value types is a `FormatError`."""
    meta = ProjectMeta(project_type=project_type)
    classes: dict[str, ObjClass] = {}
    for c in obj_classes:
        classes.setdefault(c.name, c)
        if classes[c.name].shape != c.shape:
            raise FormatError(f"class {c.name!r} is used as a {classes[c.name].shape} and as a {c.shape}")
    tags: dict[str, TagMeta] = {}
    for t in tag_metas:
        tags.setdefault(t.name, t)
        if tags[t.name].value_type != t.value_type:
            raise FormatError(f"tag {t.name!r} is used as a {tags[t.name].value_type} and as a {t.value_type} tag")
    return replace(meta, obj_classes=tuple(classes.values()), tag_metas=tuple(tags.values()))
