"""The Supervisely annotation format: geometries, classes, tags, image and video annotations, IoU and drawing.

    from pipeline.annotation import Annotation, Label, ObjClass, Rectangle, Tag
    cls = ObjClass("car", "rectangle")
    ann = Annotation((480, 640), [Label(Rectangle.from_xyxy(10, 20, 110, 80), cls, [Tag("confidence", 0.93)])])
    ann.to_json()  # {"description", "tags", "size": {"height", "width"}, "objects": [...], "customBigData"}

Coordinates are pixels of the original image; boxes are `x1, y1, x2, y2`; masks are (H, W) bool.
"""

from pipeline.annotation.annotation import Annotation, Label
from pipeline.annotation.draw import draw_annotation, draw_boxes
from pipeline.annotation.geometry import (
    GEOMETRY_TYPES,
    Bitmap,
    Geometry,
    Polygon,
    Rectangle,
    box_iou,
    box_iou_matrix,
    geometry_from_json,
    geometry_iou,
    mask_iou,
)
from pipeline.annotation.graph import Graph  # registers the "graph" geometry type
from pipeline.annotation.meta import CONFIDENCE_TAG, SHAPES, TAG_VALUE_TYPES, ObjClass, ProjectMeta, Tag, TagMeta
from pipeline.annotation.video import VideoAnnotation, VideoFigure, VideoFrame, VideoObject, VideoTag

__all__ = [
    "CONFIDENCE_TAG",
    "GEOMETRY_TYPES",
    "SHAPES",
    "TAG_VALUE_TYPES",
    "Annotation",
    "Bitmap",
    "Geometry",
    "Graph",
    "Label",
    "ObjClass",
    "Polygon",
    "ProjectMeta",
    "Rectangle",
    "Tag",
    "TagMeta",
    "VideoAnnotation",
    "VideoFigure",
    "VideoFrame",
    "VideoObject",
    "VideoTag",
    "box_iou",
    "box_iou_matrix",
    "draw_annotation",
    "draw_boxes",
    "geometry_from_json",
    "geometry_iou",
    "mask_iou",
]
