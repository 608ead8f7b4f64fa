"""Pose and classification predictions without Ray: their annotation (graph objects with the class's keypoint
template, a classifier's image tag), the classes and tags an upload makes in a project, the tag rules of the upload
modes, Parquet / COCO export, and `pipeline convert` of a YOLO .pt and an ONNX file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.annotation import Annotation, ObjClass, ProjectMeta, Tag, TagMeta
from pipeline.annotation.graph import COCO_KEYPOINTS, COCO_SKELETON, keypoints_config
from pipeline.prediction import Item, Prediction
from pipeline.stages.collect import build_prediction, keypoint_layout
from pipeline.stages.upload.merge import merge_annotation, merge_tags
from pipeline.stages.upload.target import resolve_class, resolve_tag_meta
from workers.messages import ModelOutput
from workers.models.base import ModelSpec

SIZE = (60, 80)


def pose_prediction(names=None, skeleton=None, k: int = 17) -> Prediction:
    rng = np.random.default_rng(0)
    kpts = np.concatenate([rng.uniform(0, 50, (2, k, 2)), rng.uniform(0, 1, (2, k, 1))], -1).astype(np.float32)
    out = ModelOutput(np.array([[0, 0, 50, 50], [10, 10, 40, 40]], np.float32), np.array([0.9, 0.6], np.float32),
                      np.array([0, 1]), keypoints=kpts)
    spec = ModelSpec("ultralytics", "yolo11n-pose", "pose", ["person", "robot"], 160,
                     {"kpt_shape": [k, 3], "kpt_names": [names] * 2 if names else None, "skeleton": skeleton})
    return build_prediction(Item(0, "k", "a.png"), out, SIZE, spec.classes, None, keypoint_layout(spec))


def classifier_prediction(probs=(0.1, 0.7, 0.2), keep=None) -> Prediction:
    out = ModelOutput.empty()
    out.probs = np.array(probs, np.float32)
    return build_prediction(Item(0, "k", "a.png"), out, SIZE, ["cat", "dog", "bird"], keep)


# ------------------------------------------------------------------------------------------------ annotation


def test_pose_objects_are_graphs_with_the_keypoint_template():
    p = pose_prediction()
    assert p.keypoint_names == list(COCO_KEYPOINTS) and p.skeleton == list(COCO_SKELETON)  # 17 unnamed: COCO
    ann = p.to_annotation()
    assert [lab.geometry.geometry_type for lab in ann.labels] == ["graph", "graph"]
    for lab, kpts in zip(ann.labels, p.keypoints):
        assert lab.obj_class.shape == "graph"
        assert dict(lab.obj_class.geometry_config) == keypoints_config(COCO_KEYPOINTS, COCO_SKELETON)
        assert list(lab.geometry.nodes) == list(COCO_KEYPOINTS)
        assert [n[2] for n in lab.geometry.nodes.values()] == (kpts[:, 2] < 0.25).tolist()  # disabled if unsure
        assert lab.confidence is not None
    # the names a model file gives, and no skeleton for a layout that is not COCO's
    p = pose_prediction(names=[f"p{i}" for i in range(5)], k=5)
    cfg = p.obj_class("person").geometry_config
    assert list(cfg["nodes"]) == [f"p{i}" for i in range(5)] and cfg["edges"] == []
    again = Prediction.from_json(json.loads(json.dumps(p.to_json())))
    assert again.keypoint_names == p.keypoint_names
    assert again.to_annotation().to_json() == p.to_annotation().to_json()


def test_a_classifier_is_an_image_tag_with_its_class_and_confidence():
    p = classifier_prediction()
    assert (p.top_class, round(p.top_score, 4), len(p)) == ("dog", 0.7, 0)
    ann = p.to_annotation()
    assert ann.labels == () and [(t.name, t.value, t.meta.value_type) for t in ann.img_tags] == [
        ("dog", 0.7, "any_number")]
    assert Prediction.from_json(p.to_json()).top_class == "dog"
    # the classes filter: a top class that is filtered out is no tag
    assert classifier_prediction(keep={"cat"}).to_annotation().img_tags == ()
    assert classifier_prediction(keep={"dog"}).top_class == "dog"


# --------------------------------------------------------------------------------------- project classes / tags


def test_classes_of_the_right_shape_renamed_when_the_project_has_another():
    p = pose_prediction()
    person = p.obj_class("person")
    assert resolve_class(ProjectMeta(), person) is person
    other_template = ObjClass("person", "graph", geometry_config=keypoints_config(["head", "tail"]))
    meta = ProjectMeta([ObjClass("person", "bitmap"), ObjClass("person_nn", "graph",
                                                                  geometry_config=other_template.geometry_config)])
    renamed = resolve_class(meta, person)  # a bitmap class, then a graph of other nodes: neither can hold it
    assert renamed.name == "person_nn_nn" and renamed.geometry_config == person.geometry_config
    same = ProjectMeta([person])
    assert resolve_class(same, p.obj_class("person")) is same.obj_classes[0]
    assert resolve_class(ProjectMeta([ObjClass("car", "any_shape")]), ObjClass("car", "bitmap")).shape == "any_shape"
    # tags: a tag of that name but another value type gets `<name>_nn`
    dog = TagMeta("dog", "any_number")
    assert resolve_tag_meta(ProjectMeta(tag_metas=[TagMeta("dog", "none")]), dog).name == "dog_nn"
    assert resolve_tag_meta(ProjectMeta(tag_metas=[dog]), TagMeta("dog", "any_number")) is dog


@pytest.mark.parametrize("mode,want", [
    ("create", [("dog", 0.7)]),
    ("append", [("dog", 0.1), ("night", None)]),
    ("iou_merge", [("dog", 0.1), ("night", None)]),
    ("replace", [("night", None), ("dog", 0.7)]),
])
def test_image_tags_under_each_mode(mode, want):
    current = Annotation(SIZE, img_tags=(Tag(TagMeta("dog", "any_number"), 0.1), Tag(TagMeta("night", "none"))))
    predicted = classifier_prediction().to_annotation()
    merged = merge_annotation(mode, current, predicted, 0.9)
    assert [(t.name, t.value) for t in merged.img_tags] == want
    as_json = merge_tags(mode, [t.to_json() for t in current.img_tags], [t.to_json() for t in predicted.img_tags],
                         lambda t: t["name"])
    assert [(t["name"], t.get("value")) for t in as_json] == want


# ---------------------------------------------------------------------------------------------------- export


def test_parquet_and_coco_carry_keypoints_and_classes(tmp_path):
    import pyarrow.parquet as pq

    from pipeline.stages.collect import KeypointLayout
    from pipeline.stages.upload.coco import CocoWriter
    from pipeline.stages.upload.export import ParquetWriter

    pose, clf = pose_prediction(), classifier_prediction()
    clf.item.index, clf.item.key = 1, "k1"
    writer = ParquetWriter(str(tmp_path / "out.parquet"), "job-1")
    writer.add([pose, clf])
    writer.close()
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert len(rows) == 3
    np.testing.assert_allclose(np.array(rows[0]["keypoints"]).reshape(17, 3), pose.keypoints[0])
    assert (rows[2]["class"], rows[2]["class_id"], rows[2]["x1"], rows[2]["keypoints"]) == ("dog", 1, None, None)
    assert rows[2]["score"] == pytest.approx(0.7)
    # COCO is assembled from the parts: keypoints with the names and skeleton; the classifier's image, no object
    coco = CocoWriter(str(tmp_path / "out.json"), ["person", "robot"], writer,
                      KeypointLayout(list(COCO_KEYPOINTS), list(COCO_SKELETON)))
    coco.close()
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["categories"][0]["keypoints"] == list(COCO_KEYPOINTS)
    assert doc["categories"][1]["skeleton"] == [[a + 1, b + 1] for a, b in COCO_SKELETON]
    assert len(doc["images"]) == 2 and [a["image_id"] for a in doc["annotations"]] == [1, 1]
    ann = doc["annotations"][0]
    np.testing.assert_allclose(np.array(ann["keypoints"]).reshape(17, 3), pose.keypoints[0], atol=1e-3)
    assert ann["num_keypoints"] == int((pose.keypoints[0][:, 2] >= 0.25).sum())


# --------------------------------------------------------------------------------------------- pipeline convert


def test_pipeline_convert_of_a_pt_and_an_onnx(tmp_path, capsys):
    pytest.importorskip("ultralytics")
    pytest.importorskip("onnxruntime")
    import yolo_models as ym

    from pipeline.app.cli import main
    from workers.models import parse_checkpoint

    out = tmp_path / "seg.pth"
    assert main(["convert", ym.cached_pt("yolo11n-seg"), str(out)]) == 0
    ckpt = parse_checkpoint(out.read_bytes(), str(out))
    assert (ckpt.framework, ckpt.task_type, ckpt.classes) == ("ultralytics", "instance_segmentation", ym.CLASSES)
    assert main(["convert", ym.cached_pt("yolo11n"), str(out), "--classes", "a,b"]) == 2  # bad input: a usage error
    assert "apply to ONNX files only" in capsys.readouterr().err
    import onnx

    _, onnx_path = ym.cached_export("yolo11n")
    bare = tmp_path / "bare.onnx"
    model = onnx.load(onnx_path)
    del model.metadata_props[:]
    onnx.save(model, str(bare))
    assert main(["convert", str(bare), "--classes", ",".join(ym.CLASSES), "--layout", "yolo"]) == 0
    side = json.loads((tmp_path / "bare.onnx.json").read_text())
    assert side["classes"] == ym.CLASSES and side["img_size"] == [ym.IMGSZ, ym.IMGSZ]
    assert main(["convert", str(bare), str(tmp_path / "x.json"), "--classes", "a", "--layout", "yolo"]) == 2
    assert "contradicts" in capsys.readouterr().err
