"""Geometries of the Supervisely format (`Rectangle`, `Bitmap`, `Polygon`) and IoU helpers.

Coordinates are pixels of the original image, x to the right and y down, continuous: a pixel (col, row) covers
[col, col + 1) x [row, row + 1). A `Rectangle` therefore spans [left, right) x [top, bottom); `to_xyxy()` is the
`x1, y1, x2, y2` of the model outputs. Every geometry has `to_bbox() -> Rectangle`, `to_mask(h, w) -> (h, w) bool`
(the full-image rasterisation, clipped to the image) and `area` (pixels).

JSON (what Supervisely writes; see the SDK's `supervisely/geometry/rectangle.py`, `polygon.py`, `bitmap.py`):
    rectangle  {"points": {"exterior": [[left, top], [right, bottom]], "interior": []}}
    polygon    {"points": {"exterior": [[x, y], ...], "interior": [[[x, y], ...], ...]}}
    bitmap     {"bitmap": {"data": base64(zlib(png)), "origin": [x, y]}}
"""

from __future__ import annotations

import base64
import io
import math
import zlib
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from pipeline.annotation._util import as_float, json_num, require
from pipeline.exceptions import FormatError, InvalidArgumentError

__all__ = [
    "GEOMETRY_TYPES",
    "Bitmap",
    "Geometry",
    "Polygon",
    "Rectangle",
    "box_iou",
    "box_iou_matrix",
    "geometry_from_json",
    "geometry_iou",
    "mask_iou",
]


