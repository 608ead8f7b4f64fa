"""A deterministic generated "shapes" data set for the demo instance-segmentation model.

Each sample is an RGB image with 1..`max_objects` filled circles, squares and triangles of random size, colour,
rotation (squares and triangles) and position on a noisy gradient background. Objects may overlap: a later shape
occludes the earlier ones, and each mask is the *visible* part of its object. A placement is rejected (and redrawn)
when it would leave any object with less than `min_visible` of its own area or fewer than 150 visible pixels, so every
object stays clearly visible.

Everything is reproducible: item `i` of the set with seed `s` is `get_sample(s, i)`, alone, without generating the
items before it (`sample_rng(s, i)` is the generator it uses). numpy + PIL only; a 256x256 sample takes ~2 ms.

    from pipeline.app.shapes import CLASSES, generate_dataset
    for sample in generate_dataset(100, seed=1):
        sample.image      # (H, W, 3) uint8 RGB
        sample.masks      # (N, H, W) bool, visible part of each object
        sample.boxes      # (N, 4) float32 xyxy pixels, tight box of each mask, x2/y2 exclusive
        sample.class_ids  # (N,) int64, index into CLASSES
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "CLASSES",
    "ShapesSample",
    "sample_rng",
    "generate_sample",
    "get_sample",
    "generate_dataset",
    "masks_to_boxes",
]

CLASSES: list[str] = ["circle", "square", "triangle"]

MIN_SIZE = 24  # smallest object extent (circle diameter / square side / triangle height) in px at 256x256
MAX_SIZE = 90  # largest


@dataclass
class ShapesSample:
    """One generated image and its instance annotations.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        masks: (N, H, W) bool, the visible pixels of each object (later objects occlude earlier ones).
        boxes: (N, 4) float32 [x1, y1, x2, y2] in pixels, the tight box of each mask with x2/y2 exclusive
            (x2 = last column + 1, y2 = last row + 1).
        class_ids: (N,) int64, index into `CLASSES`.
        class_names: the N class names.
    """

    image: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    class_ids: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return int(self.class_ids.shape[0])


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of item `index` of the set `seed`: independent of every other (seed, index) pair."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool masks -> (N, 4) float32 xyxy tight boxes, x2/y2 exclusive; an empty mask gives zeros."""
    boxes = np.zeros((masks.shape[0], 4), dtype=np.float32)
    for i, m in enumerate(masks):
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        if rows.size:
            boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32 in [0, 255]: a linear gradient between two random colours plus smooth and pixel noise."""
    c0 = rng.uniform(0, 255, size=3).astype(np.float32)
    c1 = rng.uniform(0, 255, size=3).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    tx = (np.arange(width, dtype=np.float32) - width / 2) * math.cos(angle)
    ty = (np.arange(height, dtype=np.float32) - height / 2) * math.sin(angle)
    t = ty[:, None] + tx[None, :]  # separable linear ramp
    t -= t.min()
    t /= max(float(t.max()), 1.0)
    bg = c0 + t[..., None] * (c1 - c0)
    # smooth blotches: a coarse random grid upsampled bilinearly
    coarse = rng.normal(0, rng.uniform(0, 20), size=(5, 5, 3)).astype(np.float32)
    for c in range(3):
        bg[..., c] += np.asarray(Image.fromarray(np.ascontiguousarray(coarse[..., c])).resize((width, height), Image.BILINEAR))
    bg += rng.standard_normal(size=(height, width, 1), dtype=np.float32) * np.float32(rng.uniform(2, 12))
    return bg


def _polygon(cx: float, cy: float, radius: float, sides: int, angle: float) -> list[tuple[float, float]]:
    return [
        (cx + radius * math.cos(angle + 2 * math.pi * k / sides), cy + radius * math.sin(angle + 2 * math.pi * k / sides))
        for k in range(sides)
    ]


def _shape_mask(rng: np.random.Generator, class_id: int, height: int, width: int) -> np.ndarray:
    """(H, W) bool full mask of one randomly sized, placed and rotated shape, fully inside the image."""
    size = rng.uniform(MIN_SIZE, MAX_SIZE) * min(height, width) / 256.0
    name = CLASSES[class_id]
    if name == "circle":
        radius = size / 2  # diameter = size
    elif name == "square":
        radius = size / math.sqrt(2)  # side = size
    else:
        radius = size / 1.5  # equilateral: height = 1.5 * circumradius = size
    angle = rng.uniform(0, 2 * math.pi)
    margin = radius + 1
    cx = rng.uniform(margin, max(margin, width - margin))
    cy = rng.uniform(margin, max(margin, height - margin))
    img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(img)
    if name == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
    else:
        draw.polygon(_polygon(cx, cy, radius, 4 if name == "square" else 3, angle), fill=1)
    return np.asarray(img, dtype=bool)


def generate_sample(
    rng: np.random.Generator,
    height: int = 256,
    width: int = 256,
    max_objects: int = 4,
    min_visible: float = 0.6,
) -> ShapesSample:
    """One random sample drawn from `rng` (see the module doc).

    Args:
        rng: the generator; the same generator state always gives the same sample.
        height, width: image size in pixels. Object sizes (24-90 px at 256) scale with min(height, width) / 256.
        max_objects: at most this many objects (at least 1).
        min_visible: each object keeps at least this fraction of its own area visible.
    """
    image = _background(rng, height, width)
    n = int(rng.integers(1, max_objects + 1))
    full_masks: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    class_ids: list[int] = []
    colours: list[np.ndarray] = []
    for _ in range(n):
        for _attempt in range(20):
            cid = int(rng.integers(0, len(CLASSES)))
            m = _shape_mask(rng, cid, height, width)
            new_visible = [v & ~m for v in visible]
            if m.sum() >= 150 and all(
                nv.sum() >= max(min_visible * fm.sum(), 150) for nv, fm in zip(new_visible, full_masks)
            ):
                break
        else:
            continue  # no room for another object: keep the ones placed
        # a colour clearly different from what lies under the shape and from the shapes it overlaps
        refs = [image[m].mean(axis=0)] + [c for v, c in zip(visible, colours) if (v & m).any()]
        for _attempt in range(50):
            colour = rng.uniform(0, 255, size=3)
            if all(np.linalg.norm(colour - r) >= 80 for r in refs):
                break
        image[m] = colour  # later shapes are drawn over earlier ones
        visible = new_visible + [m]
        full_masks.append(m)
        class_ids.append(cid)
        colours.append(colour)
    image += rng.standard_normal(size=image.shape, dtype=np.float32) * np.float32(3.0)  # light sensor noise over everything
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    masks = np.stack(visible) if visible else np.zeros((0, height, width), dtype=bool)
    ids = np.asarray(class_ids, dtype=np.int64)
    return ShapesSample(
        image=image,
        masks=masks,
        boxes=masks_to_boxes(masks),
        class_ids=ids,
        class_names=[CLASSES[i] for i in ids],
    )


def get_sample(seed: int, index: int, **kwargs) -> ShapesSample:
    """Item `index` of the set `seed`, generated alone (kwargs go to `generate_sample`)."""
    return generate_sample(sample_rng(seed, index), **kwargs)


def generate_dataset(n: int, seed: int, start: int = 0, **kwargs) -> Iterator[ShapesSample]:
    """Items `start .. start + n - 1` of the set `seed` (kwargs go to `generate_sample`)."""
    for i in range(start, start + n):
        yield get_sample(seed, i, **kwargs)
