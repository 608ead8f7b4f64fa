"""A platform project exported as a dataset to train on: YOLO (Ultralytics' layout) or COCO; the Supervisely
folder export is `pipeline.platform.project_dir.export_dir`. Used by `pipeline platform export --format ...`.

YOLO: classes are the project's, in its meta's order (class id = position). A project whose classes are all
keypoint graphs of one template is a pose dataset (`kpt_shape` [K, 3]; each object's box is its visible nodes' box,
a node disabled or missing is `0 0 0`; `flip_idx` when every left / right node name has its mirror). One with
bitmap or polygon classes is a segment dataset, where a bitmap is the outline of its largest piece
(`stages/upload/yolo.py`), a polygon its exterior ring, and any other object the 4 corners of its box. Any other
project is a detect dataset: each object's box (a graph's: its visible nodes'). An object that gives no box (a
graph with no visible node, an empty bitmap) is counted in `skipped`, never silently lost. COCO: bbox per object,
bitmaps as RLE and polygons as polygons, keypoint graphs as COCO keypoints (`x, y, v`: 2 visible, 0 not labelled;
the category's `keypoints` names and 1-based `skeleton` from the class's template), the `confidence` tag as
`score`.
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
from pipeline.stages.upload.yolo import (
    YoloDataset,
    box_line,
    flip_idx,
    mask_polygon,
    polygon_line,
    pose_line,
    unique_names,
)

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


def _template(obj_class: Any) -> tuple[list[str], list[str], list[tuple[int, int]]]:
    """(node keys, node labels, edges as index pairs) of a graph class's keypoint template."""
    config = obj_class.geometry_config or {}
    nodes = config.get("nodes") or {}
    keys = [str(k) for k in nodes]
    labels = [str((v or {}).get("label") or k) if isinstance(v, dict) else str(k) for k, v in nodes.items()]
    index = {k: i for i, k in enumerate(keys)}
    edges = [(index[e.get("src")], index[e.get("dst")]) for e in config.get("edges") or ()
             if isinstance(e, dict) and e.get("src") in index and e.get("dst") in index]
    return keys, labels, edges


def _yolo_task(meta: Any) -> tuple[str, tuple[list[str], list[str], list[tuple[int, int]]] | None]:
    """(task, the keypoint template for pose) of a project's classes (module doc)."""
    shapes = {c.shape for c in meta.obj_classes}
    if shapes == {"graph"}:
        templates = [_template(c) for c in meta.obj_classes]
        if templates[0][0] and all(t[:2] == templates[0][:2] for t in templates):
            return "pose", templates[0]
    if shapes & {"bitmap", "polygon"}:
        return "segment", None
    return "detect", None


def _yolo_lines(ann: Any, ids: dict[str, int], task: str, nodes: list[str] | None) -> tuple[list[str], int]:
    """(label lines, objects skipped: no box) of one annotation."""
    size = (ann.height, ann.width)
    lines, skipped = [], 0
    for label in ann.labels:
        g, cls = label.geometry, ids[label.obj_class.name]
        kind = g.geometry_type
        line = None
        if task == "pose":
            line = _pose_line(cls, g, nodes, size)
        elif kind == "bitmap" and task == "segment":
            polygon = mask_polygon(g.data, g.origin)
            line = None if polygon is None else polygon_line(cls, polygon, size)
        elif kind == "polygon" and task == "segment":
            line = polygon_line(cls, list(g.exterior), size)
        else:
            box = _visible_box(g) if kind == "graph" else g.to_bbox().to_xyxy()
            x1, y1, x2, y2 = box or (0, 0, 0, 0)
            if x2 > x1 and y2 > y1:
                line = box_line(cls, (x1, y1, x2, y2), size) if task == "detect" else \
                    polygon_line(cls, [(x1, y1), (x2, y1), (x2, y2), (x1, y2)], size)
        if line is None:
            skipped += 1
        else:
            lines.append(line)
    return lines, skipped


def _visible_box(graph: Any) -> tuple[float, float, float, float] | None:
    """The box of a graph's visible (not disabled) nodes; None when none is."""
    seen = [(x, y) for x, y, disabled in graph.nodes.values() if not disabled]
    if not seen:
        return None
    xs, ys = zip(*seen)
    return min(xs), min(ys), max(xs), max(ys)


