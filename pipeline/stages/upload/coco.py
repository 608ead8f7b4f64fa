"""COCO output: a detection / instance-segmentation / keypoint document (RLE masks; keypoints as `x, y, score`
triplets, as Ultralytics writes its COCO results; an oriented box as its 4-corner polygon `segmentation` and its
area, with its enclosing box as `bbox`, as DOTA's COCO conversions write them, and `obb`: `cx, cy, w, h, angle`) assembled, when the run ends, from the run's Parquet parts
(`export.py`), so it holds every item of the job, also across a crash and its resumed run. A classifier's rows (no
box) have no COCO form: its images are listed without annotations.

Images are numbered in input order (`Item.index`), annotations in image order then object order: a job that was
killed and resumed writes the same file as one clean run. The file is written atomically (`location.py`).
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.prediction import KEYPOINT_MIN_SCORE, obb_corners
from pipeline.stages.upload.export import ParquetWriter, mask_from_row, mask_to_rle, read_parts
from pipeline.stages.upload.location import Location

__all__ = ["CocoWriter", "coco_document"]


def coco_document(class_names: list[str], images: list[dict[str, Any]], annotations: list[dict[str, Any]],
                  keypoints: Any = None) -> dict[str, Any]:
    """The document; `keypoints` (a `KeypointLayout`: a pose model's) adds COCO's keypoint names and 1-based
    skeleton to every category."""
    categories = [{"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(class_names)]
    if keypoints is not None:
        names = list(keypoints.names or [])
        if not names and annotations and "keypoints" in annotations[0]:
            names = [str(i) for i in range(len(annotations[0]["keypoints"]) // 3)]
        for cat in categories:
            cat.update(keypoints=names, skeleton=[[a + 1, b + 1] for a, b in keypoints.skeleton])
    return {"info": {"description": "predictions", "version": "1.0"}, "images": images,
            "annotations": annotations, "categories": categories}


def _annotation(row: dict[str, Any], image_id: int, size: tuple[int, int], masks: bool) -> dict[str, Any]:
    x1, y1, x2, y2 = (float(row[k]) for k in ("x1", "y1", "x2", "y2"))
    ann = {
        "image_id": image_id, "category_id": int(row["class_id"]) + 1,
        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
        "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": 0, "score": round(float(row["score"]), 5),
    }
    if masks:
        mask = mask_from_row(row, size)
        ann["segmentation"] = mask_to_rle(mask)
        ann["area"] = int(mask.sum())
    if row.get("obb") is not None:
        cx, cy, w, h, angle = (float(v) for v in row["obb"])
        ann["segmentation"] = [[round(float(v), 2) for v in obb_corners([[cx, cy, w, h, angle]])[0].reshape(-1)]]
        ann["area"] = round(w * h, 2)
        ann["obb"] = [round(cx, 2), round(cy, 2), round(w, 2), round(h, 2), round(angle, 5)]
    if row.get("keypoints") is not None:
        kpts = [round(float(v), 3) for v in row["keypoints"]]
        ann["keypoints"] = kpts
        ann["num_keypoints"] = sum(1 for s in kpts[2::3] if s >= KEYPOINT_MIN_SCORE)
    return ann


class CocoWriter:
    """Writes the COCO document of everything the parts of `parts` hold, on `close()`."""

    def __init__(self, target: str | Location, class_names: list[str], parts: ParquetWriter, keypoints: Any = None):
        self.loc = target if isinstance(target, Location) else Location(target, "output coco")
        self.path = self.loc.shown
        self.class_names = list(class_names)
        self.parts = parts
        self.keypoints = keypoints  # a pose model's `KeypointLayout` (pipeline.stages.collect)

    def add(self, preds: list[Any]) -> None:
        """Nothing: the parts writer records the predictions; the document is assembled at the end."""

    def close(self) -> None:
        self.parts.close()  # its last part first
        found: list[tuple[int, dict[str, Any], list[dict[str, Any]]]] = []
        for record, rows in read_parts(self.parts.loc):
            if record["error"] is None and record["size"] is not None:
                found.append((record["index"], record, rows))
        found.sort(key=lambda t: t[0])  # input order, whatever order the items completed in
        images, annotations = [], []
        for image_id, (_, record, rows) in enumerate(found, start=1):
            h, w = record["size"]
            entry = {"id": image_id, "file_name": "/".join((*record["dataset"], record["name"] or f"{image_id}")),
                     "height": h, "width": w}
            if record["frame_idx"] is not None:
                entry["frame_idx"] = record["frame_idx"]
            images.append(entry)
            for row in rows:
                if row.get("x1") is None:  # a classifier's row: no object
                    continue
                annotations.append({"id": len(annotations) + 1,
                                     **_annotation(row, image_id, (h, w), record["masks"])})
        doc = coco_document(self.class_names, images, annotations, self.keypoints)
        self.loc.makedirs(self.loc.parent)
        self.loc.write_bytes(self.loc.path, json.dumps(doc).encode())
