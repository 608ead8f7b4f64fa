"""The Supervisely `graph` geometry (keypoints) and the skeleton template its class carries.

JSON as the Supervisely SDK writes it (`supervisely/geometry/graph.py`, `GraphNodes`, `KeypointsTemplate`):
    object  {"geometryType": "graph", "nodes": {"<node key>": {"loc": [x, y]}, ...}}  (+ "disabled": true on a node)
    class   {"shape": "graph", "geometry_config": {
                 "nodes": {"<node key>": {"label": "<name>", "loc": [x, y], "color": "#RRGGBB"}, ...},
                 "edges": [{"src": "<node key>", "dst": "<node key>", "color": "#RRGGBB"}, ...]}}
A graph's node keys must be keys of its class's template (the SDK checks this when it draws). Here a keypoint's name
is its node key. `loc` is x, y in image pixels for an object and a layout position in the class template.

`to_bbox` is the box of the nodes; `area` is 0 (as in the SDK); `to_mask` fills the box, so an IoU with another
geometry compares the extent of the pose (what merging predictions needs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from pipeline.annotation._util import as_float, color_for_name, json_num, require
from pipeline.annotation.geometry import GEOMETRY_TYPES, Geometry, Rectangle
from pipeline.exceptions import FormatError, InvalidArgumentError

__all__ = ["COCO_KEYPOINTS", "COCO_SKELETON", "Graph", "keypoints_config"]

COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)
"""The 17 keypoints of COCO person (and Ultralytics' `coco-pose.yaml`), in model output order."""

COCO_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9), (8, 10),
    (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)
"""COCO's person skeleton as 0-based keypoint index pairs."""


class Graph(Geometry):
    """Keypoints: `nodes` maps a node key to `(x, y, disabled)` (pixels; a disabled node is not shown)."""

    geometry_type: ClassVar[str] = "graph"
    __slots__ = ("nodes",)

    def __init__(self, nodes: Mapping[str, Sequence[Any]]):
        if not isinstance(nodes, Mapping) or not nodes:
            raise InvalidArgumentError("a graph needs at least one node: {key: (x, y[, disabled])}")
        parsed = {}
        for key, node in nodes.items():
            if not isinstance(key, str) or not key or len(node) not in (2, 3):
                raise InvalidArgumentError(f"graph node {key!r}: expected a string key and (x, y[, disabled])")
            disabled = bool(node[2]) if len(node) == 3 else False
            parsed[key] = (as_float(node[0], f"node {key} x"), as_float(node[1], f"node {key} y"), disabled)
        object.__setattr__(self, "nodes", parsed)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Graph is immutable")

    def __reduce__(self) -> tuple:
        return (Graph, (self.nodes,))

    @classmethod
    def from_keypoints(cls, keypoints: np.ndarray, names: Sequence[str], min_score: float = 0.0) -> Graph:
        """From one object's (K, 2) or (K, 3) `x, y[, score]` keypoints (pixels); a keypoint scored under
        `min_score` becomes a disabled node."""
        kpts = np.asarray(keypoints, dtype=np.float64)
        if kpts.ndim != 2 or kpts.shape[1] not in (2, 3) or kpts.shape[0] != len(names):
            raise InvalidArgumentError(f"keypoints must be ({len(names)}, 2 or 3); got shape {kpts.shape}")
        scores = kpts[:, 2] if kpts.shape[1] == 3 else np.ones(len(kpts))
        return cls({str(n): (k[0], k[1], bool(s < min_score)) for n, k, s in zip(names, kpts, scores)})

    @property
    def area(self) -> float:
        return 0.0

    def to_bbox(self) -> Rectangle:
        xs = [n[0] for n in self.nodes.values()]
        ys = [n[1] for n in self.nodes.values()]
        return Rectangle(top=min(ys), left=min(xs), bottom=max(ys), right=max(xs))

    def _window_mask(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        box = self.to_bbox()  # a single point or a line of nodes still covers its pixel
        fill = Rectangle(box.top, box.left, max(box.bottom, math.floor(box.top) + 1), max(box.right, math.floor(box.left) + 1))
        return fill._window_mask(x0, y0, x1, y1)

    def to_json(self) -> dict[str, Any]:
        nodes = {}
        for key, (x, y, disabled) in self.nodes.items():
            nodes[key] = {"loc": [json_num(x), json_num(y)], **({"disabled": True} if disabled else {})}
        return {"nodes": nodes}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "graph") -> Graph:
        nodes = require(data, "nodes", dict, where)
        parsed = {}
        for key, node in nodes.items():
            if not isinstance(node, dict) or not isinstance(node.get("loc"), list) or len(node["loc"]) != 2:
                raise FormatError(f"{where}: node {key!r} must be {{\"loc\": [x, y]}}; got {node!r:.80}")
            parsed[key] = (*node["loc"], bool(node.get("disabled", False)))
        try:
            return cls(parsed)
        except InvalidArgumentError as exc:
            raise FormatError(f"{where}: {exc}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Graph) and self.nodes == other.nodes

    def __hash__(self) -> int:
        return hash(("graph", tuple(sorted(self.nodes.items()))))

    def __repr__(self) -> str:
        return f"Graph({len(self.nodes)} nodes)"


def keypoints_config(names: Sequence[str], edges: Sequence[tuple[int, int]] | None = None) -> dict[str, Any]:
    """The `geometry_config` of a graph class: a node per keypoint name (laid out on a circle in a 100 x 100
    template), `edges` as index pairs. `edges=None` uses the COCO skeleton when `names` are COCO's 17 keypoints."""
    names = [str(n) for n in names]
    if len(set(names)) != len(names) or not names:
        raise InvalidArgumentError(f"keypoint names must be unique and not empty; got {names}")
    if edges is None:
        edges = COCO_SKELETON if tuple(names) == COCO_KEYPOINTS else ()
    nodes = {}
    for i, name in enumerate(names):
        angle = 2 * math.pi * i / len(names)
        loc = [json_num(50 + 40 * math.sin(angle)), json_num(50 - 40 * math.cos(angle))]
        nodes[name] = {"label": name, "loc": loc, "color": color_for_name(name)}
    out_edges = []
    for a, b in edges:
        if not (0 <= a < len(names) and 0 <= b < len(names)):
            raise InvalidArgumentError(f"skeleton edge ({a}, {b}) names a keypoint outside 0..{len(names) - 1}")
        out_edges.append({"src": names[a], "dst": names[b], "color": color_for_name(f"{names[a]}-{names[b]}")})
    return {"nodes": nodes, "edges": out_edges}


GEOMETRY_TYPES["graph"] = Graph  # read and written like the other geometries from now on