class Geometry:
    """Base of the geometries. Immutable; subclasses set `geometry_type` (the JSON `geometryType`)."""

    geometry_type: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        """The geometry keys of the JSON (`points` or `bitmap`), without `geometryType`."""
        raise NotImplementedError

    def to_bbox(self) -> Rectangle:
        """The bounding box, in pixels."""
        raise NotImplementedError

    def to_mask(self, height: int, width: int) -> np.ndarray:
        """(height, width) bool mask of the pixels the geometry covers, clipped to the image."""
        return self._window_mask(0, 0, width, height)

    @property
    def area(self) -> float:
        """Area in pixels."""
        raise NotImplementedError

    def _window_mask(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """(y1 - y0, x1 - x0) bool mask of the window [x0, x1) x [y0, y1) of the full rasterisation."""
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------------- rectangle


class Rectangle(Geometry):
    """An axis-aligned box: `top <= bottom`, `left <= right`, floats in pixels (right and bottom exclusive).

    `Rectangle.from_xyxy(x1, y1, x2, y2)` builds one from model output; `to_xyxy()` gives it back.
    """

    geometry_type: ClassVar[str] = "rectangle"
    __slots__ = ("top", "left", "bottom", "right")

    def __init__(self, top: float, left: float, bottom: float, right: float):
        top, left = as_float(top, "rectangle top"), as_float(left, "rectangle left")
        bottom, right = as_float(bottom, "rectangle bottom"), as_float(right, "rectangle right")
        if top > bottom or left > right:
            raise InvalidArgumentError(
                f"rectangle needs top <= bottom and left <= right; got top={top}, left={left}, "
                f"bottom={bottom}, right={right}"
            )
        object.__setattr__(self, "top", top)
        object.__setattr__(self, "left", left)
        object.__setattr__(self, "bottom", bottom)
        object.__setattr__(self, "right", right)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Rectangle is immutable")

    def __reduce__(self) -> tuple:  # pickling (Ray) goes through the constructor: the slots are read-only
        return (Rectangle, (self.top, self.left, self.bottom, self.right))

    @classmethod
    def from_xyxy(cls, x1: float, y1: float, x2: float, y2: float) -> Rectangle:
        """From `x1, y1, x2, y2` pixels (top-left, bottom-right)."""
        return cls(top=y1, left=x1, bottom=y2, right=x2)

    def to_xyxy(self) -> tuple[float, float, float, float]:
        """`(x1, y1, x2, y2)` = `(left, top, right, bottom)` in pixels."""
        return (self.left, self.top, self.right, self.bottom)

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def area(self) -> float:
        return self.width * self.height

    def to_bbox(self) -> Rectangle:
        return self

    def _window_mask(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        mask = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=bool)
        c0, c1 = max(math.floor(self.left), x0), min(math.ceil(self.right), x1)
        r0, r1 = max(math.floor(self.top), y0), min(math.ceil(self.bottom), y1)
        if c1 > c0 and r1 > r0:
            mask[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0] = True
        return mask

    def to_json(self) -> dict[str, Any]:
        return {
            "points": {
                "exterior": [[json_num(self.left), json_num(self.top)], [json_num(self.right), json_num(self.bottom)]],
                "interior": [],
            }
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "rectangle") -> Rectangle:
        points = require(data, "points", dict, where)
        exterior = require(points, "exterior", list, f"{where}.points")
        if len(exterior) != 2:
            raise FormatError(f"{where}: a rectangle needs 2 exterior points; got {len(exterior)}")
        (left, top), (right, bottom) = (_point(p, f"{where}.points.exterior") for p in exterior)
        try:
            return cls(top=top, left=left, bottom=bottom, right=right)
        except InvalidArgumentError as exc:
            raise FormatError(f"{where}: {exc}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rectangle) and self.to_xyxy() == other.to_xyxy()

    def __hash__(self) -> int:
        return hash(("rectangle",) + self.to_xyxy())

    def __repr__(self) -> str:
        return f"Rectangle(top={self.top:g}, left={self.left:g}, bottom={self.bottom:g}, right={self.right:g})"


# -------------------------------------------------------------------------------------------------------- bitmap


class Bitmap(Geometry):
    """A mask: `data` (h, w) bool, its top-left pixel at `origin` = (x, y) of the image (integers).

    `Bitmap.from_mask(full_mask)` crops a full-image mask to its bounding box. `data` must hold at least one True
    pixel (as in Supervisely, which cannot store an empty bitmap). The array is kept read-only.
    """

    geometry_type: ClassVar[str] = "bitmap"
    __slots__ = ("data", "origin")

    def __init__(self, data: np.ndarray, origin: Sequence[int] = (0, 0)):
        arr = np.asarray(data)
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise InvalidArgumentError(f"bitmap data must be a non-empty 2-D array; got shape {arr.shape}")
        arr = arr.astype(bool, copy=True)
        if not arr.any():
            raise InvalidArgumentError("bitmap data has no True pixel; an empty mask is not an object")
        arr.setflags(write=False)
        if len(origin) != 2:
            raise InvalidArgumentError(f"bitmap origin must be (x, y); got {origin!r}")
        ox, oy = (as_float(v, "bitmap origin") for v in origin)
        object.__setattr__(self, "data", arr)
        object.__setattr__(self, "origin", (math.floor(ox), math.floor(oy)))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Bitmap is immutable")

    def __reduce__(self) -> tuple:
        return (Bitmap, (self.data, self.origin))

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> Bitmap:
        """From a full-image (H, W) mask (bool or 0/1): cropped to its bounding box, origin = (left, top)."""
        mask = np.asarray(mask).astype(bool, copy=False)
        if mask.ndim != 2:
            raise InvalidArgumentError(f"mask must be (H, W); got shape {mask.shape}")
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            raise InvalidArgumentError("mask has no True pixel; an empty mask is not an object")
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        return cls(mask[top:bottom, left:right], origin=(int(left), int(top)))

    @property
    def area(self) -> float:
        return float(np.count_nonzero(self.data))

    def to_bbox(self) -> Rectangle:
        """The box of the True pixels: [x, x + w) x [y, y + h) in image pixels."""
        rows, cols = np.flatnonzero(self.data.any(axis=1)), np.flatnonzero(self.data.any(axis=0))
        x, y = self.origin
        return Rectangle(top=y + rows[0], left=x + cols[0], bottom=y + rows[-1] + 1, right=x + cols[-1] + 1)

    def _window_mask(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        out = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=bool)
        x, y = self.origin
        h, w = self.data.shape
        c0, c1, r0, r1 = max(x, x0), min(x + w, x1), max(y, y0), min(y + h, y1)
        if c1 > c0 and r1 > r0:
            out[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0] = self.data[r0 - y : r1 - y, c0 - x : c1 - x]
        return out

    def to_json(self) -> dict[str, Any]:
        return {"bitmap": {"data": encode_bitmap(self.data), "origin": [int(self.origin[0]), int(self.origin[1])]}}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "bitmap") -> Bitmap:
        bitmap = require(data, "bitmap", dict, where)
        encoded = require(bitmap, "data", str, f"{where}.bitmap")
        origin = require(bitmap, "origin", list, f"{where}.bitmap")
        if len(origin) != 2:
            raise FormatError(f"{where}: bitmap origin must be [x, y]; got {origin!r}")
        x, y = _point(origin, f"{where}.bitmap.origin")
        mask = decode_bitmap(encoded, where)
        try:
            return cls(mask, origin=(x, y))
        except InvalidArgumentError as exc:
            raise FormatError(f"{where}: {exc}") from None

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Bitmap)
            and self.origin == other.origin
            and self.data.shape == other.data.shape
            and bool(np.array_equal(self.data, other.data))
        )

    def __hash__(self) -> int:
        return hash(("bitmap", self.origin, self.data.shape, self.data.tobytes()))

    def __repr__(self) -> str:
        return f"Bitmap(shape={self.data.shape}, origin={self.origin}, area={int(self.area)})"


