"""Ultralytics YOLO models and their ONNX exports through the whole pipeline: `api.nn.deploy(path)` with nothing
else given, real Ray replicas, `model.predict(input=<directory>)`, against `ultralytics.YOLO(path).predict(...)` on
the same image files (square, landscape, portrait, an odd small one, read as one mixed batch).

Tolerances of the issue: boxes 1 px, scores 1e-3 (ONNX against the .pt: 1e-2 relative), masks IoU >= 0.98,
keypoints 1 px, the same top-1 class. Models: random-weight YOLO11n detect / seg / pose / cls and YOLO26n
(end-to-end, NMS-free head) built offline from Ultralytics' bundled YAMLs at imgsz 160 (tests/yolo_models.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yolo_models as ym
from helpers import RunsShell

pytest.importorskip("ultralytics")
pytest.importorskip("onnxruntime")

from yolo_models import (  # noqa: E402
    KPT_PX,
    MASK_IOU,
    SCORE_TOL,
    _boxes_of,
    assert_same_boxes,
    mask_ious,
    match,
)

# bundled YAML -> (task type, Ultralytics export options of its ONNX file)
MODELS = {  # in the order the tests use them: the upload tests after the .pt parity reuse the last three
    "yolo11n": ("detection", {}),
    "yolo26n": ("detection", {"nms": False}),  # its end-to-end (one-to-one) head in the export too
    "yolo11n-obb": ("oriented_detection", {}),
    "rtdetr-l": ("detection", {}),  # Ultralytics' RT-DETR: stretched input, no NMS
    "yolo11n-seg": ("instance_segmentation", {}),
    "yolo11n-pose": ("pose", {}),
    "yolo11n-cls": ("classification", {}),
}
ULTRA_TASKS = {"detection": "detect", "instance_segmentation": "segment", "pose": "pose",
               "classification": "classify", "oriented_detection": "obb"}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """PNG files (lossless: both sides decode the same pixels): square, landscape, portrait, small odd, and a second
    landscape (one letterbox shape shared by two images of a batch)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("yolo-images")
    imgs = ym.images()
    imgs.append(imgs[1][::-1].copy())
    for i, img in enumerate(imgs):
        Image.fromarray(img).save(folder / f"img_{i}.png")
    return folder


class Deployments:
    """Models deployed once for the module (at most `keep` at a time: each replica is a process with torch and
    Ultralytics loaded); `get` connects the calling test's Api."""

    def __init__(self, keep: int = 3):
        import pipeline

        self.home = pipeline.Api(data_dir=Path(ym._root()) / "deploy-home")
        self.models: dict[str, object] = {}
        self.keep = keep

    def get(self, api, path: str):
        if path not in self.models:
            while len(self.models) >= self.keep:
                self.models.pop(next(iter(self.models))).shutdown()
            self.models[path] = self.home.nn.deploy(path)  # nothing else given: everything is read from the file
        self.models[path] = self.models.pop(path)  # most recently used last
        return api.nn.connect(self.models[path].task_id)

    def close(self) -> None:
        for model in self.models.values():
            model.shutdown()


@pytest.fixture(scope="module")
def deployments(ray_session):
    d = Deployments()
    yield d
    d.close()


_YOLOS: dict[tuple, object] = {}


def theirs(path: str, file: Path, task: str | None = None, **kwargs):
    """Ultralytics' own predictor on the same file."""
    from ultralytics import YOLO

    if (path, task) not in _YOLOS:  # an RT-DETR export needs Ultralytics' RTDETR class (a .pt finds it itself)
        from ultralytics import RTDETR

        _YOLOS[path, task] = RTDETR(path) if "rtdetr" in Path(path).name else YOLO(path, task=task)
    return _YOLOS[path, task].predict(str(file), verbose=False, **kwargs)[0]


def with_masks(res, size):
    """Ultralytics' result restricted to the objects whose mask is not empty at the image size (the pipeline drops
    the others: an empty mask is no object), and those masks (N, H, W) bool at the image size."""
    from ultralytics.utils import ops

    masks = ops.scale_masks(res.masks.data[None].float(), size)[0] > 0.5
    keep = masks.flatten(1).any(1)
    return res[keep], masks[keep].numpy()


