"""Classes, tags and the project meta of the Supervisely format: `ObjClass`, `TagMeta`, `Tag`, `ProjectMeta`.

JSON as Supervisely writes it (SDK: `supervisely/annotation/obj_class.py`, `tag_meta.py`, `tag.py`,
`supervisely/project/project_meta.py`):
    class     {"title", "shape", "color", "geometry_config": {}, "hotkey": "", "description": ""} (+ "id")
    tag meta  {"name", "value_type", "color", "values" (oneof_string only), "applicable_type", "classes", "hotkey"}
    tag       {"name", "value"} ("value" absent when None)
    meta      {"classes": [...], "tags": [...], "projectType": "images" | "videos"}
Keys this model does not interpret are kept (`extra`) and written back, so a read-write round trip is lossless.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.annotation._util import check_color, color_for_name, extra_keys, frozen, optional, require
from pipeline.exceptions import FormatError, InvalidArgumentError

__all__ = ["CONFIDENCE_TAG", "SHAPES", "TAG_VALUE_TYPES", "ObjClass", "ProjectMeta", "Tag", "TagMeta"]

SHAPES = ("rectangle", "bitmap", "polygon", "graph", "any_shape")
"""Class shapes: a geometry type, or "any_shape" for a class that takes any geometry."""

OTHER_SDK_SHAPES = ("point", "line", "polyline", "cuboid", "cuboid_2d", "cuboid_3d", "alpha_mask",
                    "multichannelBitmap", "oriented_bbox", "point_3d", "polyline_3d", "mask_3d", "pointcloud",
                    "point_cloud", "closed_surface_mesh", "multipolygon")
"""Other Supervisely shapes (`supervisely/annotation/json_geometries_map.py`): a class of such a shape is read from
meta.json and kept, so real projects import; an object of such a geometry is an "unknown geometryType" error."""

TAG_VALUE_TYPES = ("none", "any_number", "any_string", "oneof_string", "date")
"""Tag value types. "date" (an ISO date string) is read because the SDK writes it; the others as in the SDK."""

APPLICABLE_TYPES = ("all", "imagesOnly", "objectsOnly")
PROJECT_TYPES = ("images", "videos")

_CLASS_KEYS = ("title", "shape", "color", "geometry_config", "hotkey", "description", "id")
_TAG_META_KEYS = ("name", "value_type", "color", "values", "applicable_type", "classes", "hotkey")
_TAG_KEYS = ("name", "value")
_META_KEYS = ("classes", "tags", "projectType")


def _frozen_extra(extra: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return frozen(extra)


# ------------------------------------------------------------------------------------------------------ ObjClass


@dataclass(frozen=True)
class ObjClass:
    """An object class: `name`, `shape` (one of `SHAPES`), `color` "#RRGGBB" (derived from the name when None)."""

    name: str
    shape: str
    color: str | None = None
    geometry_config: Mapping[str, Any] = field(default_factory=dict)
    hotkey: str = ""
    description: str = ""
    id: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=True, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidArgumentError(f"class name must be a non-empty string; got {self.name!r}")
        if self.shape not in SHAPES and self.shape not in OTHER_SDK_SHAPES:
            raise InvalidArgumentError(f"class {self.name!r}: shape must be one of {SHAPES}; got {self.shape!r}")
        color = color_for_name(self.name) if self.color is None else check_color(self.color, f"class {self.name!r}")
        object.__setattr__(self, "color", color)
        object.__setattr__(self, "geometry_config", _frozen_extra(self.geometry_config))
        object.__setattr__(self, "extra", _frozen_extra(self.extra))

    def __hash__(self) -> int:
        return hash((self.name, self.shape, self.color))

    def accepts(self, geometry_type: str) -> bool:
        """True if a geometry of `geometry_type` may belong to this class."""
        return self.shape == "any_shape" or self.shape == geometry_type

    def to_json(self) -> dict[str, Any]:
        out = {
            "title": self.name,
            "shape": self.shape,
            "color": self.color,
            "geometry_config": dict(self.geometry_config),
            "hotkey": self.hotkey,
            "description": self.description,
        }
        if self.id is not None:
            out["id"] = self.id
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "class") -> ObjClass:
        name = require(data, "title", str, where)
        where = f"{where} {name!r}"
        shape = require(data, "shape", str, where)
        if shape not in SHAPES and shape not in OTHER_SDK_SHAPES:
            raise FormatError(f"{where}: unknown shape {shape!r}; supported: {', '.join(SHAPES)}")
        try:
            return cls(
                name=name,
                shape=shape,
                color=optional(data, "color", str, None, where),
                geometry_config=optional(data, "geometry_config", (dict, type(None)), None, where) or {},
                hotkey=optional(data, "hotkey", str, "", where),
                description=optional(data, "description", str, "", where),
                id=optional(data, "id", int, None, where),
                extra=extra_keys(data, _CLASS_KEYS),
            )
        except InvalidArgumentError as exc:
            raise FormatError(f"{where}: {exc}") from None


# ------------------------------------------------------------------------------------------------------- TagMeta


@dataclass(frozen=True)
class TagMeta:
    """A tag definition: `name`, `value_type` (one of `TAG_VALUE_TYPES`), `possible_values` (oneof_string only),
    `color`, `applicable_type` ("all", "imagesOnly", "objectsOnly") and the `classes` it applies to."""

    name: str
    value_type: str
    possible_values: tuple[str, ...] | None = None
    color: str | None = None
    applicable_type: str = "all"
    classes: tuple[str, ...] = ()
    hotkey: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidArgumentError(f"tag name must be a non-empty string; got {self.name!r}")
        if self.value_type not in TAG_VALUE_TYPES:
            raise InvalidArgumentError(
                f"tag {self.name!r}: value_type must be one of {TAG_VALUE_TYPES}; got {self.value_type!r}"
            )
        if self.value_type == "oneof_string":
            if not self.possible_values or not all(isinstance(v, str) for v in self.possible_values):
                raise InvalidArgumentError(f"tag {self.name!r}: oneof_string needs possible_values, a list of strings")
            object.__setattr__(self, "possible_values", tuple(self.possible_values))
        elif self.possible_values is not None:
            raise InvalidArgumentError(f"tag {self.name!r}: possible_values is only for value_type 'oneof_string'")
        if self.applicable_type not in APPLICABLE_TYPES:
            raise InvalidArgumentError(
                f"tag {self.name!r}: applicable_type must be one of {APPLICABLE_TYPES}; got {self.applicable_type!r}"
            )
        color = color_for_name(self.name) if self.color is None else check_color(self.color, f"tag {self.name!r}")
        object.__setattr__(self, "color", color)
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "extra", _frozen_extra(self.extra))

    def __hash__(self) -> int:
        return hash((self.name, self.value_type, self.possible_values))

    def check_value(self, value: Any) -> None:
        """Raise `InvalidArgumentError` if `value` does not fit `value_type`."""
        vt = self.value_type
        ok = (
            (vt == "none" and value is None)
            or (vt == "any_number" and isinstance(value, (int, float)) and not isinstance(value, bool))
            or (vt in ("any_string", "date") and isinstance(value, str))
            or (vt == "oneof_string" and value in (self.possible_values or ()))
        )
        if not ok:
            allowed = f" (one of {list(self.possible_values or ())})" if vt == "oneof_string" else ""
            raise InvalidArgumentError(f"tag {self.name!r} takes a {vt} value{allowed}; got {value!r}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "value_type": self.value_type, "color": self.color}
        if self.value_type == "oneof_string":
            out["values"] = list(self.possible_values or ())
        out.update(applicable_type=self.applicable_type, classes=list(self.classes), hotkey=self.hotkey)
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "tag meta") -> TagMeta:
        name = require(data, "name", str, where)
        where = f"{where} {name!r}"
        value_type = require(data, "value_type", str, where)
        values = optional(data, "values", list, None, where)
        try:
            return cls(
                name=name,
                value_type=value_type,
                possible_values=tuple(values) if value_type == "oneof_string" and values is not None else None,
                color=optional(data, "color", str, None, where),
                applicable_type=optional(data, "applicable_type", str, "all", where),
                classes=tuple(optional(data, "classes", list, [], where)),
                hotkey=optional(data, "hotkey", str, "", where),
                # "values" on a tag that is not oneof_string is not ours to interpret: keep it as it was
                extra=extra_keys(data, _TAG_META_KEYS if value_type == "oneof_string" else set(_TAG_META_KEYS) - {"values"}),
            )
        except InvalidArgumentError as exc:
            raise FormatError(f"{where}: {exc}") from None


CONFIDENCE_TAG = TagMeta("confidence", "any_number")
"""The tag a predicted object carries its score in (`{"name": "confidence", "value": 0.93}`)."""


# ----------------------------------------------------------------------------------------------------------- Tag


@dataclass(frozen=True, init=False)
class Tag:
    """A tag on an image or object: its `meta` and a `value` that fits `meta.value_type`.

    `Tag("confidence", 0.93)`: a name instead of a `TagMeta` builds the meta from the value's type.
    """

    meta: TagMeta
    value: Any = None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __init__(self, meta: TagMeta | str, value: Any = None, extra: Mapping[str, Any] | None = None):
        if isinstance(meta, str):
            meta = CONFIDENCE_TAG if meta == "confidence" else TagMeta(meta, _infer_value_type(value))
        if not isinstance(meta, TagMeta):
            raise InvalidArgumentError(f"tag meta must be a TagMeta or a name; got {meta!r}")
        if type(value).__module__ == "numpy":  # numpy scalars: a plain, JSON-serialisable value
            # str() of a float32 is its shortest repr ("0.93"), where .item() would give 0.9300000071525574
            value = float(str(value)) if getattr(value, "dtype", None) is not None and value.dtype.kind == "f" else value.item()
        meta.check_value(value)
        object.__setattr__(self, "meta", meta)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "extra", _frozen_extra(extra))

    def __hash__(self) -> int:
        return hash((self.meta.name, repr(self.value)))

    @property
    def name(self) -> str:
        return self.meta.name

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.meta.name}
        if self.value is not None:
            out["value"] = self.value
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], meta: ProjectMeta | None = None, where: str = "tag") -> Tag:
        """From JSON. With a `meta`, the tag must be defined there (`FormatError` otherwise) and its value must fit."""
        name = require(data, "name", str, where)
        value = data.get("value")
        where = f"{where} {name!r}"
        if meta is not None:
            tag_meta = meta.get_tag_meta(name)
            if tag_meta is None:
                raise FormatError(f"{where}: tag {name!r} is not in the project meta")
        try:
            if meta is None:
                tag_meta = CONFIDENCE_TAG if name == "confidence" else TagMeta(name, _infer_value_type(value))
            return cls(tag_meta, value, extra_keys(data, _TAG_KEYS))
        except InvalidArgumentError as exc:
            raise FormatError(f"{where}: {exc}") from None


def _infer_value_type(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "any_number"
    if isinstance(value, str):
        return "any_string"
    raise InvalidArgumentError(f"a tag value must be None, a number or a string; got {value!r}")


def tags_from_json(items: Any, meta: ProjectMeta | None, where: str) -> tuple[Tag, ...]:
    """A JSON list of tags; `FormatError` if it is not a list of tag objects."""
    if not isinstance(items, list):
        raise FormatError(f"{where}: 'tags' must be a list; got {type(items).__name__}")
    return tuple(Tag.from_json(t, meta, f"{where} tag {i}") for i, t in enumerate(items))


# --------------------------------------------------------------------------------------------------- ProjectMeta


@dataclass(frozen=True)
class ProjectMeta:
    """The classes and tag metas of a project, and its type ("images" or "videos"). Immutable: the `add_*` and
    `merge` methods return a new meta."""

    obj_classes: tuple[ObjClass, ...] = ()
    tag_metas: tuple[TagMeta, ...] = ()
    project_type: str = "images"
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        classes, tag_metas = tuple(self.obj_classes), tuple(self.tag_metas)
        for kinds, items in (("classes", classes), ("tags", tag_metas)):
            seen: set[str] = set()
            for item in items:
                if item.name in seen:
                    raise InvalidArgumentError(f"project meta has two {kinds} named {item.name!r}")
                seen.add(item.name)
        if self.project_type not in PROJECT_TYPES:
            raise InvalidArgumentError(f"projectType must be one of {PROJECT_TYPES}; got {self.project_type!r}")
        object.__setattr__(self, "obj_classes", classes)
        object.__setattr__(self, "tag_metas", tag_metas)
        object.__setattr__(self, "extra", _frozen_extra(self.extra))

    def __hash__(self) -> int:
        return hash((self.obj_classes, self.tag_metas, self.project_type))

    def get_obj_class(self, name: str) -> ObjClass | None:
        """The class named `name`, or None."""
        return next((c for c in self.obj_classes if c.name == name), None)

    def get_tag_meta(self, name: str) -> TagMeta | None:
        """The tag meta named `name`, or None."""
        return next((t for t in self.tag_metas if t.name == name), None)

    def add_obj_class(self, obj_class: ObjClass) -> ProjectMeta:
        """A meta with `obj_class` added; a class of that name already there is an `InvalidArgumentError`."""
        return self.add_obj_classes([obj_class])

    def add_obj_classes(self, obj_classes: Iterable[ObjClass]) -> ProjectMeta:
        new = tuple(obj_classes)
        for c in new:
            if self.get_obj_class(c.name) is not None:
                raise InvalidArgumentError(f"class {c.name!r} is already in the project meta")
        return replace(self, obj_classes=self.obj_classes + new)

    def add_tag_meta(self, tag_meta: TagMeta) -> ProjectMeta:
        """A meta with `tag_meta` added; a tag of that name already there is an `InvalidArgumentError`."""
        return self.add_tag_metas([tag_meta])

    def add_tag_metas(self, tag_metas: Iterable[TagMeta]) -> ProjectMeta:
        new = tuple(tag_metas)
        for t in new:
            if self.get_tag_meta(t.name) is not None:
                raise InvalidArgumentError(f"tag {t.name!r} is already in the project meta")
        return replace(self, tag_metas=self.tag_metas + new)

    def merge(self, other: ProjectMeta) -> ProjectMeta:
        """The union of both metas; on a shared name this meta's definition is kept.

        A class of the same name with another shape (unless ours is "any_shape"), or a tag of the same name with
        another value type, is a `FormatError` naming it (use `resolve_class` to pick `<name>_nn` instead). A
        oneof_string tag gets the union of both value lists.
        """
        classes = list(self.obj_classes)
        for c in other.obj_classes:
            mine = self.get_obj_class(c.name)
            if mine is None:
                classes.append(c)
            elif mine.shape != c.shape and mine.shape != "any_shape":
                raise FormatError(f"class {c.name!r} is a {mine.shape} in the project and a {c.shape} in the new meta")
        tags = list(self.tag_metas)
        for t in other.tag_metas:
            mine = self.get_tag_meta(t.name)
            if mine is None:
                tags.append(t)
            elif mine.value_type != t.value_type:
                raise FormatError(
                    f"tag {t.name!r} is a {mine.value_type} tag in the project and a {t.value_type} tag in the new meta"
                )
            elif mine.value_type == "oneof_string" and set(t.possible_values or ()) - set(mine.possible_values or ()):
                values = tuple(mine.possible_values or ()) + tuple(
                    v for v in t.possible_values or () if v not in (mine.possible_values or ())
                )
                tags[tags.index(mine)] = replace(mine, possible_values=values)
        if len(classes) == len(self.obj_classes) and tags == list(self.tag_metas):
            return self
        return replace(self, obj_classes=tuple(classes), tag_metas=tuple(tags))

    def resolve_class(self, name: str, shape: str) -> ObjClass:
        """The class to put a `shape` geometry of class `name` in: the existing class `name` if it takes that shape,
        else `<name>_nn` (and `<name>_nn_nn`, ... while those exist with yet another shape); the existing one if
        there, else a new `ObjClass` (not added: the caller merges it in)."""
        if shape not in SHAPES:
            raise InvalidArgumentError(f"shape must be one of {SHAPES}; got {shape!r}")
        candidate = name
        while True:
            existing = self.get_obj_class(candidate)
            if existing is None:
                return ObjClass(candidate, shape)
            if existing.shape == shape or existing.shape == "any_shape":
                return existing
            candidate = f"{candidate}_nn"

    def to_json(self) -> dict[str, Any]:
        out = {
            "classes": [c.to_json() for c in self.obj_classes],
            "tags": [t.to_json() for t in self.tag_metas],
            "projectType": self.project_type,
        }
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "meta") -> ProjectMeta:
        """From meta.json content; a malformed meta is a `FormatError` saying what is wrong."""
        if not isinstance(data, dict):
            raise FormatError(f"{where}: expected a JSON object; got {type(data).__name__}")
        classes = optional(data, "classes", list, [], where)
        tags = optional(data, "tags", list, [], where)
        project_type = optional(data, "projectType", (str, type(None)), None, where) or "images"
        if project_type not in PROJECT_TYPES:
            raise FormatError(f"{where}: projectType {project_type!r} is not supported; use one of {PROJECT_TYPES}")
        try:
            return cls(
                obj_classes=tuple(ObjClass.from_json(c, f"{where} class {i}") for i, c in enumerate(classes)),
                tag_metas=tuple(TagMeta.from_json(t, f"{where} tag {i}") for i, t in enumerate(tags)),
                project_type=project_type,
                extra=extra_keys(data, _META_KEYS),
            )
        except InvalidArgumentError as exc:
            raise FormatError(f"{where}: {exc}") from None
