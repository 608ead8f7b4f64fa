"""Predictions exported without the platform: Parquet (one row per object) and COCO JSON.

Parquet is written as the run streams: `output.parquet` is a directory of part files, each closed (and so
complete and readable) as soon as it is written, so a crash keeps every part written before it. Read it with
`pyarrow.parquet.read_table(path)` or `pandas.read_parquet(path)`. COCO is one JSON document, written atomically
(temporary file + rename) when the run ends.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import time
from typing import Any

import numpy as np

from pipeline.exceptions import InvalidArgumentError
from pipeline.prediction import KEYPOINT_MIN_SCORE, Prediction

__all__ = ["ParquetWriter", "CocoWriter", "check_output", "mask_to_rle", "rle_to_mask"]

# A part file is written once this many rows are buffered (big enough for efficient Parquet) or once the oldest
# buffered row is this many seconds old, whichever comes first: a crash loses at most that much.
PARQUET_ROWS_PER_PART = 20_000
PARQUET_FLUSH_S = 10.0
_PART = re.compile(r"part-(\d+)\.parquet")


def _schema():
    import pyarrow as pa

    return pa.schema([
        ("source", pa.string()), ("name", pa.string()), ("dataset", pa.string()),
        ("project_id", pa.int64()), ("dataset_id", pa.int64()), ("image_id", pa.int64()),
        ("video_id", pa.int64()), ("frame_idx", pa.int64()),
        ("target_project_id", pa.int64()), ("target_image_id", pa.int64()),
        ("image_height", pa.int32()), ("image_width", pa.int32()),
        ("object_idx", pa.int32()), ("class", pa.string()), ("class_id", pa.int32()), ("score", pa.float32()),
        ("x1", pa.float32()), ("y1", pa.float32()), ("x2", pa.float32()), ("y2", pa.float32()),
        ("mask_png", pa.binary()), ("mask_x", pa.int32()), ("mask_y", pa.int32()),
        ("keypoints", pa.list_(pa.float32())),
        ("error", pa.string()),
    ])


def _source_text(p: Prediction) -> str:
    if isinstance(p.source, np.ndarray):
        return f"array:{p.index}"
    return str(p.source) if p.source is not None else ""


def _mask_png(mask: np.ndarray) -> tuple[bytes, int, int]:
    """A 1-bit PNG of the mask cropped to its bounding box, and the crop's (x, y) origin."""
    from PIL import Image

    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    buf = io.BytesIO()
    Image.fromarray(mask[y0:y1, x0:x1]).convert("1").save(buf, format="PNG")
    return buf.getvalue(), int(x0), int(y0)


def check_output(output: dict[str, Any]) -> None:
    """Refuse output paths that cannot be written, before any work (and before an old Parquet output is
    replaced)."""
    if output.get("parquet"):
        path = os.path.abspath(os.fspath(output["parquet"]))
        if os.path.exists(path) and not os.path.isdir(path):
            raise InvalidArgumentError(
                f"output parquet {path} is a file; the Parquet output is a directory of part files: give a new "
                "path or a folder"
            )
    if output.get("coco"):
        path = os.path.abspath(os.fspath(output["coco"]))
        if os.path.isdir(path):
            raise InvalidArgumentError(
                f"output coco {path} is a directory; the COCO output is one JSON file: give a file path"
            )
        parent = os.path.dirname(path)
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise InvalidArgumentError(f"output coco {path}: cannot write there ({parent} is not a writable folder)")