# The largest differences seen against Ultralytics' own predictor (printed at the end of the module, `-s`: the
# figures docs/models.md records).
WORST: dict[str, float] = {}


def _record(key: str, value: float, worse=max) -> None:
    WORST[key] = worse(WORST.get(key, value), float(value))


@pytest.fixture(scope="module", autouse=True)
def report_worst():
    yield
    print("\nparity through the pipeline:", {k: round(v, 6) for k, v in sorted(WORST.items())})


def assert_same_as_ultralytics(pred, res, task_type: str, file: Path, kind: str = "pt") -> int:
    """The pipeline's prediction of `file` equals Ultralytics' result `res`; returns the number of objects compared."""
    assert pred.error is None and pred.name == file.name
    if task_type == "classification":
        assert len(pred) == 0 and pred.probs is not None
        np.testing.assert_allclose(pred.probs, res.probs.data.numpy(), atol=1e-4)
        _record(f"{kind} probs", np.abs(pred.probs - res.probs.data.numpy()).max())
        assert pred.top_class == res.names[res.probs.top1]
        assert [(t.name, t.value) for t in pred.annotation.img_tags] == [(pred.top_class, round(pred.top_score, 4))]
        return 1
    if task_type == "instance_segmentation":
        res, ref = with_masks(res, pred.orig_size)
        order = assert_same_boxes(pred, res)
        assert pred.masks.shape == (len(pred), *pred.orig_size)
        assert mask_ious(pred.masks, ref[order]).min() >= MASK_IOU
        _record(f"{kind} mask IoU min", mask_ious(pred.masks, ref[order]).min(), min)
        _record_boxes(pred, res, order, kind)
        return len(pred)
    order = assert_same_boxes(pred, res)
    _record_boxes(pred, res, order, kind)
    if task_type == "pose":
        ref = res.keypoints.data.numpy()[order]
        np.testing.assert_allclose(pred.keypoints[..., :2], ref[..., :2], atol=KPT_PX)
        np.testing.assert_allclose(pred.keypoints[..., 2], ref[..., 2], atol=SCORE_TOL)
        _record(f"{kind} keypoints px", np.abs(pred.keypoints[..., :2] - ref[..., :2]).max())
    return len(pred)


def _record_boxes(pred, res, order, kind: str) -> None:
    boxes = _boxes_of(res)
    _record(f"{kind} boxes px", np.abs(pred.boxes - boxes.xyxy.numpy()[order]).max())
    _record(f"{kind} scores", np.abs(pred.scores - boxes.conf.numpy()[order]).max())
    if pred.obb is not None:
        _record(f"{kind} obb px", np.abs(pred.obb[:, :4] - res.obb.xywhr.numpy()[order][:, :4]).max())


# ------------------------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("name", list(MODELS))
def test_a_yolo_pt_through_the_pipeline_equals_yolo_predict(api, deployments, image_dir, name):
    task_type = MODELS[name][0]
    path = ym.cached_pt(name)
    model = deployments.get(api, path)
    info = model.info()
    assert (info["framework"], info["task_type"], info["classes"], info["img_size"]) == (
        "ultralytics", task_type, ym.CLASSES, ym.IMGSZ)
    assert model.spec.runtime == "pytorch" and info["replicas"] == 1 and info["device"] == "cpu"
    preds = model.predict(input=str(image_dir), progress=False)
    files = sorted(image_dir.iterdir())
    assert [p.name for p in preds] == [f.name for f in files]
    compared = [assert_same_as_ultralytics(p, theirs(path, f), task_type, f) for p, f in zip(preds, files)]
    assert sum(compared) >= (len(files) if task_type == "classification" else 10 * len(files))
    if task_type == "classification":
        assert len({p.top_class for p in preds}) > 1  # the images are told apart


# ------------------------------------------------------------------------------------------- uploads, export


def _export_checked(api, project_id: int, folder: Path) -> Path:
    """The project exported as a Supervisely folder, checked against the SDK's reader requirements."""
    from test_project_dir import check_sly_project

    api.project.export_dir(project_id, folder)
    assert check_sly_project(folder) == []
    return folder