def encode_bitmap(mask: np.ndarray) -> str:
    """The Supervisely SDK's encoding of a (h, w) mask, byte for byte (`Bitmap.data_2_base64` in
    `supervisely/geometry/bitmap.py`): a palette PNG (black, white; index 0 transparent), zlib-compressed, base64."""
    from PIL import Image

    img = Image.fromarray(np.asarray(mask, dtype=np.uint8))
    img.putpalette([0, 0, 0, 255, 255, 255])
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0, optimize=0)
    return base64.b64encode(zlib.compress(buf.getvalue())).decode("utf-8")


def decode_bitmap(encoded: str, where: str = "bitmap") -> np.ndarray:
    """(h, w) bool mask from the `data` of a bitmap. Accepts what the SDK writes (a palette PNG: mask = index > 0),
    PNGs with an alpha channel (RGBA/LA: mask = alpha > 0), gray or RGB PNGs (any channel > 0), and a base64 PNG that
    is not zlib-compressed (older writers). Anything else is a `FormatError` saying `where`."""
    from PIL import Image, UnidentifiedImageError

    try:
        raw = base64.b64decode(encoded, validate=False)
    except (ValueError, TypeError) as exc:
        raise FormatError(f"{where}: bitmap data is not base64 ({exc})") from None
    try:
        png = zlib.decompress(raw)
    except zlib.error:
        png = raw  # not compressed: a plain base64 PNG
    try:
        with Image.open(io.BytesIO(png)) as img:
            img.load()
            bands = img.getbands()
            if "A" in bands:  # RGBA, LA, PA: the mask is where the pixel is not transparent
                arr = np.asarray(img.getchannel("A")) > 0
            elif img.mode in ("P", "L", "1", "I", "I;16", "F"):  # the SDK writes P: index 1 (white) is the mask
                arr = np.asarray(img) > 0
            else:
                arr = np.asarray(img.convert("RGB")).any(axis=-1)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise FormatError(f"{where}: bitmap data is not a PNG mask ({exc})") from None
    if arr.ndim != 2:
        raise FormatError(f"{where}: bitmap data decodes to shape {arr.shape}; expected (h, w)")
    return arr.astype(bool, copy=False)


# ------------------------------------------------------------------------------------------------------- polygon


