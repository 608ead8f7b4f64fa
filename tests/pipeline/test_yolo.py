"""YOLO datasets read back by Ultralytics' own loader (`check_det_dataset` + `YOLODataset`): a run's
`output={"yolo": dir}` (detect from a run; segment and pose from Parquet parts), and `pipeline platform export
--format yolo` of a relabeled demo project; the boxes round-trip. And `--format coco` of a project."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import write_images

from pipeline.prediction import Item, Prediction
from pipeline.stages.upload.export import ParquetWriter
from pipeline.stages.upload.location import Location
from pipeline.stages.upload.yolo import YoloWriter

S = {"conf": 0.0, "max_det": 4}


@pytest.fixture(scope="module")
def ultralytics_loader(tmp_path_factory):
    """Ultralytics' dataset loader: {image path relative to images/: label dict}, offline, settings in a temp dir."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo-config")))
    pytest.importorskip("ultralytics")
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    def load(root: Path, task: str) -> dict[str, dict]:
        data = check_det_dataset(str(root / "data.yaml"))
        dataset = YOLODataset(img_path=data["train"], data=data, task=task, augment=False, imgsz=64)
        return {str(Path(lb["im_file"]).relative_to(root / "images")): lb for lb in dataset.labels}

    return load


def _xyxy(label: dict) -> np.ndarray:
    """Ultralytics' normalised xywh boxes of a label -> xyxy pixels."""
    h, w = label["shape"]
    cx, cy, bw, bh = (label["bboxes"] * [w, h, w, h]).T
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)


@pytest.mark.slow
def test_a_runs_yolo_dataset_is_read_by_ultralytics_with_the_same_boxes(tiny_model, tmp_path, ultralytics_loader):
    imgs = tmp_path / "imgs"
    write_images(imgs, 2, size=(40, 56))
    write_images(imgs / "sub", 2, size=(48, 40), seed=1)
    write_images(imgs / "sub", 1, size=(30, 30), seed=2, fmt="png")  # img_0000.png: its stem is taken
    (imgs / "bad.jpg").write_bytes(b"no image")
    preds = tiny_model.predict(input=imgs, recursive=True, settings=S, progress=False,
                               output={"yolo": str(tmp_path / "yolo"), "yolo_images": "link"})
    labels = ultralytics_loader(tmp_path / "yolo", "detect")
    names = {p.index: os.path.join(*p.dataset, p.name) for p in preds if p.error is None}
    names = {i: n.replace("img_0000.", f"img_0000_{i:06d}.") if n.startswith("sub/img_0000") else n
             for i, n in names.items()}
    assert sorted(labels) == sorted(names.values())  # the failed item has no image; both stems kept apart
    for p in preds:
        if p.error is None:
            label = labels[names[p.index]]
            assert tuple(label["shape"]) == p.orig_size
            np.testing.assert_array_equal(label["cls"].ravel(), p.class_ids)
            np.testing.assert_allclose(_xyxy(label), p.boxes, atol=1e-3)
            assert os.path.islink(tmp_path / "yolo" / "images" / names[p.index])
    assert (tmp_path / "yolo" / "data.yaml").read_text().count("names:") == 1
    assert not (tmp_path / "yolo" / ".staging").exists()


def _preds(task: str) -> list[Prediction]:
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate([(40, 60), (50, 30)]):
        masks = np.zeros((2, h, w), bool)
        masks[0, 5:20, 4:25] = True
        masks[1, 22:38, 2:12] = True
        boxes = np.array([[4, 5, 25, 20], [2, 22, 12, 38]], np.float32)
        kpts = np.concatenate([rng.uniform(2, 28, (2, 5, 2)), rng.uniform(0, 1, (2, 5, 1))], axis=2)
        out.append(Prediction(boxes=boxes, scores=[0.9, 0.5], class_ids=[1, 0], classes=["b", "a"],
                              masks=masks if task == "instance_segmentation" else None,
                              keypoints=kpts if task == "pose" else None, orig_size=(h, w),
                              item=Item(index=i, key=f"k{i}", name=f"im{i}.png", dataset=("d",),
                                        image=rng.integers(0, 255, (h, w, 3), dtype=np.uint8))))
    return out