class ParquetWriter:
    """Appends one row per object (and one per failed item, with `error`) to a directory of Parquet parts.

    A new run replaces the parts an earlier run left in the folder (as the COCO file is replaced); `resume=True`
    (a resumed upload job) keeps them and adds its own after them.
    """

    def __init__(self, path: str | os.PathLike, resume: bool = False):
        self.path = os.path.abspath(os.fspath(path))
        check_output({"parquet": self.path})
        os.makedirs(self.path, exist_ok=True)
        existing = sorted(f for f in os.listdir(self.path) if _PART.fullmatch(f))
        self.replaced = 0
        if existing and not resume:
            for f in existing:
                os.unlink(os.path.join(self.path, f))
            self.replaced, existing = len(existing), []
        self._part = max((int(_PART.fullmatch(f).group(1)) for f in existing), default=-1) + 1
        self._rows: dict[str, list] = {f.name: [] for f in _schema()}
        self._n = 0
        self._oldest: float | None = None  # monotonic time of the oldest buffered row
        self.rows_written = 0

    def add(self, preds: list[Prediction]) -> None:
        for p in preds:
            target = p.target
            common = {
                "source": _source_text(p), "name": p.name, "dataset": "/".join(p.dataset),
                "project_id": p.project_id, "dataset_id": p.dataset_id, "image_id": p.image_id,
                "video_id": p.video_id, "frame_idx": p.frame_idx,
                "target_project_id": target.project_id if target else None,
                "target_image_id": (target.image_id if target else None),
                "image_height": p.orig_size[0] if p.orig_size else None,
                "image_width": p.orig_size[1] if p.orig_size else None,
            }
            if p.error is not None:
                self._append({**common, "error": p.error})
                continue
            if p.top_class is not None:  # a classifier: one row, its top class, no box
                self._append({**common, "class": p.top_class, "class_id": int(np.argmax(p.probs)),
                              "score": p.top_score})
            for i in range(len(p)):  # nothing found: no rows
                x1, y1, x2, y2 = (float(v) for v in p.boxes[i])
                row = {**common, "object_idx": i, "class": p.classes[i], "class_id": int(p.class_ids[i]),
                       "score": float(p.scores[i]), "x1": x1, "y1": y1, "x2": x2, "y2": y2}
                if p.masks is not None and p.masks[i].any():
                    row["mask_png"], row["mask_x"], row["mask_y"] = _mask_png(p.masks[i])
                if p.keypoints is not None:  # x, y, score of each keypoint, flattened (K * 3)
                    row["keypoints"] = p.keypoints[i].reshape(-1).tolist()
                self._append(row)
        if self._n >= PARQUET_ROWS_PER_PART or (
                self._oldest is not None and time.monotonic() - self._oldest >= PARQUET_FLUSH_S):
            self.flush()

    def _append(self, row: dict[str, Any]) -> None:
        for k, col in self._rows.items():
            col.append(row.get(k))
        if not self._n:
            self._oldest = time.monotonic()
        self._n += 1

    def flush(self) -> None:
        if not self._n:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(self._rows, schema=_schema())
        final = os.path.join(self.path, f"part-{self._part:05d}.parquet")
        tmp = final + ".tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, final)  # a part is either complete or absent
        self._part += 1
        self.rows_written += self._n
        self._rows = {k: [] for k in self._rows}
        self._n = 0
        self._oldest = None

    def close(self) -> None:
        self.flush()


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE: column-major run lengths starting with a run of zeros. Computed from the mask's
    bounding box only (the runs outside it are zeros), so a small object in a large frame costs little."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return {"size": [int(h), int(w)], "counts": [int(h * w)]}
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    padded = np.zeros((y1 - y0 + 2, x1 - x0), np.int8)
    padded[1:-1] = mask[y0:y1, x0:x1]
    rr, cc = np.nonzero(np.diff(padded, axis=0))  # a run starts at local row rr of crop column cc
    starts = np.sort((x0 + cc).astype(np.int64) * h + y0 + rr)
    counts = np.diff(np.concatenate([[0], starts, [h * w]])).tolist()
    return {"size": [int(h), int(w)], "counts": counts}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    h, w = rle["size"]
    flat = np.zeros(h * w, dtype=bool)
    pos, val = 0, False
    for c in rle["counts"]:
        if val:
            flat[pos:pos + c] = True
        pos += c
        val = not val
    return flat.reshape((w, h)).T


class CocoWriter:
    """Collects a COCO detection / instance-segmentation / keypoint document; writes it atomically on `close()`.
    Classifiers' predictions have no COCO form: their images are listed, without annotations."""

    def __init__(self, path: str | os.PathLike, class_names: list[str]):
        self.path = os.path.abspath(os.fspath(path))
        check_output({"coco": self.path})
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        seen: dict[str, int] = {}
        self.categories = []
        for i, name in enumerate(class_names):
            self.categories.append({"id": i + 1, "name": name, "supercategory": ""})
            seen.setdefault(name, i + 1)
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add(self, preds: list[Prediction]) -> None:
        for p in preds:
            if p.error is not None or p.orig_size is None:
                continue
            if p.keypoints is not None and self.categories and "keypoints" not in self.categories[0]:
                self._keypoint_categories(p)
            image_id = len(self.images) + 1
            file_name = "/".join((*p.dataset, p.name or f"{image_id}"))
            entry = {"id": image_id, "file_name": file_name, "height": p.orig_size[0], "width": p.orig_size[1]}
            if p.frame_idx is not None:
                entry["frame_idx"] = p.frame_idx
            self.images.append(entry)
            for i in range(len(p)):
                x1, y1, x2, y2 = (float(v) for v in p.boxes[i])
                ann = {
                    "id": len(self.annotations) + 1, "image_id": image_id, "category_id": int(p.class_ids[i]) + 1,
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": 0, "score": round(float(p.scores[i]), 5),
                }
                if p.masks is not None:
                    ann["segmentation"] = mask_to_rle(p.masks[i])
                    ann["area"] = int(p.masks[i].sum())
                if p.keypoints is not None:  # as COCO keypoint results (and Ultralytics' JSON): x, y, score
                    ann["keypoints"] = [round(float(v), 3) for v in p.keypoints[i].reshape(-1)]
                    ann["num_keypoints"] = int((p.keypoints[i][:, 2] >= KEYPOINT_MIN_SCORE).sum())
                self.annotations.append(ann)

    def _keypoint_categories(self, p: Prediction) -> None:
        """COCO's keypoint fields on every category: the keypoint names and the skeleton (1-based indices)."""
        names = p.keypoint_names or [str(i) for i in range(p.keypoints.shape[1])]
        skeleton = [[a + 1, b + 1] for a, b in (p.skeleton or ())]
        for cat in self.categories:
            cat.update(keypoints=list(names), skeleton=skeleton)

    def close(self) -> None:
        doc = {"info": {"description": "predictions", "version": "1.0"}, "images": self.images,
               "annotations": self.annotations, "categories": self.categories}
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path) or ".", prefix=".coco-")
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; others on a shared volume read results too
        os.replace(tmp, self.path)