class Polygon(Geometry):
    """A polygon: `exterior` [(x, y), ...] (at least 3 points) and optional holes `interior` [[(x, y), ...], ...].

    `to_mask` fills the exterior with PIL `ImageDraw.polygon` and clears the holes.
    """

    geometry_type: ClassVar[str] = "polygon"
    __slots__ = ("exterior", "interior")

    def __init__(self, exterior: Sequence[Sequence[float]], interior: Sequence[Sequence[Sequence[float]]] = ()):
        ext = _ring(exterior, "polygon exterior")
        holes = tuple(_ring(ring, f"polygon interior {i}") for i, ring in enumerate(interior))
        object.__setattr__(self, "exterior", ext)
        object.__setattr__(self, "interior", holes)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Polygon is immutable")

    def __reduce__(self) -> tuple:
        return (Polygon, (self.exterior, self.interior))

    @property
    def area(self) -> float:
        return max(_shoelace(self.exterior) - sum(_shoelace(h) for h in self.interior), 0.0)

    def to_bbox(self) -> Rectangle:
        xs = [p[0] for p in self.exterior]
        ys = [p[1] for p in self.exterior]
        return Rectangle(top=min(ys), left=min(xs), bottom=max(ys), right=max(xs))

    def _window_mask(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        from PIL import Image, ImageDraw

        w, h = max(x1 - x0, 0), max(y1 - y0, 0)
        if w == 0 or h == 0:
            return np.zeros((h, w), dtype=bool)
        img = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(img)
        draw.polygon([(x - x0, y - y0) for x, y in self.exterior], fill=1, outline=1)
        for hole in self.interior:
            draw.polygon([(x - x0, y - y0) for x, y in hole], fill=0, outline=0)
        return np.asarray(img, dtype=np.uint8) > 0

    def to_json(self) -> dict[str, Any]:
        return {
            "points": {
                "exterior": [[json_num(x), json_num(y)] for x, y in self.exterior],
                "interior": [[[json_num(x), json_num(y)] for x, y in ring] for ring in self.interior],
            }
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "polygon") -> Polygon:
        points = require(data, "points", dict, where)
        exterior = require(points, "exterior", list, f"{where}.points")
        interior = points.get("interior", [])
        if not isinstance(interior, list):
            raise FormatError(f"{where}: points.interior must be a list of rings")
        ext = [_point(p, f"{where}.points.exterior") for p in exterior]
        holes = []
        for i, ring in enumerate(interior):
            if not isinstance(ring, list):
                raise FormatError(f"{where}: points.interior[{i}] must be a list of points")
            holes.append([_point(p, f"{where}.points.interior[{i}]") for p in ring])
        try:
            return cls(ext, holes)
        except InvalidArgumentError as exc:
            raise FormatError(f"{where}: {exc}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Polygon) and self.exterior == other.exterior and self.interior == other.interior

    def __hash__(self) -> int:
        return hash(("polygon", self.exterior, self.interior))

    def __repr__(self) -> str:
        return f"Polygon({len(self.exterior)} points, {len(self.interior)} holes)"


def _ring(points: Sequence[Sequence[float]], what: str) -> tuple[tuple[float, float], ...]:
    ring = []
    for p in points:
        if len(p) != 2:
            raise InvalidArgumentError(f"{what}: a point must be (x, y); got {p!r}")
        ring.append((as_float(p[0], f"{what} x"), as_float(p[1], f"{what} y")))
    if len(ring) < 3:
        raise InvalidArgumentError(f"{what} needs at least 3 points; got {len(ring)}")
    return tuple(ring)


def _shoelace(ring: Sequence[tuple[float, float]]) -> float:
    xs = np.array([p[0] for p in ring])
    ys = np.array([p[1] for p in ring])
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2.0)


def _point(p: Any, where: str) -> tuple[float, float]:
    if not isinstance(p, list) or len(p) != 2:
        raise FormatError(f"{where}: a point must be [x, y]; got {p!r:.80}")
    try:
        return as_float(p[0], "x"), as_float(p[1], "y")
    except InvalidArgumentError as exc:
        raise FormatError(f"{where}: {exc}") from None


GEOMETRY_TYPES: dict[str, type[Geometry]] = {"rectangle": Rectangle, "bitmap": Bitmap, "polygon": Polygon}
"""The `geometryType` values this package reads and writes, and their classes."""


def geometry_from_json(geometry_type: str, data: dict[str, Any], where: str = "geometry") -> Geometry:
    """The geometry of type `geometry_type` from its JSON keys; an unknown type is a `FormatError` naming it."""
    cls = GEOMETRY_TYPES.get(geometry_type)
    if cls is None:
        raise FormatError(
            f"{where}: unknown geometryType {geometry_type!r}; supported: {', '.join(sorted(GEOMETRY_TYPES))}"
        )
    return cls.from_json(data, where)


# ----------------------------------------------------------------------------------------------------------- IoU


def box_iou(a_xyxy: Sequence[float], b_xyxy: Sequence[float]) -> float:
    """IoU of two boxes `x1, y1, x2, y2` (pixels). Two empty boxes have IoU 0."""
    ax1, ay1, ax2, ay2 = (float(v) for v in a_xyxy)
    bx1, by1, bx2, by2 = (float(v) for v in b_xyxy)
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1) + max(0.0, bx2 - bx1) * max(0.0, by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) float64 IoU of every box of `a` (N, 4) with every box of `b` (M, 4), boxes `x1, y1, x2, y2`."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def mask_iou(a_mask: np.ndarray, b_mask: np.ndarray) -> float:
    """IoU of two bool masks of the same shape. Two empty masks have IoU 0."""
    a, b = np.asarray(a_mask, dtype=bool), np.asarray(b_mask, dtype=bool)
    if a.shape != b.shape:
        raise InvalidArgumentError(f"masks must have the same shape; got {a.shape} and {b.shape}")
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def geometry_iou(g1: Geometry, g2: Geometry, img_h: int, img_w: int) -> float:
    """IoU of two geometries on an (img_h, img_w) image.

    Rectangle-rectangle: box IoU (exact, sub-pixel). Any pair with a bitmap or polygon: IoU of the rasterised masks
    (a rectangle is filled in as a mask), computed only over the window of the two boxes, so it stays cheap on
    large images.
    """
    if isinstance(g1, Rectangle) and isinstance(g2, Rectangle):
        return box_iou(g1.to_xyxy(), g2.to_xyxy())
    b1, b2 = g1.to_bbox(), g2.to_bbox()
    x0 = max(min(math.floor(b1.left), math.floor(b2.left)), 0)
    y0 = max(min(math.floor(b1.top), math.floor(b2.top)), 0)
    x1 = min(max(math.ceil(b1.right), math.ceil(b2.right)) + 1, img_w)
    y1 = min(max(math.ceil(b1.bottom), math.ceil(b2.bottom)) + 1, img_h)
    if x1 <= x0 or y1 <= y0:
        return 0.0
    return mask_iou(g1._window_mask(x0, y0, x1, y1), g2._window_mask(x0, y0, x1, y1))