@pytest.mark.parametrize("task", ["instance_segmentation", "pose"])
def test_segment_and_pose_labels_from_parquet_parts(task, tmp_path, ultralytics_loader):
    preds = _preds(task)
    parts = ParquetWriter(tmp_path / "parts", job_id="j")
    names = ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]  # the pose model's keypoint names
    yolo = YoloWriter(Location(tmp_path / "yolo", "output yolo"), ["a", "b"], task, parts, keypoint_names=names)
    yolo.add(preds)  # arrays are staged as they come
    parts.add(preds)
    yolo.close()
    labels = ultralytics_loader(tmp_path / "yolo", "segment" if task != "pose" else "pose")
    import yaml

    data = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    assert data.get("flip_idx") == ([0, 2, 1, 4, 3] if task == "pose" else None)  # left and right swap
    for p in preds:
        label = labels[f"d/{p.name}"]
        np.testing.assert_array_equal(label["cls"].ravel(), p.class_ids)
        if task == "pose":
            np.testing.assert_allclose(_xyxy(label), p.boxes, atol=1e-3)
            kpts = label["keypoints"] * [p.orig_size[1], p.orig_size[0], 1]
            np.testing.assert_allclose(kpts, p.keypoints, atol=1e-3)
        else:  # the outline runs through the boundary pixels' centres: the box's far edges come 1 px closer
            np.testing.assert_allclose(_xyxy(label), p.boxes - [0, 0, 1, 1], atol=1e-3)
            assert all(len(s) >= 4 for s in label["segments"])
        image = np.asarray(__import__("PIL.Image").Image.open(tmp_path / "yolo" / "images" / f"d/{p.name}"))
        np.testing.assert_array_equal(image, p.image)


def test_obb_labels_from_parquet_parts(tmp_path, ultralytics_loader):
    """An oriented-box run's dataset: `class x1 y1 ... x4 y4`, the corners Ultralytics reads back as the object."""
    from pipeline.prediction import obb_corners

    preds = _preds("detection")
    for p in preds:
        h, w = p.orig_size
        p.obb = np.array([[w * 0.3, h * 0.4, w * 0.3, h * 0.2, 0.5], [w * 0.6, h * 0.7, w * 0.2, h * 0.1, 1.2]],
                         np.float32)
        p.boxes = np.concatenate([obb_corners(p.obb).min(1), obb_corners(p.obb).max(1)], 1)
    parts = ParquetWriter(tmp_path / "parts", job_id="j")
    yolo = YoloWriter(Location(tmp_path / "yolo", "output yolo"), ["a", "b"], "oriented_detection", parts)
    yolo.add(preds)
    parts.add(preds)
    yolo.close()
    labels = ultralytics_loader(tmp_path / "yolo", "obb")
    for p in preds:
        label = labels[f"d/{p.name}"]
        h, w = p.orig_size
        np.testing.assert_array_equal(label["cls"].ravel(), p.class_ids)
        corners = np.stack(label["segments"]) * [w, h]
        np.testing.assert_allclose(corners, obb_corners(p.obb), atol=1e-3)


@pytest.mark.slow
def test_platform_yolo_export_of_a_relabeled_demo_project(tiny_model, api, data_dir, tmp_path, ultralytics_loader):
    from pipeline.app import cli
    from pipeline.app.demo import build_shapes_project

    build_shapes_project(tmp_path / "shapes", 6)
    project_id = api.project.import_dir(tmp_path / "shapes")
    tiny_model.predict(project_id=project_id, upload="iou_merge", settings=S, progress=False)
    out = tmp_path / "yolo"
    assert cli.main(["--data-dir", str(data_dir), "platform", "export", str(project_id), str(out),
                     "--format", "yolo"]) == 0
    labels = ultralytics_loader(out, "segment")
    names = [c.name for c in api.project.get_meta(project_id).obj_classes]
    kinds = set()
    assert len(labels) == 6
    folders = {d.id: (d.name if d.parent_id is None else f"train/{d.name}") for d in api.dataset.list(project_id)}
    for info in api.image.iterate(project_id=project_id):
        label = labels[f"{folders[info.dataset_id]}/{info.name}"]
        ann = api.annotation.get(info.id)
        assert [names[int(c)] for c in label["cls"].ravel()] == [lab.obj_class.name for lab in ann.labels]
        for loaded, lab in zip(_xyxy(label), ann.labels):
            expected = np.array(lab.geometry.to_bbox().to_xyxy())
            kinds.add(lab.geometry.geometry_type)
            if lab.geometry.geometry_type == "rectangle":  # its four corners: the same box, within rounding
                np.testing.assert_allclose(loaded, expected, atol=1e-3)
            else:  # a bitmap's outline: through its boundary pixels' centres
                np.testing.assert_allclose(loaded, expected - [0, 0, 1, 1], atol=1e-3)
    assert kinds == {"rectangle", "bitmap"}


