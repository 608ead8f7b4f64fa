"""Drawing annotations and detections on images (PIL only): translucent masks, box outlines, "class 0.93" captions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.annotation._util import color_for_name, hex_to_rgb
from pipeline.annotation.annotation import Annotation
from pipeline.annotation.geometry import Rectangle
from pipeline.exceptions import InvalidArgumentError

__all__ = ["draw_annotation", "draw_boxes"]


def draw_annotation(
    image: np.ndarray,
    annotation: Annotation,
    *,
    alpha: float = 0.45,
    line_width: int | None = None,
    show_scores: bool = True,
) -> np.ndarray:
    """A copy of `image` (H, W, 3) uint8 RGB with the annotation's labels drawn in their class colours: bitmaps and
    polygons filled with opacity `alpha`, every label's box outlined, and its class name (and confidence when
    `show_scores` and the label has one) written above the box. `line_width` None scales with the image size."""
    h, w = _check_image(image)
    boxes, names, scores, masks, colors = [], [], [], [], []
    for label in annotation.labels:
        boxes.append(label.to_bbox().to_xyxy())
        names.append(label.obj_class.name)
        scores.append(label.confidence)
        masks.append(None if isinstance(label.geometry, Rectangle) else label.geometry.to_mask(h, w))
        colors.append(label.obj_class.color)
    return draw_boxes(
        image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), names, scores if show_scores else None,
        masks=masks, colors=colors, alpha=alpha, line_width=line_width,
    )


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    class_names: Sequence[str],
    scores: Sequence[float | None] | np.ndarray | None = None,
    masks: np.ndarray | Sequence[np.ndarray | None] | None = None,
    colors: Sequence[Any] | None = None,
    *,
    alpha: float = 0.45,
    line_width: int | None = None,
    polygons: np.ndarray | Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """A copy of `image` (H, W, 3) uint8 RGB with detections drawn.

    Args:
        boxes: (N, 4) `x1, y1, x2, y2` pixels.
        class_names: N names, written on each box.
        scores: N scores in 0..1 (an entry may be None), written after the name; None: no scores.
        masks: (N, H, W) bool, or a list of N (H, W) masks or Nones; filled with opacity `alpha`.
        colors: N colours, "#RRGGBB" or (r, g, b); None: a colour per class name (the class colour rule).
        line_width: box outline width in pixels; None: about 1/300 of the image's smaller side, at least 1.
        polygons: N outlines (K, 2) of `x, y` pixels drawn instead of the boxes (oriented boxes: their corners);
            the labels stay at the boxes' top left corners.
    """
    from PIL import Image, ImageDraw

    h, w = _check_image(image)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    if len(class_names) != n:
        raise InvalidArgumentError(f"draw_boxes: {n} boxes but {len(class_names)} class names")
    if scores is not None and len(scores) != n:
        raise InvalidArgumentError(f"draw_boxes: {n} boxes but {len(scores)} scores")
    if masks is not None and len(masks) != n:
        raise InvalidArgumentError(f"draw_boxes: {n} boxes but {len(masks)} masks")
    if polygons is not None and len(polygons) != n:
        raise InvalidArgumentError(f"draw_boxes: {n} boxes but {len(polygons)} polygons")
    rgb = [_rgb(c) for c in colors] if colors is not None else [hex_to_rgb(color_for_name(c)) for c in class_names]
    if len(rgb) != n:
        raise InvalidArgumentError(f"draw_boxes: {n} boxes but {len(rgb)} colors")
    gray = image[..., None].repeat(3, axis=-1) if image.ndim == 2 else image[..., :3]
    out = np.array(gray, dtype=np.float32)
    if masks is not None:
        for mask, color in zip(masks, rgb):
            if mask is None:
                continue
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (h, w):
                raise InvalidArgumentError(f"draw_boxes: a mask has shape {mask.shape}; the image is {(h, w)}")
            out[mask] = out[mask] * (1.0 - alpha) + np.asarray(color, dtype=np.float32) * alpha
    canvas = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    lw = line_width if line_width is not None else max(1, round(min(h, w) / 300))
    font = _font(max(10, round(min(h, w) / 40)))
    for i, ((x1, y1, x2, y2), name, color) in enumerate(zip(boxes, class_names, rgb)):
        if polygons is not None:
            points = [(float(x), float(y)) for x, y in np.asarray(polygons[i], np.float64).reshape(-1, 2)]
            draw.line([*points, points[0]], fill=tuple(color), width=lw, joint="curve")
        else:
            draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=tuple(color), width=lw)
        text = str(name)
        if scores is not None and scores[i] is not None:
            text = f"{text} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        ty = y1 - th - 2 if y1 - th - 2 >= 0 else y1  # above the box, or inside it at the top edge
        tx = min(max(x1, 0), max(w - tw - 2, 0))
        draw.rectangle([tx, ty, tx + tw + 2, ty + th + 2], fill=tuple(color))
        draw.text((tx + 1 - left, ty + 1 - top), text, fill=_text_color(color), font=font)
    return np.asarray(canvas, dtype=np.uint8).copy()


def _check_image(image: np.ndarray) -> tuple[int, int]:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise InvalidArgumentError("image must be an (H, W, 3) or (H, W) uint8 array")
    if image.ndim == 3 and image.shape[2] not in (3, 4):
        raise InvalidArgumentError(f"image must have 3 channels (RGB); got shape {image.shape}")
    return int(image.shape[0]), int(image.shape[1])


def _rgb(color: Any) -> tuple[int, int, int]:
    if isinstance(color, str):
        return hex_to_rgb(color)
    r, g, b = (int(v) for v in color[:3])
    return r, g, b


def _text_color(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


_FONTS: dict[int, Any] = {}


def _font(size: int) -> Any:
    from PIL import ImageFont

    if size not in _FONTS:
        try:
            _FONTS[size] = ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1: a fixed-size bitmap font
            _FONTS[size] = ImageFont.load_default()
    return _FONTS[size]
