"""The small typed records that travel between the stages and the actors.

Each is a plain dataclass of numpy arrays and builtins, so Ray serialises it with pickle-5 out-of-band buffers:
arrays move through the object store without copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DECODE_MODES", "BatchResult", "DecodeOptions", "LoadRequest", "LoadedBatch", "ModelOutput"]

DECODE_MODES = ("auto", "full", "reduced", "gpu")


@dataclass(frozen=True)
class DecodeOptions:
    """How a loading task decodes its images (set per run by the driver).

    `resize`: an exact (h, w) to resize to (an exact `img_size`), else None. `mode`: "full" (every pixel
    decoded), "reduced" (a JPEG much larger than the model needs is decoded at 1/2, 1/4 or 1/8 scale by the JPEG
    decoder itself, never below what the model's own resize would keep: `hint`), "gpu" (JPEGs are only read; the
    replica decodes them on its device). `hint`: what the model's resize keeps, ("fit", min_side, max_side) (the
    image scaled by min(min_side / shorter side, max_side / longer side)), ("cover", h, w) (scaled to h x w),
    ("contain", h, w) (scaled to fit inside h x w, aspect kept: a letterbox), or None (unknown: decoded full).
    """

    resize: tuple[int, int] | None = None
    max_pixels: int = 178_956_970
    url_timeout: float = 20.0
    mode: str = "full"
    hint: tuple | None = None


@dataclass
class LoadRequest:
    """One item for the loading stage: where its pixels come from.

    Exactly one of `path`, `url`, `array` (HWC RGB uint8, already converted) or `video` is set.
    `video` is `(path, frame_idx)`: decoded by the video loader.
    """

    index: int
    path: str | None = None
    url: str | None = None
    array: np.ndarray | None = None
    frame_idx: int | None = None
    error: str | None = None  # known bad before loading (e.g. a missing file in a list): reported as is


@dataclass
class LoadedBatch:
    """The output of one loading task: a batch ready for a replica.

    `images[i]` is HWC RGB uint8 (at an exact `img_size`, or reduced by the JPEG decoder, or as the file is),
    `None` for an item that failed or that the replica decodes: then `encoded[i]` holds its JPEG bytes (decode
    mode "gpu"); `orig_sizes[i]` is the original `(height, width)` in pixels, whatever size `images[i]` has;
    `errors[i]` says why an item failed. `indices[i]` is the item's position in the run.
    """

    indices: list[int]
    images: list[np.ndarray | None]
    orig_sizes: list[tuple[int, int] | None]
    errors: list[str | None]
    decode_seconds: float = 0.0
    encoded: list[bytes | None] | None = None

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class ModelOutput:
    """One image's raw predictions, in original-image pixels.

    boxes: (N, 4) float32 xyxy; scores: (N,) float32; class_ids: (N,) int64 indices into the model's classes;
    masks: (N, H, W) bool at the original size, or None for box-only models.
    keypoints: (N, K, 3) float32 `x, y, score` per keypoint of each object (pose models), else None.
    probs: (C,) float32 class probabilities of the whole image (classification models; no boxes), else None.
    obb: (N, 5) float32 oriented boxes `cx, cy, w, h, angle` (radians, clockwise in image coordinates, as
    Ultralytics' `Results.obb.xywhr`) of oriented-detection models, else None; `boxes` are then their enclosing
    axis-aligned boxes.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    masks: np.ndarray | None = None
    error: str | None = None
    keypoints: np.ndarray | None = None
    probs: np.ndarray | None = None
    obb: np.ndarray | None = None

    @classmethod
    def empty(cls, error: str | None = None, with_masks: bool = False, size: tuple[int, int] = (0, 0)) -> ModelOutput:
        masks = np.zeros((0, *size), dtype=bool) if with_masks else None
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int64),
            masks=masks,
            error=error,
        )


@dataclass
class BatchResult:
    """A replica's answer for one `LoadedBatch`: one `ModelOutput` per item, aligned with `indices`."""

    indices: list[int]
    outputs: list[ModelOutput]
    orig_sizes: list[tuple[int, int] | None]
    compute_seconds: float = 0.0
    replica: str = ""
