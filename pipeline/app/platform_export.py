"""A platform project exported as a dataset to train on: YOLO (Ultralytics' layout) or COCO; the Supervisely
folder export is `pipeline.platform.project_dir.export_dir`. Used by `pipeline platform export --format ...`.

YOLO: classes are the project's, in its meta's order (class id = position). A project whose classes are all
rectangles is a detect dataset; one with bitmap or polygon classes a segment dataset, where a rectangle is written
as its 4 corners, a bitmap as the outline of its largest piece (`stages/upload/yolo.py`), a polygon as its
exterior ring. COCO: bbox per object, bitmaps as RLE and polygons as polygons, the `confidence` tag as `score`.
Images are numbered in dataset order (parents first), then name order.

The target is a new or empty folder (a file for COCO), a local path or an object-store URI. A local YOLO folder is
written next to its target and renamed into place at the end: a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

from pipeline.exceptions import InvalidArgumentError
from pipeline.stages.upload.coco import coco_document
from pipeline.stages.upload.export import mask_to_rle
from pipeline.stages.upload.location import Location
from pipeline.stages.upload.yolo import YoloDataset, box_line, mask_polygon, polygon_line, unique_names

__all__ = ["export_coco", "export_yolo"]

_PAGE = 500  # images per query page: bounded memory for projects of any size


def _images(platform: Any, project_id: int) -> Iterator[tuple[tuple[str, ...], list[Any]]]:
    """(dataset path, a page of its ImageInfos) of an images project, parents before children."""
    info = platform.project.get(project_id)
    if info.type != "images":
        raise InvalidArgumentError(f"project {project_id} is a {info.type} project; YOLO and COCO exports are "
                                   "written for image projects (export it with --format supervisely)")
    datasets = platform.dataset.list(project_id)
    paths: dict[int, tuple[str, ...]] = {}
    for ds in datasets:  # parents come before children
        paths[ds.id] = (paths[ds.parent_id] if ds.parent_id else ()) + (ds.name,)
    for ds in datasets:
        page: list[Any] = []
        for image in platform.image.iterate(dataset_id=ds.id, batch=_PAGE):
            page.append(image)
            if len(page) == _PAGE:
                yield paths[ds.id], page
                page = []
        if page:
            yield paths[ds.id], page


def _yolo_lines(ann: Any, ids: dict[str, int], task: str) -> list[str]:
    size = (ann.height, ann.width)
    lines = []
    for label in ann.labels:
        g, cls = label.geometry, ids[label.obj_class.name]
        kind = g.geometry_type
        if task == "detect" or kind == "rectangle":
            x1, y1, x2, y2 = g.to_bbox().to_xyxy()
            if task == "detect":
                lines.append(box_line(cls, (x1, y1, x2, y2), size))
            else:
                lines.append(polygon_line(cls, [(x1, y1), (x2, y1), (x2, y2), (x1, y2)], size))
        elif kind == "bitmap":
            polygon = mask_polygon(g.data, g.origin)
            if polygon is not None:
                lines.append(polygon_line(cls, polygon, size))
        elif kind == "polygon":
            lines.append(polygon_line(cls, list(g.exterior), size))
    return lines


def _local_target(path: str | os.PathLike, what: str) -> Location:
    loc = Location(path, what)
    if loc.kind() == "file" or (loc.kind() == "dir" and loc.list_names()):
        raise InvalidArgumentError(f"{what} {loc} exists and is not an empty folder; choose another")
    loc.check_writable()
    return loc


def export_yolo(platform: Any, project_id: int, path: str | os.PathLike, images: str = "copy") -> dict[str, Any]:
    """Write project `project_id` as a YOLO dataset at `path` (module docstring). Returns {"images", "objects",
    "task"}."""
    target = _local_target(path, "export target")
    meta = platform.project.get_meta(project_id)
    names = [c.name for c in meta.obj_classes]
    ids = {name: i for i, name in enumerate(names)}
    task = "detect" if all(c.shape == "rectangle" for c in meta.obj_classes) else "segment"
    records = [{"dataset": list(ds), "name": im.name, "index": im.id}
               for ds, page in _images(platform, project_id) for im in page]
    name_of = unique_names(records)
    loc = target if target.is_uri else target.at(os.path.join(target.parent, f".{target.name[:64]}.export-"
                                                                         f"{uuid.uuid4().hex[:12]}"))
    dataset = YoloDataset(loc, names, task, images)
    objects = 0
    try:
        for ds, page in _images(platform, project_id):
            anns = platform.annotation.get_many([im.id for im in page])
            for im in page:
                lines = _yolo_lines(anns[im.id], ids, task)
                objects += len(lines)
                dataset.add(ds, name_of({"dataset": list(ds), "name": im.name, "index": im.id}), lines, im.path)
        dataset.finish()
        if not target.is_uri:
            if os.path.isdir(target.path):
                os.rmdir(target.path)  # an empty folder, checked above
            os.replace(loc.path, target.path)
    except BaseException:
        if not target.is_uri:
            shutil.rmtree(loc.path, ignore_errors=True)
        raise
    return {"images": dataset.count, "objects": objects, "task": task}


def _coco_annotation(label: Any, image_id: int, ids: dict[str, int], size: tuple[int, int]) -> dict[str, Any]:
    g = label.geometry
    x1, y1, x2, y2 = g.to_bbox().to_xyxy()
    ann: dict[str, Any] = {"image_id": image_id, "category_id": ids[label.obj_class.name] + 1,
                           "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                           "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": 0}
    if g.geometry_type == "bitmap":
        mask = g.to_mask(*size)
        ann["segmentation"], ann["area"] = mask_to_rle(mask), int(mask.sum())
    elif g.geometry_type == "polygon":
        ann["segmentation"] = [[round(float(v), 2) for xy in g.exterior for v in xy]]
        ann["area"] = round(g.area, 2)
    if label.confidence is not None:
        ann["score"] = round(float(label.confidence), 5)
    return ann


def export_coco(platform: Any, project_id: int, path: str | os.PathLike) -> dict[str, Any]:
    """Write project `project_id` as one COCO JSON file at `path` (module docstring). Returns {"images",
    "objects"}."""
    loc = Location(path, "export target")
    if loc.kind() == "dir":
        raise InvalidArgumentError(f"export target {loc} is a folder; a COCO export is one JSON file")
    loc.check_writable()
    meta = platform.project.get_meta(project_id)
    names = [c.name for c in meta.obj_classes]
    ids = {name: i for i, name in enumerate(names)}
    images, annotations = [], []
    for ds, page in _images(platform, project_id):
        anns = platform.annotation.get_many([im.id for im in page])
        for im in page:
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": "/".join((*ds, im.name)), "height": im.height,
                           "width": im.width})
            for label in anns[im.id].labels:
                annotations.append({"id": len(annotations) + 1,
                                    **_coco_annotation(label, image_id, ids, (im.height, im.width))})
    loc.makedirs(loc.parent)
    loc.write_bytes(loc.path, json.dumps(coco_document(names, images, annotations)).encode())
    return {"images": len(images), "objects": len(annotations)}
