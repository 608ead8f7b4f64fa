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

pytest.importorskip("ultralytics")
pytest.importorskip("onnxruntime")

from yolo_models import KPT_PX, MASK_IOU, SCORE_TOL, assert_same_boxes, mask_ious, match  # noqa: E402

# bundled YAML -> (task type, Ultralytics export options of its ONNX file)
MODELS = {
    "yolo11n": ("detection", {}),
    "yolo11n-seg": ("instance_segmentation", {}),
    "yolo11n-pose": ("pose", {}),
    "yolo11n-cls": ("classification", {}),
    "yolo26n": ("detection", {"nms": False}),  # its end-to-end (one-to-one) head in the export too
}
ULTRA_TASKS = {"detection": "detect", "instance_segmentation": "segment", "pose": "pose",
               "classification": "classify"}


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

    if (path, task) not in _YOLOS:
        _YOLOS[path, task] = YOLO(path, task=task)
    return _YOLOS[path, task].predict(str(file), verbose=False, **kwargs)[0]


def with_masks(res, size):
    """Ultralytics' result restricted to the objects whose mask is not empty at the image size (the pipeline drops
    the others: an empty mask is no object), and those masks (N, H, W) bool at the image size."""
    import torch
    from ultralytics.utils import ops

    masks = ops.scale_masks(res.masks.data[None].float(), size)[0] > 0.5
    keep = masks.flatten(1).any(1)
    return res[keep], masks[keep].numpy()


def assert_same_as_ultralytics(pred, res, task_type: str, file: Path) -> int:
    """The pipeline's prediction of `file` equals Ultralytics' result `res`; returns the number of objects compared."""
    assert pred.error is None and pred.name == file.name
    if task_type == "classification":
        assert len(pred) == 0 and pred.probs is not None
        np.testing.assert_allclose(pred.probs, res.probs.data.numpy(), atol=1e-4)
        assert pred.top_class == res.names[res.probs.top1]
        assert [(t.name, t.value) for t in pred.annotation.img_tags] == [(pred.top_class, round(pred.top_score, 4))]
        return 1
    if task_type == "instance_segmentation":
        res, ref = with_masks(res, pred.orig_size)
        order = assert_same_boxes(pred, res)
        assert pred.masks.shape == (len(pred), *pred.orig_size)
        assert mask_ious(pred.masks, ref[order]).min() >= MASK_IOU
        return len(pred)
    order = assert_same_boxes(pred, res)
    if task_type == "pose":
        ref = res.keypoints.data.numpy()[order]
        np.testing.assert_allclose(pred.keypoints[..., :2], ref[..., :2], atol=KPT_PX)
        np.testing.assert_allclose(pred.keypoints[..., 2], ref[..., 2], atol=SCORE_TOL)
    return len(pred)


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


@pytest.mark.parametrize("name", list(MODELS))
def test_its_onnx_export_through_the_pipeline_equals_yolo_predict(api, deployments, image_dir, name):
    task_type, options = MODELS[name]
    pt, onnx_path = ym.cached_export(name, **options)
    model = deployments.get(api, onnx_path)
    assert (model.spec.framework, model.spec.task_type, model.spec.runtime) == ("onnx", task_type, "onnx")
    assert model.spec.architecture == ("yolo_end2end" if options.get("nms") is False else "yolo")
    preds = model.predict(input=str(image_dir), progress=False)
    task = ULTRA_TASKS[task_type]
    for p, f in zip(preds, sorted(image_dir.iterdir())):
        assert_same_as_ultralytics(p, theirs(onnx_path, f, task=task), task_type, f)
        ref = theirs(pt, f, rect=False, nms=options.get("nms"))  # the .pt at the export's square input
        if task_type == "classification":
            np.testing.assert_allclose(p.probs, ref.probs.data.numpy(), rtol=1e-2, atol=1e-4)
            continue
        if task_type == "instance_segmentation":
            ref, _ = with_masks(ref, p.orig_size)
        assert len(p) == len(ref.boxes) >= 5
        order = match(p, ref.boxes)
        np.testing.assert_allclose(p.boxes, ref.boxes.xyxy.numpy()[order], atol=1.0)
        np.testing.assert_allclose(p.scores, ref.boxes.conf.numpy()[order], rtol=1e-2)
