"""Generated test data with known ground truth for tracking and tiling: the demo model's shapes (circles, squares,
triangles, 24-90 px, drawn as `pipeline/app/shapes.py` draws them) moving on known paths in a video, and many small
shapes on one large image.

    scene = moving_shapes_scene()                 # 5 objects, 150 frames of 640 x 480 at 30 fps
    truth = write_video(scene, "shapes.mp4")      # h264 via PyAV; truth[f] = that frame's `FrameTruth`
    image, boxes, class_ids = large_shapes_image(4096, 60)

The video's objects: a circle and a square whose paths cross (the square passes over the circle), a triangle that
leaves the frame at the right border and comes back, a small slow square and a large triangle bouncing off the
top and bottom. Ground truth per frame is each object's visible box (the tight box of its visible pixels, x2/y2
exclusive, as `pipeline.shapes.masks_to_boxes`) and its identity; an object counts (`care`) on a frame when at
least `CARE_VISIBLE` of its area is visible (inside the frame and not covered), and is a don't-care region when
less (a detector may or may not find a sliver; the scoring ignores hypotheses on it, as MOT benchmarks do).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from pipeline.app.shapes import CLASSES, _background, _polygon, masks_to_boxes

__all__ = ["CARE_VISIBLE", "FrameTruth", "MovingShape", "Scene", "large_shapes_image", "moving_shapes_scene",
           "render_frame", "write_video"]

CARE_VISIBLE = 0.5


@dataclass
class MovingShape:
    """One object: class, size (px: circle diameter, square side, triangle height), colour and a path
    `centre(t) -> (x, y)` in pixels, with rotation `angle0 + spin * t` (radians) for squares and triangles."""

    track_id: int
    class_id: int
    size: float
    colour: tuple[float, float, float]
    centre: Callable[[int], tuple[float, float]]
    angle0: float = 0.0
    spin: float = 0.0


@dataclass
class Scene:
    height: int
    width: int
    frames: int
    fps: int
    background: np.ndarray  # (H, W, 3) float32
    objects: list[MovingShape]  # in drawing order: later ones cover earlier ones
    seed: int = 0


@dataclass
class FrameTruth:
    """One frame's ground truth: ids (K,), boxes (K, 4) float32 xyxy, class_ids (K,), visible (K,) fraction of
    each object's area that is visible, for the K objects with any visible pixel;
    care = visible >= CARE_VISIBLE."""

    ids: np.ndarray
    boxes: np.ndarray
    class_ids: np.ndarray
    visible: np.ndarray
    care: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.care = self.visible >= CARE_VISIBLE


def _radius(class_id: int, size: float) -> float:
    name = CLASSES[class_id]
    return size / 2 if name == "circle" else size / math.sqrt(2) if name == "square" else size / 1.5


def _draw(obj: MovingShape, t: int, height: int, width: int, pad: int) -> np.ndarray:
    """(H + 2 pad, W + 2 pad) bool: the object's full mask on a canvas padded by `pad` on every side."""
    cx, cy = obj.centre(t)
    cx, cy = cx + pad, cy + pad
    r = _radius(obj.class_id, obj.size)
    img = Image.new("L", (width + 2 * pad, height + 2 * pad), 0)
    draw = ImageDraw.Draw(img)
    if CLASSES[obj.class_id] == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        sides = 4 if CLASSES[obj.class_id] == "square" else 3
        draw.polygon(_polygon(cx, cy, r, sides, obj.angle0 + obj.spin * t), fill=1)
    return np.asarray(img, dtype=bool)


def render_frame(scene: Scene, t: int) -> tuple[np.ndarray, FrameTruth]:
    """Frame `t` (H, W, 3) uint8 RGB and its ground truth."""
    h, w = scene.height, scene.width
    pad = int(max(o.size for o in scene.objects))
    image = scene.background.copy()
    visible: list[np.ndarray] = []
    full_area: list[int] = []
    for obj in scene.objects:
        m = _draw(obj, t, h, w, pad)
        full_area.append(int(m.sum()))
        inside = m[pad:pad + h, pad:pad + w]
        visible = [v & ~inside for v in visible]  # this object covers the ones drawn before it
        visible.append(inside)
        image[inside] = obj.colour
    rng = np.random.default_rng(np.random.SeedSequence([scene.seed, 7, t]))
    image += rng.standard_normal(size=image.shape, dtype=np.float32) * np.float32(3.0)
    frame = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    fractions = np.array([v.sum() / max(a, 1) for v, a in zip(visible, full_area)], np.float32)
    present = fractions > 0
    masks = np.stack(visible)[present] if present.any() else np.zeros((0, h, w), bool)
    return frame, FrameTruth(
        ids=np.array([o.track_id for o in scene.objects], np.int64)[present],
        boxes=masks_to_boxes(masks),
        class_ids=np.array([o.class_id for o in scene.objects], np.int64)[present],
        visible=fractions[present],
    )


