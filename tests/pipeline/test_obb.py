"""Oriented boxes (Ultralytics' obb task) without Ray: a prediction's objects are 4-point polygons, the oriented
boxes survive subsetting, JSON, a reduced decode's rescaling, Parquet and COCO, and tiles merge by rotated NMS.
The models themselves are compared with Ultralytics in tests/workers (`.pt` and ONNX) and through the pipeline in
test_yolo_pipeline.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.exceptions import InvalidArgumentError
from pipeline.prediction import Item, Prediction, obb_corners
from pipeline.stages.collect import build_prediction
from workers.messages import ModelOutput
from workers.models.base import normalize_task_type, rescale_output, scale_obb
from workers.tiling import check_tiling, merge, predict_tiled, shift_back

SIZE = (60, 80)
OBB = np.array([[30, 20, 24, 10, 0.4], [50, 40, 16, 12, 1.3], [30.5, 20.5, 24, 10, 0.42]], np.float32)


def enclosing(obb: np.ndarray) -> np.ndarray:
    c = obb_corners(obb)
    return np.concatenate([c.min(1), c.max(1)], 1)


def obb_output(obb=OBB, scores=(0.9, 0.7, 0.6), class_ids=(0, 1, 0)) -> ModelOutput:
    return ModelOutput(enclosing(obb), np.array(scores, np.float32), np.array(class_ids, np.int64),
                       obb=np.asarray(obb, np.float32))


def obb_prediction() -> Prediction:
    return build_prediction(Item(0, "k", "a.png"), obb_output(), SIZE, ["plane", "ship"], None)


def test_corners_are_ultralytics_ones():
    pytest.importorskip("ultralytics")
    from ultralytics.utils import ops

    np.testing.assert_allclose(obb_corners(OBB), ops.xywhr2xyxyxyxy(OBB), atol=1e-5)
    assert normalize_task_type("obb") == normalize_task_type("oriented_detection") == "oriented_detection"


def test_objects_are_polygons_of_the_corners():
    p = obb_prediction()
    assert p.object_shape == "polygon" and p.obj_class("ship").shape == "polygon"
    ann = p.to_annotation()
    assert [lab.geometry.geometry_type for lab in ann.labels] == ["polygon"] * 3
    for lab, corners, score in zip(ann.labels, obb_corners(OBB), p.scores):
        np.testing.assert_allclose(lab.geometry.exterior, corners, atol=1e-4)
        assert lab.confidence == pytest.approx(score, abs=1e-4)
    # the enclosing box is the polygon's box
    np.testing.assert_allclose(ann.labels[1].geometry.to_bbox().to_xyxy(), p.boxes[1], atol=1e-4)


def test_subsets_json_and_drawing_keep_the_oriented_boxes():
    p = obb_prediction()
    sub = p[p.class_ids == 0]
    np.testing.assert_array_equal(sub.obb, OBB[[0, 2]])
    again = Prediction.from_json(json.loads(json.dumps(p.to_json())))
    np.testing.assert_allclose(again.obb, p.obb, atol=1e-5)
    assert again.to_annotation().to_json() == p.to_annotation().to_json()
    with pytest.raises(ValueError, match=r"obb must be \(N, 5\)"):
        Prediction(boxes=p.boxes, scores=p.scores, class_ids=p.class_ids, classes=p.classes, obb=OBB[:2])
    img = np.zeros((*SIZE, 3), np.uint8)
    drawn = p.draw(img, show_scores=False)
    # the outline of a tilted box is drawn, not its enclosing rectangle: that rectangle's corner stays black
    x2, y2 = (int(v) for v in p.boxes[1, 2:])
    assert drawn.any() and not drawn[y2 - 1, x2 - 1].any()
    right = obb_corners(OBB)[1][np.argmax(obb_corners(OBB)[1][:, 0])]  # the corner on the rectangle's right edge
    assert drawn[int(right[1]), int(right[0])].any()


def test_rescaling_after_a_reduced_decode():
    # one scale on both axes: exact
    out = rescale_output(obb_output(), (30, 40), SIZE)
    np.testing.assert_allclose(obb_corners(out.obb), obb_corners(OBB) * 2, atol=1e-4)
    np.testing.assert_allclose(out.boxes, enclosing(OBB) * 2, atol=1e-4)
    # different scales: exact for an axis-aligned box, and the sides' lengths are those of the scaled corners
    axis = np.array([[10, 10, 8, 4, 0.0], [10, 10, 8, 4, np.pi / 2]], np.float32)
    np.testing.assert_allclose(obb_corners(scale_obb(axis, 2.0, 3.0)), obb_corners(axis) * [2, 3], atol=1e-4)
    tilted = scale_obb(OBB[:1], 1.5, 1.52)
    corners = obb_corners(OBB[:1])[0] * [1.5, 1.52]
    assert tilted[0, 2] == pytest.approx(np.linalg.norm(corners[0] - corners[3]), rel=1e-4)
    assert tilted[0, 3] == pytest.approx(np.linalg.norm(corners[0] - corners[1]), rel=1e-4)


def test_parquet_and_coco_rows(tmp_path):
    import pyarrow.parquet as pq

    from pipeline.stages.upload.coco import CocoWriter
    from pipeline.stages.upload.export import ParquetWriter

    p = obb_prediction()
    parts = ParquetWriter(str(tmp_path / "out.parquet"), "job-1")
    parts.add([p])
    parts.close()
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    np.testing.assert_allclose([r["obb"] for r in rows], OBB, atol=1e-5)
    np.testing.assert_allclose([[r[k] for k in ("x1", "y1", "x2", "y2")] for r in rows], p.boxes, atol=1e-4)
    CocoWriter(str(tmp_path / "out.json"), ["plane", "ship"], parts).close()
    anns = json.loads((tmp_path / "out.json").read_text())["annotations"]
    for ann, ob in zip(anns, OBB):
        np.testing.assert_allclose(np.reshape(ann["segmentation"], (4, 2)), obb_corners(ob[None])[0], atol=0.01)
        assert ann["area"] == pytest.approx(ob[2] * ob[3], abs=0.01)
        np.testing.assert_allclose(ann["obb"], ob, atol=0.01)


def test_tiles_merge_by_rotated_nms():
    pytest.importorskip("ultralytics")
    # the same object found by two overlapping tiles (at different origins), and an object of each class apart
    a = shift_back(enclosing(OBB[:1]), [0.8], [0], None, (0, 0, 40, 40), OBB[:1])
    moved = OBB[:1] - [10, 5, 0, 0, 0]
    b = shift_back(enclosing(moved), [0.9], [0], None, (5, 10, 45, 50), moved)
    c = shift_back(enclosing(OBB[1:2]), [0.5], [1], None, (0, 0, 80, 60), OBB[1:2])
    from workers.tiling import concat

    kept = merge(concat([a, b, c]), method="nms", iou=0.5)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.5]) and kept.class_ids.tolist() == [0, 1]
    np.testing.assert_allclose(kept.obb, OBB[:2], atol=1e-4)
    np.testing.assert_allclose(kept.boxes, enclosing(OBB[:2]), atol=1e-4)
    # classes stay apart unless class_agnostic
    same_place = shift_back(enclosing(OBB[:1]), [0.4], [1], None, (0, 0, 80, 60), OBB[:1])
    assert len(merge(concat([a, same_place]), method="nms")) == 2
    assert len(merge(concat([a, same_place]), method="nms", class_agnostic=True)) == 1


def test_tiled_prediction_of_an_oriented_model():
    pytest.importorskip("ultralytics")
    image = np.zeros((100, 140, 3), np.uint8)

    def predict(views):  # one box at each view's centre, in that view's pixels
        return [obb_output(np.array([[v.shape[1] / 2, v.shape[0] / 2, 20, 10, 0.3]], np.float32), (0.8,), (0,))
                for v in views]

    tiling = check_tiling({"tile": 64, "overlap": 0.25}, "oriented_detection")
    assert tiling["merge"] == "nms"
    dets = predict_tiled(image, predict, tiling, batch_size=4)
    assert dets.obb.shape == (len(dets), 5) and len(dets) >= 4
    np.testing.assert_allclose(dets.boxes, enclosing(dets.obb), atol=1e-4)


def test_tiling_settings_for_an_oriented_model():
    assert check_tiling({"merge": "nms"}, "oriented_detection")["merge"] == "nms"
    with pytest.raises(InvalidArgumentError, match="rotated NMS"):
        check_tiling({"merge": "nmm"}, "oriented_detection")
    with pytest.raises(InvalidArgumentError, match="task is 'pose'"):
        check_tiling({}, "pose")
