"""YOLO datasets in Ultralytics' layout, so `ultralytics` trains on them as they are:

    <dir>/data.yaml                 names (class id -> name), train / val: images (and kpt_shape for pose)
    <dir>/images/<dataset>/<name>   the images: copies, or symbolic links to local files (`yolo_images: link`)
    <dir>/labels/<dataset>/<stem>.txt   one line per object, coordinates normalised to [0, 1] by the image size:
        detect:  class cx cy w h
        segment: class x1 y1 x2 y2 ...      the outline of the object's mask (a polygon)
        pose:    class cx cy w h px1 py1 s1 ...   keypoints (x, y, score), as Ultralytics' `Results.save_txt`
        obb:     class x1 y1 x2 y2 x3 y3 x4 y4    the oriented box's corners (clipped to the image: Ultralytics'
                 loader refuses a label file with coordinates outside [0, 1])

A prediction run writes it when it ends, from its Parquet parts (`export.py`), so it resumes with its job like
COCO; `pipeline platform export --format yolo` writes one from a project's annotations
(`pipeline/app/platform_export.py`). An image without objects gets an empty label file (a background image).
Names: an image keeps its name; images of one folder whose names share a stem (`a.jpg`, `a.png`: both would
be labelled by `a.txt`) are all named `<stem>_<position in the run>.<ext>` instead, whatever order they came in.

Mask outlines are traced with OpenCV's `cv2.findContours` (outer contours, simple chain), as Ultralytics traces
its own masks; an object in several pieces keeps its largest piece. OpenCV is not a core dependency: a YOLO export
of masks needs `pip install 'cv-pipeline[yolo]'` (opencv-python-headless; Ultralytics brings opencv-python).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from pipeline.exceptions import InvalidArgumentError
from pipeline.prediction import obb_corners
from pipeline.stages.upload.export import ParquetWriter, mask_from_row, read_parts
from pipeline.stages.upload.location import Location

__all__ = ["YOLO_TASKS", "YoloDataset", "YoloWriter", "box_line", "check_yolo_folder", "mask_polygon",
           "polygon_line", "pose_line", "flip_idx"]

# The model task types a YOLO dataset is written for, and Ultralytics' task of each.
YOLO_TASKS = {"detection": "detect", "instance_segmentation": "segment", "semantic_segmentation": "segment",
              "pose": "pose", "oriented_detection": "obb"}


# --- label lines ---------------------------------------------------------------------------------------------


def _numbers(values: Iterable[float]) -> str:
    return " ".join(f"{v:g}" for v in values)  # "%g", as Ultralytics writes its own labels


def _norm_box(xyxy: Iterable[float], size: tuple[int, int]) -> list[float]:
    h, w = size
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    x1, x2 = np.clip([x1, x2], 0, w) / w
    y1, y2 = np.clip([y1, y2], 0, h) / h
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


def box_line(class_id: int, xyxy: Iterable[float], size: tuple[int, int]) -> str:
    """`class cx cy w h` of a box xyxy in pixels of an image of `size` (h, w)."""
    return f"{class_id} {_numbers(_norm_box(xyxy, size))}"


def polygon_line(class_id: int, points: np.ndarray, size: tuple[int, int]) -> str:
    """`class x1 y1 x2 y2 ...` of a polygon (K, 2) of x, y pixels."""
    h, w = size
    pts = np.clip(np.asarray(points, np.float64).reshape(-1, 2) / [w, h], 0.0, 1.0)
    return f"{class_id} {_numbers(pts.reshape(-1))}"


def pose_line(class_id: int, xyxy: Iterable[float], keypoints: np.ndarray, size: tuple[int, int]) -> str:
    """`class cx cy w h px py s ...` of a box and its keypoints (K, 3) of x, y pixels and score."""
    h, w = size
    kpts = np.asarray(keypoints, np.float64).reshape(-1, 3).copy()
    kpts[:, :2] = np.clip(kpts[:, :2] / [w, h], 0.0, 1.0)
    return f"{class_id} {_numbers(_norm_box(xyxy, size))} {_numbers(kpts.reshape(-1))}"


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise InvalidArgumentError(
            "a YOLO dataset of masks traces their outlines with OpenCV, which is not installed: "
            "pip install 'cv-pipeline[yolo]' (or opencv-python-headless)"
        ) from None
    return cv2


def mask_polygon(mask: np.ndarray, origin: tuple[int, int] = (0, 0)) -> np.ndarray | None:
    """The outline (K, 2) of x, y pixels of the largest piece of a bool mask whose top-left pixel lies at `origin`
    (x, y) of the image; None when it has no piece of 3 points or more."""
    cv2 = _cv2()
    contours, _ = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    contours = [c.reshape(-1, 2) for c in contours if len(c) >= 3]
    if not contours:
        return None
    largest = max(contours, key=lambda c: (cv2.contourArea(c), len(c)))
    return largest.astype(np.float64) + np.asarray(origin, np.float64)


def check_yolo_folder(loc: Location) -> None:
    """Before any work: the folder is missing, empty, or a YOLO dataset written before (it has data.yaml and is
    replaced); anything else is refused rather than mixed with."""
    names = [n for n in loc.list_names() if n != ".staging"] if loc.kind() == "dir" else []
    if names and "data.yaml" not in names:
        raise InvalidArgumentError(f"{loc.what} {loc} is a folder that holds other files ({', '.join(names[:3])}"
                                   "...); give a new or empty folder, or a YOLO dataset to replace")


def flip_idx(names: list[str]) -> list[int] | None:
    """Each keypoint's mirror image for Ultralytics' horizontal flips: the node whose name swaps "left" and
    "right" (itself when the name has neither); None unless some names pair left and right and every such name has
    its mirror (names like "kp0".."kp16" say nothing about which points mirror which)."""
    def mirror(name: str) -> str:
        out = name
        for a, b in (("left", "right"), ("Left", "Right"), ("LEFT", "RIGHT")):
            out = out.replace(a, "\0").replace(b, a).replace("\0", b)
        return out

    index = {n: i for i, n in enumerate(names)}
    flips = [index.get(mirror(n)) for n in names]
    if any(f is None for f in flips) or flips == list(range(len(names))):
        return None  # a name without its mirror, or no left / right at all: unknown (Ultralytics then never flips)
    return flips  # type: ignore[return-value]



# --- the dataset -------------------------------------------------------------------------------------------


class YoloDataset:
    """Writes a YOLO dataset at `loc`: `clear()` what an earlier one left, `add` images with their label lines,
    `finish()` with data.yaml last (its presence says the dataset is complete)."""

    def __init__(self, loc: Location, class_names: list[str], task: str, images: str = "copy"):
        self.loc = loc
        self.class_names = list(class_names)
        self.task = task
        self.images = images
        self.kpt_shape: tuple[int, int] | None = None
        self.flip_idx: list[int] | None = None  # pose: each keypoint's mirror image (Ultralytics' flip augmentation)
        self.count = 0

    def clear(self) -> None:
        if self.loc.kind() != "dir":
            return
        for name in ("images", "labels"):
            if self.loc.kind(self.loc.join(name)) == "dir":
                self.loc.delete_dir(self.loc.join(name))
        if self.loc.kind(self.loc.join("data.yaml")) == "file":
            self.loc.delete(self.loc.join("data.yaml"))

    def add(self, dataset: Iterable[str], file_name: str, lines: list[str],
            image: Callable[[str], None] | str) -> None:
        """One image: `lines` its label lines; `image` a local file to link (`images="link"`) or copy, or a
        function that writes the image file at the path it is given."""
        folder = [*dataset]
        stem = os.path.splitext(file_name)[0]
        image_path = self.loc.join("images", *folder, file_name)
        label_path = self.loc.join("labels", *folder, stem + ".txt")
        for path in (image_path, label_path):
            self.loc.makedirs(path.rsplit("/", 1)[0] if self.loc.is_uri else os.path.dirname(path))
        if isinstance(image, str):
            if self.images == "link" and not self.loc.is_uri:
                if os.path.lexists(image_path):
                    os.unlink(image_path)
                os.symlink(os.path.abspath(image), image_path)
            else:
                self._copy_local(image, image_path)
        else:
            image(image_path)
        self.loc.write_bytes(label_path, "".join(line + "\n" for line in lines).encode())
        self.count += 1

    def _copy_local(self, src: str, dest: str) -> None:
        def fill(stream: Any) -> None:
            with open(src, "rb") as f:
                while chunk := f.read(1 << 20):
                    stream.write(chunk)

        self.loc.write(dest, fill)

    def finish(self) -> None:
        import yaml

        data: dict[str, Any] = {"train": "images", "val": "images",
                                "names": dict(enumerate(self.class_names))}
        if self.kpt_shape is not None:
            data["kpt_shape"] = list(self.kpt_shape)
        if self.flip_idx is not None:
            data["flip_idx"] = list(self.flip_idx)
        text = ("# A YOLO dataset written by cv-pipeline; Ultralytics reads `path` as this file's folder.\n"
                + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        self.loc.makedirs()
        self.loc.write_bytes(self.loc.join("data.yaml"), text.encode())


def unique_names(records: Iterable[dict[str, Any]]) -> Callable[[dict[str, Any]], str]:
    """The file name of each item record: its name, or `<stem>_<index>.<ext>` when another item of its folder
    has the same stem (decided from all records, so not by the order they come in)."""
    counts = Counter("/".join([*r["dataset"], os.path.splitext(r["name"])[0]]) for r in records)

    def name_of(record: dict[str, Any]) -> str:
        stem, ext = os.path.splitext(record["name"])
        if counts["/".join([*record["dataset"], stem])] > 1:
            return f"{stem}_{record['index']:06d}{ext}"
        return record["name"]

    return name_of


# --- from a prediction run ---------------------------------------------------------------------------------


class YoloWriter:
    """The YOLO dataset of a run, assembled from its Parquet parts when the run ends. Images given as arrays
    exist nowhere else: `add` writes them into the dataset's hidden `.staging/arrays/` as they come."""

    def __init__(self, loc: Location, class_names: list[str], task_type: str, parts: ParquetWriter,
                 images: str = "copy", url_timeout: float = 20.0, keypoint_names: list[str] | None = None):
        self.loc = loc
        self.path = loc.shown
        self.task = YOLO_TASKS[task_type]
        self.dataset = YoloDataset(loc, class_names, self.task, images)
        if self.task == "pose" and keypoint_names:
            self.dataset.flip_idx = flip_idx(list(keypoint_names))
        self.parts = parts
        self.url_timeout = url_timeout
        self.arrays = loc.join(".staging", "arrays")

    def add(self, preds: list[Any]) -> None:
        from pipeline.platform.media import encode_array

        for p in preds:
            if p.image is not None and p.error is None:
                self.loc.makedirs(self.arrays)
                self.loc.write_bytes(self.loc.join(".staging", "arrays", f"{p.index}.png"),
                                     encode_array(p.image, "image.png"))

    def close(self) -> None:
        self.parts.close()
        name_of = unique_names(r for r, _ in read_parts(self.parts.loc, with_rows=False) if _exported(r))
        self.dataset.clear()
        for record, rows in read_parts(self.parts.loc):
            if _exported(record):
                self._write_item(record, rows, name_of(record))
        self.dataset.finish()

    def _write_item(self, record: dict[str, Any], rows: list[dict[str, Any]], file_name: str) -> None:
        size = tuple(record["size"])
        lines = []
        for row in rows:
            if self.task == "segment":
                polygon = mask_polygon(mask_from_row(row, size)) if row.get("mask_png") else None
                if polygon is not None:
                    lines.append(polygon_line(row["class_id"], polygon, size))
            elif self.task == "obb" and row.get("obb") is not None:
                lines.append(polygon_line(row["class_id"], obb_corners([row["obb"]])[0], size))
            elif self.task == "pose" and row.get("keypoints") is not None:
                kpts = np.asarray(row["keypoints"], np.float64).reshape(-1, 3)
                self.dataset.kpt_shape = (len(kpts), 3)
                lines.append(pose_line(row["class_id"], [row[k] for k in ("x1", "y1", "x2", "y2")], kpts, size))
            else:
                lines.append(box_line(row["class_id"], [row[k] for k in ("x1", "y1", "x2", "y2")], size))
        self.dataset.add(record["dataset"], file_name, lines, self._image(record))

    def _image(self, record: dict[str, Any]) -> Callable[[str], None] | str:
        if record["array"]:
            staged = self.loc.join(".staging", "arrays", f"{record['index']}.png")
            return lambda dest: self.loc.write_bytes(dest, self.loc.read_bytes(staged))
        if record["path"]:
            return record["path"]
        from workers.decode import fetch_bytes

        url = record["url"]
        return lambda dest: self.loc.write_bytes(dest, fetch_bytes(url, self.url_timeout))


def _exported(record: dict[str, Any]) -> bool:
    return record["error"] is None and record["size"] is not None