@pytest.mark.slow
def test_platform_coco_export(tiny_model, api, data_dir, tmp_path):
    import json

    from pipeline.app import cli
    from pipeline.app.demo import build_shapes_project
    from pipeline.stages.upload.export import rle_to_mask

    build_shapes_project(tmp_path / "shapes", 3)
    project_id = api.project.import_dir(tmp_path / "shapes")
    tiny_model.predict(project_id=project_id, upload="append", settings=S, progress=False)
    out = tmp_path / "c.json"
    assert cli.main(["--data-dir", str(data_dir), "platform", "export", str(project_id), str(out),
                     "--format", "coco"]) == 0
    doc = json.loads(out.read_text())
    names = [c.name for c in api.project.get_meta(project_id).obj_classes]
    assert [c["name"] for c in doc["categories"]] == names
    infos = list(api.image.iterate(project_id=project_id))
    assert sorted(i["file_name"].rsplit("/", 1)[1] for i in doc["images"]) == sorted(i.name for i in infos)
    by_name = {i["file_name"].rsplit("/", 1)[1]: i["id"] for i in doc["images"]}
    for info in infos:
        anns = [a for a in doc["annotations"] if a["image_id"] == by_name[info.name]]
        labels = api.annotation.get(info.id).labels
        assert [names[a["category_id"] - 1] for a in anns] == [lab.obj_class.name for lab in labels]
        for a, lab in zip(anns, labels):
            x1, y1, x2, y2 = lab.geometry.to_bbox().to_xyxy()
            np.testing.assert_allclose(a["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=0.01)
            if lab.geometry.geometry_type == "bitmap":
                np.testing.assert_array_equal(rle_to_mask(a["segmentation"]),
                                              lab.geometry.to_mask(info.height, info.width))
            else:
                assert a["score"] == pytest.approx(lab.confidence, abs=1e-4)


def _project_with(platform, objects: list, classes: tuple, size=(40, 60)):
    """A one-image project whose annotation holds `objects` (Labels) of `classes`."""
    import io

    from PIL import Image

    from pipeline.annotation import Annotation, ProjectMeta

    project = platform.project.create(f"p{len(platform.project.list())}")
    platform.project.update_meta(project.id, ProjectMeta(obj_classes=classes))
    ds = platform.dataset.create(project.id, "ds")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((*size, 3), np.uint8)).save(buf, format="PNG")
    image = platform.image.upload(ds.id, "a.png", buf.getvalue())
    platform.annotation.set(image.id, Annotation(size, objects))
    return project.id


def test_platform_yolo_export_of_keypoints_is_a_pose_dataset(tmp_path, ultralytics_loader):
    """A project of keypoint graphs (what a pose model's upload makes) exports as a YOLO pose dataset that
    Ultralytics reads with the same keypoints; before, it was a segment dataset with no object in it."""
    from pipeline.annotation import Graph, Label, ObjClass
    from pipeline.annotation.graph import keypoints_config
    from pipeline.app.platform_export import export_yolo
    from pipeline.platform import Platform

    platform = Platform(tmp_path / "data")
    person = ObjClass("person", "graph", geometry_config=keypoints_config(["nose", "left_eye", "right_eye"],
                                                                          [(0, 1), (0, 2)]))
    a = Graph({"nose": (10, 10), "left_eye": (20, 12), "right_eye": (5, 14, True)})  # right eye hidden
    b = Graph({"nose": (40, 30), "left_eye": (50, 28), "right_eye": (30, 26)})
    nobody = Graph({"nose": (1, 1, True), "left_eye": (2, 2, True), "right_eye": (3, 3, True)})
    pid = _project_with(platform, [Label(a, person), Label(b, person), Label(nobody, person)], (person,))
    done = export_yolo(platform, pid, tmp_path / "yolo")
    assert (done["task"], done["objects"], done["skipped"]) == ("pose", 2, 1)
    import yaml

    data = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    assert data["kpt_shape"] == [3, 3] and data["flip_idx"] == [0, 2, 1]
    label = ultralytics_loader(tmp_path / "yolo", "pose")["ds/a.png"]
    np.testing.assert_allclose(_xyxy(label), [[10, 10, 20, 12], [30, 26, 50, 30]], atol=1e-3)
    kpts = label["keypoints"] * [60, 40, 1]
    np.testing.assert_allclose(kpts[0], [[10, 10, 2], [20, 12, 2], [0, 0, 0]], atol=1e-3)
    np.testing.assert_allclose(kpts[1], [[40, 30, 2], [50, 28, 2], [30, 26, 2]], atol=1e-3)
    # COCO: keypoints in the template's order (x, y, v), the category's names and 1-based skeleton
    import json

    from pipeline.app.platform_export import export_coco

    export_coco(platform, pid, tmp_path / "coco.json")
    doc = json.loads((tmp_path / "coco.json").read_text())
    assert doc["categories"][0]["keypoints"] == ["nose", "left_eye", "right_eye"]
    assert doc["categories"][0]["skeleton"] == [[1, 2], [1, 3]]
    first, second = doc["annotations"][:2]
    assert first["keypoints"] == [10, 10, 2, 20, 12, 2, 0, 0, 0] and first["num_keypoints"] == 2
    assert first["bbox"] == [10, 10, 10, 2] and second["num_keypoints"] == 3


def test_platform_yolo_export_writes_every_object_with_a_box(tmp_path, ultralytics_loader):
    """Mixed shapes: with a bitmap the dataset is segment, and a graph is the 4 corners of its visible nodes' box
    (it was dropped); without one, detect: every object's box. A graph with no visible node has no box: counted as
    skipped."""
    from pipeline.annotation import Bitmap, Graph, Label, ObjClass, Rectangle
    from pipeline.annotation.graph import keypoints_config
    from pipeline.app.platform_export import export_yolo
    from pipeline.platform import Platform

    platform = Platform(tmp_path / "data")
    pose = ObjClass("pose", "graph", geometry_config=keypoints_config(["a", "b"]))
    blob, car = ObjClass("blob", "bitmap"), ObjClass("car", "rectangle")
    graph = Label(Graph({"a": (10, 10), "b": (30, 20)}), pose)
    hidden = Label(Graph({"a": (1, 1, True), "b": (3, 3, True)}), pose)
    mask = np.zeros((40, 60), bool)
    mask[5:15, 40:50] = True
    labels = [graph, Label(Bitmap.from_mask(mask), blob), hidden]
    seg = export_yolo(platform, _project_with(platform, labels, (pose, blob)), tmp_path / "seg")
    assert (seg["task"], seg["objects"], seg["skipped"]) == ("segment", 2, 1)
    label = ultralytics_loader(tmp_path / "seg", "segment")["ds/a.png"]
    np.testing.assert_allclose(_xyxy(label)[0], [10, 10, 30, 20], atol=1e-3)  # the graph's box
    det = export_yolo(platform, _project_with(platform, [graph, Label(Rectangle.from_xyxy(1, 2, 9, 8), car)],
                                              (pose, car)), tmp_path / "det")
    assert (det["task"], det["objects"], det["skipped"]) == ("detect", 2, 0)
    label = ultralytics_loader(tmp_path / "det", "detect")["ds/a.png"]
    np.testing.assert_allclose(_xyxy(label), [[10, 10, 30, 20], [1, 2, 9, 8]], atol=1e-3)