def _pose_line(cls: int, graph: Any, nodes: list[str], size: tuple[int, int]) -> str | None:
    import numpy as np

    box = _visible_box(graph)
    if box is None:
        return None
    kpts = np.zeros((len(nodes), 3))
    for i, key in enumerate(nodes):
        node = graph.nodes.get(key)
        if node is not None and not node[2]:
            kpts[i] = (node[0], node[1], 2.0)  # visible; a hidden or missing one stays 0 0 0
    return pose_line(cls, box, kpts, size)


def _local_target(path: str | os.PathLike, what: str) -> Location:
    loc = Location(path, what)
    if loc.kind() == "file" or (loc.kind() == "dir" and loc.list_names()):
        raise InvalidArgumentError(f"{what} {loc} exists and is not an empty folder; choose another")
    loc.check_writable()
    return loc


def export_yolo(platform: Any, project_id: int, path: str | os.PathLike, images: str = "copy") -> dict[str, Any]:
    """Write project `project_id` as a YOLO dataset at `path` (module docstring). Returns {"images", "objects",
    "skipped", "task"}."""
    target = _local_target(path, "export target")
    meta = platform.project.get_meta(project_id)
    names = [c.name for c in meta.obj_classes]
    ids = {name: i for i, name in enumerate(names)}
    task, template = _yolo_task(meta)
    nodes = template[0] if template else None
    records = [{"dataset": list(ds), "name": im.name, "index": im.id}
               for ds, page in _images(platform, project_id) for im in page]
    name_of = unique_names(records)
    loc = target if target.is_uri else target.at(os.path.join(target.parent, f".{target.name[:64]}.export-"
                                                                         f"{uuid.uuid4().hex[:12]}"))
    dataset = YoloDataset(loc, names, task, images)
    if template is not None:
        dataset.kpt_shape, dataset.flip_idx = (len(template[0]), 3), flip_idx(template[1])
    objects = skipped = 0
    try:
        for ds, page in _images(platform, project_id):
            anns = platform.annotation.get_many([im.id for im in page])
            for im in page:
                lines, missed = _yolo_lines(anns[im.id], ids, task, nodes)
                objects, skipped = objects + len(lines), skipped + missed
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
    return {"images": dataset.count, "objects": objects, "skipped": skipped, "task": task}


def _coco_annotation(label: Any, image_id: int, ids: dict[str, int], size: tuple[int, int],
                     templates: dict[str, Any]) -> dict[str, Any]:
    g = label.geometry
    x1, y1, x2, y2 = (_visible_box(g) or (0, 0, 0, 0)) if g.geometry_type == "graph" else g.to_bbox().to_xyxy()
    ann: dict[str, Any] = {"image_id": image_id, "category_id": ids[label.obj_class.name] + 1,
                           "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                           "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": 0}
    if g.geometry_type == "bitmap":
        mask = g.to_mask(*size)
        ann["segmentation"], ann["area"] = mask_to_rle(mask), int(mask.sum())
    elif g.geometry_type == "polygon":
        ann["segmentation"] = [[round(float(v), 2) for xy in g.exterior for v in xy]]
        ann["area"] = round(g.area, 2)
    elif g.geometry_type == "graph" and label.obj_class.name in templates:
        kpts: list[float] = []
        for key in templates[label.obj_class.name][0]:  # COCO's x, y, v: 2 visible, 0 not labelled
            node = g.nodes.get(key)
            kpts += [round(node[0], 2), round(node[1], 2), 2] if node is not None and not node[2] else [0, 0, 0]
        ann["keypoints"], ann["num_keypoints"] = kpts, sum(1 for v in kpts[2::3] if v)
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
    templates = {c.name: _template(c) for c in meta.obj_classes if c.shape == "graph"}
    images, annotations = [], []
    for ds, page in _images(platform, project_id):
        anns = platform.annotation.get_many([im.id for im in page])
        for im in page:
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": "/".join((*ds, im.name)), "height": im.height,
                           "width": im.width})
            for label in anns[im.id].labels:
                annotations.append({"id": len(annotations) + 1,
                                    **_coco_annotation(label, image_id, ids, (im.height, im.width), templates)})
    doc = coco_document(names, images, annotations)
    for cat in doc["categories"]:  # a keypoint class: COCO's names of its keypoints and 1-based skeleton
        if cat["name"] in templates:
            _, labels, edges = templates[cat["name"]]
            cat.update(keypoints=labels, skeleton=[[a + 1, b + 1] for a, b in edges])
    loc.makedirs(loc.parent)
    loc.write_bytes(loc.path, json.dumps(doc).encode())
    return {"images": len(images), "objects": len(annotations)}
