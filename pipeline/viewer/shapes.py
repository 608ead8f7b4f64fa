"""Annotation objects as the pages draw them: stored Supervisely JSON to small, flat drawing records.

The viewer reads the stored JSON itself (not `Annotation.from_json`): it must show what is stored, including
geometries the annotation model does not handle (points, lines, graphs of keypoints), and one broken object must
not hide the others. Every record:

    {"index", "class", "color" "#RRGGBB", "geometry" (the JSON's geometryType), "predicted" (has a confidence tag),
     "confidence" (float or None), "tags" [{"name", "value"}], "bbox" [x1, y1, x2, y2] pixels or None,
     "shape": {"kind": "rect" | "polygon" | "bitmap" | "point" | "line" | "graph" | "none", ...},
     "error": why the object cannot be drawn (only when it cannot)}

Shapes (pixels of the full image, x right, y down):
    rect     {"x1", "y1", "x2", "y2"}
    polygon  {"exterior": [[x, y], ...], "interior": [[[x, y], ...], ...]}
    bitmap   {"x", "y", "width", "height", "png": data URL of the mask in the class colour (full records only)}
    point    {"x", "y"}
    line     {"points": [[x, y], ...]}
    graph    {"nodes": [{"id", "x", "y", "label"}], "edges": [[src id, dst id], ...]}
In grid (summary) records, polygons and lines keep at most `SUMMARY_POINTS` points and bitmaps no mask.
"""

from __future__ import annotations

import base64
import io
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "MASK_ALPHA",
    "SUMMARY_POINTS",
    "annotation_objects",
    "bitmap_png",
    "bitmap_size",
    "class_colors",
    "confidence_of",
    "object_view",
    "track_color",
]

SUMMARY_POINTS = 48  # a 256-pixel thumbnail shows no more detail than this
MASK_ALPHA = 110  # of 255: masks let the image show through


def class_colors(classes: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """{class name: class record} of `browse.project_classes` records."""
    return {c["name"]: c for c in classes}


def track_color(key: str) -> str:
    """The colour of a video object (track) by its key: the same key, the same colour, on every frame and page."""
    from pipeline.annotation._util import color_for_name

    return color_for_name(f"track:{key}")


def _color(name: str, classes: Mapping[str, Mapping[str, Any]]) -> str:
    from pipeline.annotation._util import color_for_name

    cls = classes.get(name)
    return str(cls["color"]) if cls and cls.get("color") else color_for_name(name)


def confidence_of(tags: Any) -> float | None:
    """The value of the `confidence` tag among Supervisely tag JSONs, or None (no such tag, or not a number)."""
    if not isinstance(tags, list):
        return None
    for tag in tags:
        if isinstance(tag, dict) and tag.get("name") == "confidence":
            value = tag.get("value")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                return float(value)
    return None


def _tags(tags: Any) -> list[dict[str, Any]]:
    if not isinstance(tags, list):
        return []
    return [{"name": t.get("name"), "value": t.get("value")} for t in tags if isinstance(t, dict)]


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"not a coordinate: {v!r}")
    return float(v)


def _points(seq: Any) -> list[list[float]]:
    if not isinstance(seq, list):
        raise ValueError("points must be a list of [x, y]")
    out = []
    for p in seq:
        if not isinstance(p, list) or len(p) != 2:
            raise ValueError(f"not a point [x, y]: {p!r}")
        out.append([_num(p[0]), _num(p[1])])
    return out


def _decimate(points: list[list[float]], limit: int) -> list[list[float]]:
    if len(points) <= limit:
        return points
    step = len(points) / limit
    return [points[int(i * step)] for i in range(limit)]


def _bbox(points: list[list[float]]) -> list[float] | None:
    if not points:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return [min(xs), min(ys), max(xs), max(ys)]


def _png_bytes(data: str) -> bytes:
    raw = base64.b64decode(data, validate=False)
    try:
        return zlib.decompress(raw)
    except zlib.error:
        return raw  # a plain base64 PNG (older writers)


def bitmap_size(data: str) -> tuple[int, int]:
    """(width, height) of a Supervisely bitmap's mask, read from the PNG header alone: base64 decoded, and only
    the first bytes of the zlib stream inflated (a grid page needs the boxes of its bitmaps, not their pixels)."""
    raw = base64.b64decode(data, validate=False)
    try:
        head = zlib.decompressobj().decompress(raw, 32)
    except zlib.error:
        head = raw[:32]  # not compressed
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError("bitmap data is not a PNG")
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def bitmap_png(data: str, color: str) -> tuple[str, int, int]:
    """(data URL, width, height) of a bitmap's mask as a two-colour PNG: transparent, and `color` at `MASK_ALPHA`.
    Any mask encoding `decode_bitmap` reads is accepted."""
    import numpy as np
    from PIL import Image

    from pipeline.annotation._util import hex_to_rgb
    from pipeline.annotation.geometry import decode_bitmap

    mask = decode_bitmap(data)
    img = Image.fromarray(mask.astype(np.uint8))  # "L", values 0/1: putpalette makes them palette indices
    r, g, b = hex_to_rgb(color)
    img.putpalette([0, 0, 0, r, g, b])
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=bytes([0, MASK_ALPHA]))
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return url, int(mask.shape[1]), int(mask.shape[0])


def _exterior(geom: Mapping[str, Any]) -> tuple[list[list[float]], list[list[list[float]]]]:
    pts = geom.get("points")
    if not isinstance(pts, dict):
        raise ValueError("missing 'points'")
    interior = pts.get("interior") or []
    return _points(pts.get("exterior")), [_points(h) for h in interior] if isinstance(interior, list) else []


