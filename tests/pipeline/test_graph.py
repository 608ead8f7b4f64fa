"""The Supervisely `graph` geometry (keypoints): JSON as the SDK writes it, its class template, IoU, pickling."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from pipeline.annotation import Annotation, Graph, Label, ObjClass, ProjectMeta, Rectangle, geometry_iou
from pipeline.annotation.graph import COCO_KEYPOINTS, keypoints_config
from pipeline.exceptions import FormatError, InvalidArgumentError

# the SDK's own example (supervisely/geometry/graph.py, GraphNodes.from_json), one node disabled
SDK_NODES = {"nodes": {"0": {"loc": [5, 5]}, "1": {"loc": [100, 100]}, "2": {"loc": [250, 200], "disabled": True}}}


def _meta() -> ProjectMeta:
    return ProjectMeta([ObjClass("person", "graph", geometry_config=keypoints_config(["0", "1", "2"], [(0, 1), (1, 2)]))])


def test_annotation_and_meta_round_trip_a_graph():
    data = {"description": "", "tags": [], "size": {"height": 300, "width": 400},
            "objects": [{"classTitle": "person", "description": "", "tags": [], "geometryType": "graph",
                         **copy.deepcopy(SDK_NODES)}], "customBigData": {}}
    for meta in (_meta(), None):
        ann = Annotation.from_json(copy.deepcopy(data), meta)
        assert ann.to_json() == data
        assert ann.labels[0].geometry.nodes["2"] == (250.0, 200.0, True)
    meta_json = _meta().to_json()
    assert ProjectMeta.from_json(meta_json).to_json() == meta_json
    config = meta_json["classes"][0]["geometry_config"]
    assert config["nodes"]["1"]["label"] == "1" and len(config["nodes"]["1"]["loc"]) == 2
    assert config["edges"][1]["src"] == "1" and config["edges"][1]["dst"] == "2"
    assert config["nodes"]["0"]["color"].startswith("#")


def test_from_keypoints_disables_unsure_nodes_and_bbox_iou():
    kpts = np.array([[10, 20, 0.9], [30, 60, 0.2], [50, 40, 0.8]], np.float32)
    g = Graph.from_keypoints(kpts, ["a", "b", "c"], min_score=0.5)
    assert g.nodes["b"] == (30.0, 60.0, True) and g.to_json()["nodes"]["a"] == {"loc": [10, 20]}
    assert g.to_bbox() == Rectangle(top=20, left=10, bottom=60, right=50) and g.area == 0.0
    assert geometry_iou(g, Graph.from_keypoints(kpts, ["a", "b", "c"]), 100, 100) == 1.0
    assert geometry_iou(g, Rectangle.from_xyxy(10, 20, 50, 60), 100, 100) > 0.9
    label = Label(g, ObjClass("person", "graph"))
    assert pickle.loads(pickle.dumps(label)) == label
    with pytest.raises(InvalidArgumentError, match="keypoints must be"):
        Graph.from_keypoints(kpts, ["a", "b"])


def test_coco_template_and_bad_input():
    config = keypoints_config(COCO_KEYPOINTS)
    assert list(config["nodes"]) == list(COCO_KEYPOINTS) and len(config["edges"]) == 19
    assert {"src": "left_shoulder", "dst": "right_shoulder"}.items() <= config["edges"][7].items()
    assert keypoints_config(["x", "y"])["edges"] == []
    with pytest.raises(InvalidArgumentError, match="unique"):
        keypoints_config(["x", "x"])
    with pytest.raises(FormatError, match="node 'a'"):
        Annotation.from_json({"size": {"height": 9, "width": 9}, "objects": [
            {"classTitle": "p", "geometryType": "graph", "nodes": {"a": {"loc": [1]}}}]})
    with pytest.raises(FormatError, match="graph class"):
        Annotation.from_json({"size": {"height": 9, "width": 9}, "objects": [
            {"classTitle": "person", "geometryType": "rectangle", "points": {"exterior": [[0, 0], [1, 1]]}}]}, _meta())
    assert ProjectMeta().resolve_class("person", "graph").shape == "graph"