def test_segment_relabel_create_then_iou_merge_exports_for_the_sdk(api, deployments, image_dir, tmp_path):
    from pipeline.annotation import Label, ObjClass, Rectangle, geometry_iou

    seg = deployments.get(api, ym.cached_pt("yolo11n-seg"))
    created = seg.predict(input=str(image_dir), upload="create", progress=False)
    pid = created[0].target.project_id
    assert {c.shape for c in api.project.get_meta(pid).obj_classes} == {"bitmap"}
    picked = {}
    for p in created:
        ann = api.annotation.get(p.target.image_id)
        assert len(ann.labels) == len(p) >= 5
        h, w = p.orig_size
        assert np.array_equal(np.stack([lab.geometry.to_mask(h, w) for lab in ann.labels]), p.masks)
        # someone deletes an object (the one its class's other objects overlap least: it must not count as found
        # again) and draws a box of their own
        overlap = [max([geometry_iou(lab.geometry, o.geometry, h, w) for o in ann.labels
                        if o is not lab and o.obj_class.name == lab.obj_class.name] or [0.0]) for lab in ann.labels]
        i = int(np.argmin(overlap))
        assert overlap[i] < 0.9  # the iou_merge threshold
        picked[p.target.image_id] = p.masks[i]
        hand = Label(Rectangle.from_xyxy(1, 1, 6, 6), ObjClass("hand-drawn", "rectangle"))
        api.annotation.set(p.target.image_id, ann.clone(labels=ann.labels[:i] + ann.labels[i + 1:] + (hand,)),
                           add_to_meta=True)
    merged = seg.predict(project_id=pid, upload="iou_merge", progress=False)
    assert sorted(p.image_id for p in merged) == sorted(picked)
    for p in merged:
        ann = api.annotation.get(p.image_id)
        h, w = p.orig_size
        masks = [lab.geometry.to_mask(h, w) for lab in ann.labels if lab.geometry.geometry_type == "bitmap"]
        # every predicted object once: the deleted one is back, the others were not added twice; the box stays
        assert len(masks) == len(p) and sum(np.array_equal(m, picked[p.image_id]) for m in masks) == 1
        assert [lab.obj_class.name for lab in ann.labels if lab.geometry.geometry_type == "rectangle"] == ["hand-drawn"]
    _export_checked(api, pid, tmp_path / "seg-export")


def test_oriented_boxes_upload_as_polygons_merge_and_tile(api, deployments, image_dir, tmp_path):
    """An obb model's objects are 4-point polygons (its corners) in the project, iou_merge finds them again (the
    polygons compare as masks), the project exports for the SDK, and a tiled run merges tiles by rotated NMS."""
    from pipeline.prediction import obb_corners

    obb = deployments.get(api, ym.cached_pt("yolo11n-obb"))
    created = obb.predict(input=str(image_dir), upload="create", progress=False)
    pid = created[0].target.project_id
    assert {c.shape for c in api.project.get_meta(pid).obj_classes} == {"polygon"}
    for p in created:
        ann = api.annotation.get(p.target.image_id)
        assert len(ann.labels) == len(p) >= 10
        for lab, corners in zip(ann.labels, obb_corners(p.obb)):
            np.testing.assert_allclose(lab.geometry.exterior, corners, atol=0.006)  # 2 decimals
    before = {p.target.image_id: api.annotation.get(p.target.image_id).to_json() for p in created}
    merged = obb.predict(project_id=pid, upload="iou_merge", progress=False)
    assert {p.image_id: api.annotation.get(p.image_id).to_json() for p in merged} == before  # nothing added twice
    _export_checked(api, pid, tmp_path / "obb-export")
    tiled = obb.predict(input=str(image_dir), tiling={"tile": 64, "overlap": 0.25}, progress=False)
    for p in tiled:
        assert p.error is None and p.obb.shape == (len(p), 5) and len(p) > 0
        np.testing.assert_allclose(p.boxes, np.concatenate([obb_corners(p.obb).min(1), obb_corners(p.obb).max(1)],
                                                           1), atol=1e-3)


