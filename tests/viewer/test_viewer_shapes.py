"""The drawing records of `pipeline.viewer.shapes` for geometries the annotation model does not build (points,
lines, keypoint graphs) and for broken objects: shown as stored, never raising."""

from __future__ import annotations

import numpy as np

from pipeline.annotation import Bitmap
from pipeline.viewer.shapes import annotation_objects, bitmap_size, object_view

CLASSES = {"pose": {"name": "pose", "color": "#112233", "geometry_config": {
    "nodes": {"n1": {"label": "head", "loc": [0, 0]}, "n2": {"label": "hip", "loc": [0, 1]}},
    "edges": [{"src": "n1", "dst": "n2"}, {"src": "n1", "dst": "gone"}]}}}


def test_keypoint_graph_point_and_line():
    graph = object_view({"classTitle": "pose", "geometryType": "graph", "tags": [{"name": "confidence", "value": 0.4}],
                         "nodes": {"n1": {"loc": [10, 20]}, "n2": {"loc": [12.5, 60]}}}, 0, CLASSES)
    assert graph["shape"] == {"kind": "graph", "edges": [["n1", "n2"]], "nodes": [
        {"id": "n1", "x": 10, "y": 20, "label": "head"}, {"id": "n2", "x": 12.5, "y": 60, "label": "hip"}]}
    assert (graph["bbox"], graph["predicted"], graph["confidence"], graph["color"]) == ([10, 20, 12.5, 60], True, 0.4,
                                                                                        "#112233")
    point = object_view({"classTitle": "p", "geometryType": "point", "points": {"exterior": [[3, 4]], "interior": []}},
                        1, {})
    assert point["shape"] == {"kind": "point", "x": 3, "y": 4} and point["color"].startswith("#")
    line = object_view({"classTitle": "l", "geometryType": "line", "points": {"exterior": [[0, 0], [5, 5], [9, 1]]}},
                       2, {})
    assert line["shape"] == {"kind": "line", "points": [[0, 0], [5, 5], [9, 1]]} and line["bbox"] == [0, 0, 9, 5]


def test_broken_and_unknown_objects_are_listed_with_why():
    ann = {"objects": [
        {"classTitle": "a", "geometryType": "rectangle", "points": {"exterior": [[1, 2]]}},
        {"classTitle": "b", "geometryType": "bitmap", "bitmap": {"data": "not base64 png", "origin": [0, 0]}},
        {"classTitle": "c", "geometryType": "cuboid_3d"},
        "not an object",
        {"classTitle": "d", "geometryType": "polygon", "points": {"exterior": [[0, 0], [4, 0], [4, "x"]]}},
    ]}
    out = annotation_objects(ann, {})
    assert [o["shape"]["kind"] for o in out] == ["none"] * 5
    assert all(o["error"] for o in out)
    assert "two points" in out[0]["error"] and "not drawn" in out[2]["error"]


def test_grid_records_read_the_bitmap_size_from_the_png_header_and_thin_polygons():
    mask = np.zeros((30, 50), bool)
    mask[5:25, 7:44] = True
    data = Bitmap.from_mask(mask).to_json()["bitmap"]
    assert bitmap_size(data["data"]) == (37, 20)
    summary = object_view({"classTitle": "m", "geometryType": "bitmap", "bitmap": data}, 0, {}, full=False)
    assert summary["shape"] == {"kind": "bitmap", "x": 7, "y": 5, "width": 37, "height": 20}
    ring = [[float(np.cos(t) * 50 + 60), float(np.sin(t) * 50 + 60)] for t in np.linspace(0, 6.28, 500)]
    poly = object_view({"classTitle": "p", "geometryType": "polygon", "points": {"exterior": ring, "interior": []}},
                       0, {}, full=False)
    assert len(poly["shape"]["exterior"]) == 48 and poly["bbox"] == [min(p[0] for p in ring), min(p[1] for p in ring),
                                                                     max(p[0] for p in ring), max(p[1] for p in ring)]