def _colour(rng: np.random.Generator, background: np.ndarray, taken: list[np.ndarray]) -> tuple[float, ...]:
    """A colour clearly apart from the background (anywhere) and from the other objects' colours."""
    lo, hi = background.reshape(-1, 3).min(0), background.reshape(-1, 3).max(0)
    mean = background.reshape(-1, 3).mean(0)
    for _ in range(200):
        c = rng.uniform(0, 255, 3)
        if np.linalg.norm(c - mean) >= 110 and all(np.linalg.norm(c - o) >= 90 for o in taken) \
                and (np.any(c < lo - 40) or np.any(c > hi + 40)):
            break
    taken.append(c)
    return tuple(float(v) for v in c)


def moving_shapes_scene(frames: int = 150, height: int = 480, width: int = 640, fps: int = 30,
                        seed: int = 0) -> Scene:
    """The tracking test scene (module doc), laid out for 640 x 480 and 150 frames (other sizes scale the paths).
    Paths are fixed; colours and the background come from `seed`."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    background = _background(rng, height, width)
    taken: list[np.ndarray] = []
    sx, sy, last = width / 640, height / 480, max(frames - 1, 1)

    def line(a, b):
        return lambda t: (sx * (a[0] + (b[0] - a[0]) * t / last), sy * (a[1] + (b[1] - a[1]) * t / last))

    def leaves_and_returns(t):  # right at 3.5 px/frame, turns around off the frame, comes back: out for ~1 s
        half = last / 2
        return (sx * 490 + 3.5 * (t if t <= half else 2 * half - t), sy * 420)

    def bounce(t):  # left and right between x = 120 and x = 380
        y = (2.5 * t) % 520
        return (sx * (120 + (y if y < 260 else 520 - y)), sy * 310)

    specs = [  # (class, size, path, spin); drawing order: the square crosses over the circle's upper part
        (0, 72, line((80, 140), (560, 280)), 0.0),
        (1, 44, line((560, 90), (80, 270)), 0.02),
        (2, 56, leaves_and_returns, -0.015),
        (1, 28, line((150, 440), (300, 400)), 0.03),
        (2, 86, bounce, 0.01),
    ]
    objects = [MovingShape(i, c, s, _colour(rng, background, taken), path, float(rng.uniform(0, 2 * math.pi)),
                           spin) for i, (c, s, path, spin) in enumerate(specs)]
    return Scene(height, width, frames, fps, background, objects, seed)


def write_video(scene: Scene, path: str | os.PathLike, crf: int = 18) -> list[FrameTruth]:
    """Encode the scene as an h264 MP4 with PyAV (yuv420p, `crf`), frame t at pts t; returns the ground truth."""
    import av

    truth = []
    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream("libx264", rate=scene.fps)
        stream.width, stream.height, stream.pix_fmt = scene.width, scene.height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for t in range(scene.frames):
            frame, gt = render_frame(scene, t)
            truth.append(gt)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return truth


def large_shapes_image(size: int = 4096, count: int = 60, seed: int = 0, min_size: float = 24,
                       max_size: float = 90) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A `size` x `size` image with `count` shapes of 24-90 px (the demo model's training sizes) placed apart
    (no overlaps, a margin of one object between them) on a shapes-style background. Returns (image (H, W, 3)
    uint8, boxes (count, 4) float32 xyxy tight boxes, x2/y2 exclusive, class_ids (count,) int64)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    image = _background(rng, size, size)
    placed: list[tuple[float, float, float]] = []
    boxes, ids = [], []
    while len(boxes) < count:
        cid = int(rng.integers(0, len(CLASSES)))
        s = float(rng.uniform(min_size, max_size))
        r = _radius(cid, s)
        cx, cy = rng.uniform(r + 2, size - r - 2, 2)
        if any(math.hypot(cx - x, cy - y) < r + q + max_size for x, y, q in placed):
            continue
        placed.append((cx, cy, r))
        x0, y0 = int(max(0, cx - r - 2)), int(max(0, cy - r - 2))
        x1, y1 = int(min(size, cx + r + 3)), int(min(size, cy + r + 3))
        # drawn on a patch around it: the whole image is never rasterised per object
        local = MovingShape(0, cid, s, (0.0, 0.0, 0.0), lambda t, c=(cx - x0, cy - y0): c,
                            float(rng.uniform(0, 2 * math.pi)))
        m = _draw(local, 0, y1 - y0, x1 - x0, 0)
        patch = image[y0:y1, x0:x1]
        under = patch[m].mean(0)
        for _ in range(50):
            colour = rng.uniform(0, 255, 3)
            if np.linalg.norm(colour - under) >= 80:
                break
        patch[m] = colour
        boxes.append(masks_to_boxes(m[None])[0] + np.array([x0, y0, x0, y0], np.float32))
        ids.append(cid)
    image += rng.standard_normal(size=image.shape, dtype=np.float32) * np.float32(3.0)
    return (np.clip(np.rint(image), 0, 255).astype(np.uint8), np.asarray(boxes, np.float32),
            np.asarray(ids, np.int64))