def test_a_semantic_model_uploads_a_bitmap_per_class_equal_to_its_class_map(api, deployments, image_dir, tmp_path):
    """YOLO26-sem through the pipeline: the classes' bitmaps read back from the platform make Ultralytics' class
    map of each file (a converted checkpoint gives the same)."""
    from pipeline.app.cli import main

    path = ym.cached_pt("yolo26n-sem")
    converted = tmp_path / "sem.pth"
    assert main(["convert", path, str(converted)]) == 0
    for source in (path, str(converted)):
        sem = deployments.get(api, source)
        assert sem.info()["task_type"] == "semantic_segmentation"
        created = sem.predict(input=str(image_dir), upload="create", settings={"conf": 0.0}, progress=False)
        pid = created[0].target.project_id
        assert {c.shape for c in api.project.get_meta(pid).obj_classes} == {"bitmap"}
        for p, f in zip(created, sorted(image_dir.iterdir())):
            ref = theirs(path, f).semantic_mask.data.numpy().astype(np.int64)
            h, w = p.orig_size
            got = np.full((h, w), 255, np.int64)
            for lab in api.annotation.get(p.target.image_id).labels:
                got[lab.geometry.to_mask(h, w)] = ym.CLASSES.index(lab.obj_class.name)
            assert (got == ref).mean() >= 0.999 and len(p) >= 3
            _record("semantic class map agreement", (got == ref).mean(), min)


def test_pose_keypoints_and_a_classifiers_tags_upload_and_export_for_the_sdk(api, deployments, image_dir, tmp_path):
    from pipeline.annotation import Tag, TagMeta
    from pipeline.annotation.graph import COCO_SKELETON

    pose = deployments.get(api, ym.cached_pt("yolo11n-pose"))
    created = pose.predict(input=str(image_dir), upload="create", progress=False)
    pid = created[0].target.project_id
    names = [f"kp{j}" for j in range(17)]  # what the model file says (tests/yolo_models.py)
    for cls in api.project.get_meta(pid).obj_classes:
        assert cls.shape == "graph" and list(cls.geometry_config["nodes"]) == names
        assert [(e["src"], e["dst"]) for e in cls.geometry_config["edges"]] == [(names[a], names[b])
                                                                                  for a, b in COCO_SKELETON]
    for p in created:
        ann = api.annotation.get(p.target.image_id)
        assert len(ann.labels) == len(p) >= 5
        for lab, kpts in zip(ann.labels, p.keypoints):
            nodes = lab.geometry.nodes
            np.testing.assert_allclose([nodes[n][:2] for n in names], kpts[:, :2], atol=0.006)  # 2 decimals
            assert [nodes[n][2] for n in names] == (kpts[:, 2] < 0.25).tolist()  # low scores: disabled nodes

    clf = deployments.get(api, ym.cached_pt("yolo11n-cls"))
    ids = [p.target.image_id for p in created]
    first = clf.predict(image_ids=ids[:1], progress=False)[0]
    hand = Tag(TagMeta(first.top_class, "any_number"), 0.01)  # someone tagged it already, with another value
    ann = api.annotation.get(ids[0])
    api.annotation.set(ids[0], ann.clone(img_tags=(hand,)), add_to_meta=True)
    merged = {p.image_id: p for p in clf.predict(project_id=pid, upload="iou_merge", progress=False)}
    for image_id, before in zip(ids, created):
        ann = api.annotation.get(image_id)
        assert len(ann.labels) == len(before)  # the keypoints stay
        p = merged[image_id]
        want = (p.top_class, 0.01) if image_id == ids[0] else (p.top_class, round(p.top_score, 4))
        assert [(t.name, t.value) for t in ann.img_tags] == [want]
    tag_metas = {t.name: t.value_type for t in api.project.get_meta(pid).tag_metas}
    assert all(tag_metas[p.top_class] == "any_number" for p in merged.values())
    _export_checked(api, pid, tmp_path / "pose-export")