def _shape(kind: str, geom: Mapping[str, Any], color: str, cls: Mapping[str, Any] | None,
           full: bool) -> tuple[dict[str, Any], list[float] | None]:
    """(shape, bbox) of one geometry JSON; ValueError when it is malformed."""
    if kind == "rectangle":
        ext, _ = _exterior(geom)
        if len(ext) != 2:
            raise ValueError("a rectangle has two points")
        (x1, y1), (x2, y2) = ext
        box = [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]
        return {"kind": "rect", "x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3]}, box
    if kind == "polygon":
        ext, holes = _exterior(geom)
        if not full:
            return {"kind": "polygon", "exterior": _decimate(ext, SUMMARY_POINTS), "interior": []}, _bbox(ext)
        return {"kind": "polygon", "exterior": ext, "interior": holes}, _bbox(ext)
    if kind == "bitmap":
        return _bitmap(geom, color, full)
    if kind == "point":
        ext, _ = _exterior(geom)
        if len(ext) != 1:
            raise ValueError("a point has one point")
        x, y = ext[0]
        return {"kind": "point", "x": x, "y": y}, [x, y, x, y]
    if kind in ("line", "polyline"):
        ext, _ = _exterior(geom)
        pts = ext if full else _decimate(ext, SUMMARY_POINTS)
        return {"kind": "line", "points": pts}, _bbox(ext)
    if kind == "graph":
        return _graph(geom, cls)
    return {"kind": "none"}, None


def _bitmap(geom: Mapping[str, Any], color: str, full: bool) -> tuple[dict[str, Any], list[float]]:
    bitmap = geom.get("bitmap")
    if not isinstance(bitmap, dict) or not isinstance(bitmap.get("data"), str):
        raise ValueError("missing 'bitmap.data'")
    origin = bitmap.get("origin")
    if not isinstance(origin, list) or len(origin) != 2:
        raise ValueError("bitmap origin must be [x, y]")
    x, y = math.floor(_num(origin[0])), math.floor(_num(origin[1]))
    if full:
        png, w, h = bitmap_png(bitmap["data"], color)
        shape = {"kind": "bitmap", "x": x, "y": y, "width": w, "height": h, "png": png}
    else:
        w, h = bitmap_size(bitmap["data"])
        shape = {"kind": "bitmap", "x": x, "y": y, "width": w, "height": h}
    return shape, [x, y, x + w, y + h]


def _graph(geom: Mapping[str, Any], cls: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[float] | None]:
    nodes = geom.get("nodes")
    if not isinstance(nodes, dict):
        raise ValueError("missing 'nodes'")
    config = (cls or {}).get("geometry_config") or {}
    template = config.get("nodes") if isinstance(config.get("nodes"), dict) else {}
    out, pts = [], []
    for node_id, node in nodes.items():
        loc = node.get("loc") if isinstance(node, dict) else None
        if not isinstance(loc, list) or len(loc) != 2:
            raise ValueError(f"node {node_id!r} has no loc [x, y]")
        x, y = _num(loc[0]), _num(loc[1])
        label = (template.get(node_id) or {}).get("label") if isinstance(template.get(node_id), dict) else None
        out.append({"id": str(node_id), "x": x, "y": y, "label": label or str(node_id)})
        pts.append([x, y])
    edges = [[str(e.get("src")), str(e.get("dst"))] for e in config.get("edges") or []
             if isinstance(e, dict) and e.get("src") in nodes and e.get("dst") in nodes]
    return {"kind": "graph", "nodes": out, "edges": edges}, _bbox(pts)


def object_view(obj: Any, index: int, classes: Mapping[str, Mapping[str, Any]], full: bool = True,
                geometry: Mapping[str, Any] | None = None, class_name: str | None = None,
                tags: Any = None) -> dict[str, Any]:
    """The drawing record of one object JSON (see the module docstring). For video figures, `geometry`,
    `class_name` and `tags` come from the figure and its object. Never raises: a malformed object gets
    `shape.kind == "none"` and an `error`."""
    obj = obj if isinstance(obj, dict) else {}
    name = class_name if class_name is not None else str(obj.get("classTitle", "?"))
    tags = obj.get("tags") if tags is None else tags
    kind = str(obj.get("geometryType", ""))
    color = _color(name, classes)
    conf = confidence_of(tags)
    out: dict[str, Any] = {"index": index, "class": name, "color": color, "geometry": kind,
                           "predicted": conf is not None, "confidence": conf, "tags": _tags(tags)}
    try:
        out["shape"], box = _shape(kind, geometry if geometry is not None else obj, color, classes.get(name), full)
        if out["shape"]["kind"] == "none":
            out["error"] = f"a {kind or 'missing'} geometry is not drawn by the viewer"
    except Exception as exc:  # any malformed geometry: this object is listed with why, the others drawn
        out["shape"], box = {"kind": "none"}, None
        out["error"] = f"cannot draw this {kind or 'object'}: {exc}"
    out["bbox"] = box
    return out


def annotation_objects(ann: Mapping[str, Any] | None, classes: Mapping[str, Mapping[str, Any]],
                       full: bool = True) -> list[dict[str, Any]]:
    """The drawing records of an image annotation JSON's objects, in its order (`index` is the position)."""
    objects = (ann or {}).get("objects") if isinstance(ann, dict) else None
    if not isinstance(objects, list):
        return []
    return [object_view(o, i, classes, full) for i, o in enumerate(objects)]