def test_a_classifier_on_a_video_uploads_a_tag_per_frame(api, deployments, tmp_path):
    """A classifier's answer for each frame is a video tag on that frame (its top class, valued with its
    probability); append adds none a frame already has, replace replaces those of a predicted name on the frame
    and keeps the others (a hand-made tag)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workers"))  # the shared video writers
    from test_video_decode import write_video

    from pipeline.annotation import TagMeta, VideoTag

    clip = write_video(tmp_path / "clip.mp4", 12)
    clf = deployments.get(api, ym.cached_pt("yolo11n-cls"))
    created = clf.predict(input=str(clip), upload="create", progress=False)
    video_id = created[0].target.video_id
    want = {p.frame_idx: (p.top_class, round(p.top_score, 4)) for p in created}
    assert len(want) == 12 and all(p.error is None for p in created)

    def tags() -> dict[int, list[tuple[str, float]]]:
        out: dict[int, list] = {}
        for t in api.video.get_annotation(video_id).tags:
            assert t.frame_range[0] == t.frame_range[1]
            out.setdefault(t.frame_range[0], []).append((t.name, t.value))
        return out

    assert tags() == {f: [w] for f, w in want.items()}
    pid = created[0].target.project_id
    metas = {t.name: t.value_type for t in api.project.get_meta(pid).tag_metas}
    assert all(metas[name] == "any_number" for name, _ in want.values())

    clf.predict(video_id=video_id, upload="append", progress=False)  # every frame has its class tag already
    assert tags() == {f: [w] for f, w in want.items()}

    ann = api.video.get_annotation(video_id)
    first = want[0][0]
    hand = [VideoTag(TagMeta("checked", "none"), None, (0, 0)), VideoTag(TagMeta(first, "any_number"), 0.01, (0, 0))]
    rest = [t for t in ann.tags if t.frame_range != (0, 0)]
    api.video.set_annotation(video_id, ann.clone(tags=tuple(rest + hand)), add_to_meta=True)
    clf.predict(video_id=video_id, upload="replace", progress=False)
    after = tags()
    assert sorted(after.pop(0)) == sorted([("checked", None), want[0]])  # the old value of that class replaced
    assert after == {f: [w] for f, w in want.items() if f}


@pytest.mark.parametrize("name", list(MODELS))
def test_its_onnx_export_through_the_pipeline_equals_yolo_predict(api, deployments, image_dir, name):
    task_type, options = MODELS[name]
    pt, onnx_path = ym.cached_export(name, **options)
    model = deployments.get(api, onnx_path)
    assert (model.spec.framework, model.spec.task_type, model.spec.runtime) == ("onnx", task_type, "onnx")
    want = "rtdetr" if name.startswith("rtdetr") else "yolo_end2end" if options.get("nms") is False else "yolo"
    assert model.spec.architecture == want
    preds = model.predict(input=str(image_dir), progress=False)
    task = ULTRA_TASKS[task_type]
    for p, f in zip(preds, sorted(image_dir.iterdir())):
        assert_same_as_ultralytics(p, theirs(onnx_path, f, task=task), task_type, f, kind="onnx")
        ref = theirs(pt, f, rect=False, nms=options.get("nms"))  # the .pt at the export's square input
        if task_type == "classification":
            np.testing.assert_allclose(p.probs, ref.probs.data.numpy(), rtol=1e-2, atol=1e-4)
            continue
        if task_type == "instance_segmentation":
            ref, _ = with_masks(ref, p.orig_size)
        boxes = _boxes_of(ref)
        assert len(p) == len(boxes) >= 5
        order = match(p, boxes)
        np.testing.assert_allclose(p.boxes, boxes.xyxy.numpy()[order], atol=1.0)
        np.testing.assert_allclose(p.scores, boxes.conf.numpy()[order], rtol=1e-2)
        _record("onnx vs pt boxes px", np.abs(p.boxes - boxes.xyxy.numpy()[order]).max())
        _record("onnx vs pt scores rel", (np.abs(p.scores - boxes.conf.numpy()[order]) / p.scores).max())


def test_settings_a_model_cannot_take_are_refused_before_any_work(api, deployments, image_dir):
    """A fixed-shape export's other img_size and out-of-range values: raised by predict, not one error per item."""
    from pipeline.exceptions import InvalidArgumentError

    _, onnx_path = ym.cached_export("yolo11n")
    onnx_model = deployments.get(api, onnx_path)
    with pytest.raises(InvalidArgumentError, match=r"yolo11n\.onnx has a fixed \(160, 160\) input"):
        onnx_model.predict(input=str(image_dir), img_size=320, progress=False)
    pt_model = deployments.get(api, ym.cached_pt("yolo11n"))
    with pytest.raises(InvalidArgumentError, match=r"setting 'agnostic' must be True or False; got 'yes'"):
        pt_model.predict(input=str(image_dir), settings={"agnostic": "yes"}, progress=False)
    with pytest.raises(InvalidArgumentError, match=r"setting 'classes' takes class indices .* 'zebra' is neither"):
        pt_model.predict(input=str(image_dir), settings={"classes": ["zebra"]}, progress=False)


# ------------------------------------------------------------------------------------- refused before any replica


@pytest.fixture
def no_ray(api, monkeypatch):
    """`api` whose deploy fails the test if it gets as far as Ray (the error must come before any replica)."""
    from pipeline.deploy.nn import NnApi

    def refuse(self):
        raise AssertionError("deploy reached Ray: the error came too late")

    monkeypatch.setattr(NnApi, "_ray", refuse)
    return api


class Smuggled:
    """On no allow-list."""


def test_a_malicious_pt_runs_nothing_and_names_the_global(no_ray, tmp_path):
    import pickle

    import torch

    from pipeline.exceptions import CheckpointError

    marker = tmp_path / "ran"
    zipped, raw = tmp_path / "best.pt", tmp_path / "raw.pt"
    torch.save({"model": RunsShell(marker)}, zipped)
    raw.write_bytes(pickle.dumps({"model": RunsShell(marker)}))
    for path in (zipped, raw):
        with pytest.raises(CheckpointError, match=r"\b(posix|nt|os)\.system\b") as err:
            no_ray.nn.deploy(str(path))
        assert path.name in str(err.value) and "Nothing in it was run" in str(err.value)
    # a real model with a class smuggled in next to it: sniffed as Ultralytics', refused by its allow-list
    import ultralytics.nn.tasks as tasks

    model = tasks.torch_safe_load(ym.cached_pt("yolo11n"), safe_only=True)[0]["model"]
    path = ym.save_trainer_style(model, tmp_path / "smuggled.pt", extra={"train_metrics": {"x": Smuggled()}})
    with pytest.raises(CheckpointError, match=r"smuggled\.pt was refused: it references test_yolo_pipeline\.Smuggled"):
        no_ray.nn.deploy(str(path))
    assert not marker.exists()


def test_an_onnx_whose_external_data_leaves_its_folder_is_refused(no_ray, tmp_path):
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pipeline.exceptions import CheckpointError

    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.zeros(4, np.float32).tobytes())
    graph = helper.make_graph(
        [helper.make_node("Add", ["images", "w"], ["out"])], "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])],
        [numpy_helper.from_array(np.zeros(1, np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../secret.bin")
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    (folder / "model.onnx.json").write_text(json.dumps({"classes": ["a"], "layout": "yolo", "img_size": 8}))
    with pytest.raises(CheckpointError, match=r"model\.onnx: tensor 'w' keeps its data at '\.\./secret\.bin', outside"):
        no_ray.nn.deploy(str(path))
    assert onnx  # imported: the check needs the onnx package


def _strip_metadata(src: str, dst: Path) -> Path:
    import onnx

    model = onnx.load(src)
    del model.metadata_props[:]
    onnx.save(model, str(dst))
    return dst


def test_bad_input_is_a_clear_error_before_any_replica(no_ray, tmp_path, monkeypatch):
    import json
    import sys

    import torch

    from pipeline.exceptions import CheckpointError, InvalidArgumentError, ModelLoadError

    other = tmp_path / "weights.pt"  # neither ours nor Ultralytics'
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match=r"weights\.pt is not a pipeline checkpoint .*save one with"):
        no_ray.nn.deploy(str(other))
    depth = ym.build_pt("yolo26n-depth.yaml", tmp_path)  # a task the pipeline has no output for
    with pytest.raises(ModelLoadError, match=r"yolo26n-depth\.pt is an Ultralytics 'depth' model.*Deploy a detect"):
        no_ray.nn.deploy(str(depth))
    _, sem_onnx = ym.cached_export("yolo26n-sem")  # a class map without probabilities
    with pytest.raises(ModelLoadError, match=r"semantic-segmentation export.*Deploy the model's \.pt"):
        no_ray.nn.deploy(sem_onnx)
    _, onnx_path = ym.cached_export("yolo11n")
    bare = _strip_metadata(onnx_path, tmp_path / "bare.onnx")  # no metadata, no sidecar
    with pytest.raises(CheckpointError, match=r"bare\.onnx has no Ultralytics metadata and no sidecar.*pipeline convert"):
        no_ray.nn.deploy(str(bare))
    (tmp_path / "bare.onnx.json").write_text(json.dumps({"classes": ["a", "b"], "layout": "yolo"}))
    with pytest.raises(CheckpointError, match=r"bare\.onnx\.json contradicts .*bare\.onnx: output 'output0' has 9 "
                                              r"channels; 2 classes make 4 \+ 2 \+ 0 = 6"):
        no_ray.nn.deploy(str(bare))
    pt = ym.cached_pt("yolo11n")
    with pytest.raises(InvalidArgumentError, match=r"yolo11n\.pt is a PyTorch model; runtime='tensorrt' runs ONNX"):
        no_ray.nn.deploy(pt, runtime="tensorrt")
    with pytest.raises(InvalidArgumentError, match=r"yolo11n\.onnx is an ONNX model: runtime must be"):
        no_ray.nn.deploy(onnx_path, runtime="pytorch")
    monkeypatch.delenv("PIPELINE_WEIGHTS_DIR", raising=False)
    with pytest.raises(ModelLoadError, match=r"'yolo11x\.pt' is not a local file .* never downloads"):
        no_ray.nn.deploy("yolo11x.pt")
    # the extras: Ultralytics for a .pt, ONNX Runtime for an .onnx
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelLoadError, match=r"yolo11n\.onnx needs the onnxruntime package.*cv-pipeline\[onnx\]"
                                             r".*cv-pipeline\[onnx-gpu\]"):
        no_ray.nn.deploy(onnx_path)
    monkeypatch.setitem(sys.modules, "ultralytics.nn.tasks", None)
    monkeypatch.delitem(sys.modules, "ultralytics.nn", raising=False)
    with pytest.raises(ModelLoadError, match=r"yolo11n\.pt needs the Ultralytics package.*cv-pipeline\[ultralytics\]"):
        no_ray.nn.deploy(pt)


def test_a_bare_weights_name_resolves_from_the_local_weights_folder(tmp_path, monkeypatch):
    import shutil

    from pipeline.deploy.models import resolve_model

    shutil.copy(ym.cached_pt("yolo11n"), tmp_path / "yolo11n.pt")
    monkeypatch.setenv("PIPELINE_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)  # not where the file is
    spec, payload = resolve_model("yolo11n.pt")
    assert (spec.framework, spec.source, spec.name) == ("ultralytics", "file", "yolo11n.pt")
    assert payload == (tmp_path / "yolo11n.pt").read_bytes()


@pytest.mark.slow
def test_a_yaml_run_names_its_yolo_weights_like_ultralytics_does(ray_session, image_dir, tmp_path, monkeypatch,
                                                                 capsys):
    # `model.checkpoint: yolo11n.pt` (Ultralytics' own way to name a model): looked up in the weights folders,
    # never downloaded; missing there, the config's line says so before anything is deployed.
    import json
    import shutil

    from pipeline.app import cli

    config = tmp_path / "yolo.yaml"
    out = tmp_path / "c.json"
    config.write_text(f"model:\n  checkpoint: yolo11n.pt\n  device: cpu\ninput:\n  path: {image_dir}\n"
                      f"output:\n  coco: {out}\n")
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setenv("PIPELINE_WEIGHTS_DIR", str(weights))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--data-dir", str(tmp_path / "home"), "run", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}, line 2: 'yolo11n.pt' is not a local file and was not found in the weights folders" in err, err
    assert not out.exists()

    shutil.copy(ym.cached_pt("yolo11n"), weights / "yolo11n.pt")
    assert cli.main(["--data-dir", str(tmp_path / "home"), "run", str(config)]) == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert len(doc["images"]) == len(list(image_dir.iterdir())) and doc["annotations"]
