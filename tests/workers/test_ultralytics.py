"""The `ultralytics` adapter against Ultralytics' own `predict` on the same files and images, and its safe loading.

Models: random-weight YOLO11n detect / seg / pose / cls, YOLOv10n and YOLO26n from Ultralytics' bundled YAMLs, saved
as its trainer saves them (imgsz 160). Images: square, landscape, portrait and a small odd one, run as one list.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import yolo_models as ym
from helpers import RunsShell

pytest.importorskip("ultralytics")

from yolo_models import BOX_PX, KPT_PX, MASK_IOU, SCORE_TOL, assert_same_boxes, mask_ious  # noqa: E402

from pipeline.exceptions import CheckpointError, ModelLoadError  # noqa: E402
from workers.models.ultralytics import UltralyticsAdapter, resolve_weights  # noqa: E402


@pytest.fixture(scope="session")
def yolo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("yolo")


def yolo_file(folder, name: str) -> str:
    """The `.pt` of the bundled YAML `name` (built once per session, shared with the other test modules)."""
    return ym.cached_pt(name)


_YOLOS: dict[str, object] = {}


def theirs(path: str, img: np.ndarray, **kwargs):
    """Ultralytics' own prediction for one RGB image (it takes BGR arrays)."""
    from ultralytics import YOLO

    if path not in _YOLOS:
        _YOLOS[path] = YOLO(path)
    return _YOLOS[path].predict(np.ascontiguousarray(img[..., ::-1]), verbose=False, **kwargs)[0]


def ours(path: str, images: list[np.ndarray], settings: dict | None = None):
    data = open(path, "rb").read()
    spec, payload = UltralyticsAdapter.from_file(path, data)
    adapter = UltralyticsAdapter(spec, "cpu")
    adapter.load_payload(payload)
    outs, _ = adapter.run(images, [im.shape[:2] for im in images], settings)
    return outs


# ----------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", ["yolo11n", "yolov10n", "yolo26n"])
def test_detect_parity_each_image_and_mixed_list(yolo_dir, name):
    path = yolo_file(yolo_dir, name)
    imgs = ym.images()
    imgs.append(imgs[1][::-1].copy())  # a second landscape image: same letterbox shape, one forward pass with [1]
    outs = ours(path, imgs)
    total = 0
    for img, out in zip(imgs, outs):
        assert_same_boxes(out, theirs(path, img))
        total += len(out.boxes)
    assert total >= 15 * len(imgs)  # dozens of boxes per image on average


def test_same_shape_list_equals_ultralytics_list(yolo_dir):
    """Ultralytics letterboxes a list of same-shape images like one image (auto rectangle): same results."""
    from ultralytics import YOLO

    path = yolo_file(yolo_dir, "yolo11n")
    imgs = ym.images(seed=3, sizes=[(120, 200)] * 3)
    results = YOLO(path).predict([np.ascontiguousarray(i[..., ::-1]) for i in imgs], verbose=False)
    for out, res in zip(ours(path, imgs), results):
        assert_same_boxes(out, res)


def test_segment_parity_masks(yolo_dir):
    from ultralytics.utils import ops

    path = yolo_file(yolo_dir, "yolo11n-seg")
    imgs = ym.images()
    for retina, outs in ((False, ours(path, imgs)), (True, ours(path, imgs, {"retina_masks": True}))):
        for img, out in zip(imgs, outs):
            res = theirs(path, img, retina_masks=retina)
            order = assert_same_boxes(out, res)
            assert out.masks.shape == (len(out.boxes), *img.shape[:2]) and out.masks.dtype == bool
            ref = res.masks.data[order]
            if not retina:  # Ultralytics keeps these at the letterboxed input size: cut the padding, scale back
                ref = ops.scale_masks(ref[None].float(), img.shape[:2])[0] > 0.5
            assert mask_ious(out.masks, ref.numpy().astype(bool)).min() >= MASK_IOU
            assert out.masks.any(axis=(1, 2)).mean() > 0.5  # most masks are not empty: the test compares something


def test_pose_parity_keypoints(yolo_dir):
    path = yolo_file(yolo_dir, "yolo11n-pose")
    imgs = ym.images()
    for img, out in zip(imgs, ours(path, imgs)):
        res = theirs(path, img)
        order = assert_same_boxes(out, res)
        ref = res.keypoints.data.numpy()[order]
        assert out.keypoints.shape == ref.shape == (len(out.boxes), 17, 3)
        np.testing.assert_allclose(out.keypoints[..., :2], ref[..., :2], atol=KPT_PX)
        np.testing.assert_allclose(out.keypoints[..., 2], ref[..., 2], atol=SCORE_TOL)


def test_obb_parity_oriented_boxes(yolo_dir):
    """Oriented boxes: rotated NMS, the letterbox undone on centres and sides (not clipped), the angle kept; `boxes`
    are their enclosing boxes, as `Results.obb.xyxy`."""
    path = yolo_file(yolo_dir, "yolo11n-obb")
    imgs = ym.images()
    for img, out in zip(imgs, ours(path, imgs)):
        assert out.masks is None and out.keypoints is None and out.obb.shape == (len(out.boxes), 5)
        assert_same_boxes(out, theirs(path, img), min_boxes=10)


def class_map(out, shape) -> np.ndarray:
    """The (H, W) class map of a semantic model's objects (one mask per class); 255 where no object is."""
    m = np.full(shape, 255, np.int64)
    for mask, c in zip(out.masks, out.class_ids):
        assert not (m[mask] != 255).any()  # the classes' masks do not overlap
        m[mask] = c
    return m


def test_semantic_parity_class_map(yolo_dir):
    """A semantic model (YOLO26-sem): one bitmap per class present whose union is Ultralytics' class map, scored by
    the class's mean softmax probability over its pixels; conf and classes drop classes as they say."""
    import torch
    import torch.nn.functional as F
    from ultralytics.utils import ops

    path = yolo_file(yolo_dir, "yolo26n-sem")
    imgs = ym.images()
    outs = ours(path, imgs, {"conf": 0.0})
    for img, out in zip(imgs, outs):
        res = theirs(path, img)
        ref = res.semantic_mask.data.numpy().astype(np.int64)
        assert (class_map(out, img.shape[:2]) == ref).mean() >= 0.999  # a batch of several runs other kernels
        assert len(out.class_ids) >= 3 and out.masks.shape == (len(out.class_ids), *img.shape[:2])
        assert np.all(np.diff(out.scores) <= 0)
    # the scores, from the model's own logits: softmax at the image size, mean over each class's pixels
    img = imgs[0]
    model = _YOLOS[path].model
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].float() / 255  # 160 x 160: no padding
    with torch.no_grad():
        raw = model(x)
    raw = raw[0] if isinstance(raw, tuple | list) else raw
    logits = F.interpolate(raw.float(), (160, 160), mode="bilinear", align_corners=False)
    probs = ops.scale_masks(logits, (160, 160))[0].softmax(0).numpy()
    for mask, c, score in zip(outs[0].masks, outs[0].class_ids, outs[0].scores):
        assert score == pytest.approx(probs[c][mask].mean(), abs=1e-4)
    # conf drops a class whose mean probability is under it; classes keeps only those asked for
    cut = float(np.median(outs[0].scores))
    assert set(ours(path, imgs[:1], {"conf": cut})[0].class_ids) == set(outs[0].class_ids[outs[0].scores >= cut])
    only = ours(path, imgs[:1], {"conf": 0.0, "classes": ["cat", "bird"]})[0]
    assert set(only.class_ids) <= {0, 2} and len(only.class_ids)


def test_classify_parity_probs(yolo_dir):
    path = yolo_file(yolo_dir, "yolo11n-cls")
    imgs = ym.images()
    outs = ours(path, imgs)
    top1 = []
    for img, out in zip(imgs, outs):
        res = theirs(path, img)
        assert out.probs.shape == (len(ym.CLASSES),) and len(out.boxes) == 0
        np.testing.assert_allclose(out.probs, res.probs.data.numpy(), atol=1e-4)
        assert int(np.argmax(out.probs)) == res.probs.top1
        top1.append(res.probs.top1)
    assert len(set(top1)) > 1  # the images are told apart


def test_rtdetr_parity(yolo_dir):
    """Ultralytics' RT-DETR (`rtdetr-l.pt`, task detect): every image stretched to imgsz, the decoder's top
    queries kept by score, no NMS; `YOLO(path)` itself dispatches to `RTDETR`, whose predictor this equals, also
    with conf, classes and max_det."""
    path = yolo_file(yolo_dir, "rtdetr-l")
    spec, _ = UltralyticsAdapter.from_file(path, open(path, "rb").read())
    assert (spec.task_type, spec.architecture, spec.arch_kwargs["rtdetr"]) == ("detection", "rtdetr-l", True)
    assert UltralyticsAdapter.decode_hint(spec, None) == ("cover", ym.IMGSZ, ym.IMGSZ)  # a stretch, not a letterbox
    imgs = ym.images()
    for img, out in zip(imgs, ours(path, imgs)):
        assert_same_boxes(out, theirs(path, img), min_boxes=20)
    (out,) = ours(path, imgs[1:2], {"conf": 0.5, "classes": ["dog", "car"], "max_det": 5})
    assert_same_boxes(out, theirs(path, imgs[1], conf=0.5, classes=[1, 3], max_det=5), min_boxes=1)


def test_yolo_world_parity(tmp_path):
    """YOLO-World (`WorldModel`, task detect): its class embeddings are part of the saved model, so it runs as a
    detect model; the same boxes as Ultralytics' predictor (random weights: scores are low, conf 0.001)."""
    path = str(ym.build_calibrated_only("yolov8s-worldv2.yaml", tmp_path))
    spec, _ = UltralyticsAdapter.from_file(path, open(path, "rb").read())
    assert spec.task_type == "detection" and len(spec.classes) == 80
    imgs = ym.images()
    outs = ours(path, imgs, {"conf": 0.001})
    assert sum(len(o.boxes) for o in outs) >= 50
    for img, out in zip(imgs, outs):
        if len(out.boxes):
            assert_same_boxes(out, theirs(path, img, conf=0.001), min_boxes=1)
        else:
            assert len(theirs(path, img, conf=0.001).boxes) == 0
    # its embeddings are not in its state dict: a converted checkpoint would rebuild it with random ones
    from pipeline.exceptions import InvalidArgumentError
    from workers.models.convert import convert

    with pytest.raises(InvalidArgumentError, match=r"is an Ultralytics WorldModel, which a converted checkpoint "
                                                   r"cannot rebuild.*deploy the \.pt itself"):
        convert(path, tmp_path / "world.pth")


@pytest.mark.parametrize("name", ["yolov10n", "yolo26n"])
def test_end2end_head_parity(yolo_dir, name):
    """end2end=True runs the NMS-free one-to-one head, as Ultralytics' predict(nms=False)."""
    path = yolo_file(yolo_dir, name)
    imgs = ym.images()[:3]
    outs = ours(path, imgs, {"end2end": True, "max_det": 50})
    for img, out in zip(imgs, outs):
        assert_same_boxes(out, theirs(path, img, nms=False, max_det=50))


def test_settings_match_ultralytics_arguments(yolo_dir):
    path = yolo_file(yolo_dir, "yolo11n")
    img = ym.images()[1]
    cases = [
        ({"conf": 0.3, "iou": 0.5}, {"conf": 0.3, "iou": 0.5}),
        ({"classes": ["dog", 3], "agnostic": True}, {"classes": [1, 3], "agnostic_nms": True}),
        ({"max_det": 7, "img_size": 96}, {"max_det": 7, "imgsz": 96}),
        ({"img_size": (128, 192), "conf": 0.2}, {"imgsz": [128, 192], "conf": 0.2}),
    ]
    for settings, kwargs in cases:
        (out,) = ours(path, [img], settings)
        assert_same_boxes(out, theirs(path, img, **kwargs), min_boxes=1)


def test_spec_is_read_from_the_file(yolo_dir):
    import hashlib

    path = yolo_file(yolo_dir, "yolo11n-pose")
    data = open(path, "rb").read()
    spec, payload = UltralyticsAdapter.from_file(path, data)
    assert (spec.framework, spec.task_type, spec.architecture) == ("ultralytics", "pose", "yolo11n-pose")
    assert spec.classes == ym.CLASSES and spec.img_size == ym.IMGSZ and spec.source == "file"
    assert spec.identity == hashlib.sha256(data).hexdigest() and payload == data
    kw = spec.arch_kwargs
    assert kw["task"] == "pose" and kw["kpt_shape"] == [17, 3] and kw["stride"] == 32
    assert kw["kpt_names"] == [[f"kp{j}" for j in range(17)]] * len(ym.CLASSES)
    assert kw["yaml"]["backbone"] and kw["yaml"]["nc"] == len(ym.CLASSES)


def test_sniff(yolo_dir, tmp_path, tiny_checkpoint):
    path = yolo_file(yolo_dir, "yolo11n")
    head = open(path, "rb").read(4096)
    assert UltralyticsAdapter.sniff(path, head)
    assert UltralyticsAdapter.sniff(path, head[:8])  # the head alone may not tell: the zip is read
    ours_ckpt = open(tiny_checkpoint, "rb").read(4096)
    assert not UltralyticsAdapter.sniff(str(tiny_checkpoint), ours_ckpt)
    other = tmp_path / "x.onnx"
    other.write_bytes(b"\x08\x07\x12\x04test")
    assert not UltralyticsAdapter.sniff(str(other), other.read_bytes())


def test_converted_checkpoint_gives_the_same_outputs(yolo_dir, tmp_path):
    import torch

    from workers.models import parse_checkpoint
    from workers.models.base import ModelSpec
    from workers.models.convert import convert

    imgs = ym.images()[:2]
    for name in ("yolo11n-seg", "yolo11n-pose", "yolo11n-cls", "yolo26n", "yolo11n-obb", "rtdetr-l"):
        src = yolo_file(yolo_dir, name)
        out = tmp_path / f"{name}.pth"
        info = convert(src, out)
        data = out.read_bytes()
        assert torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)) == []  # plain weights
        ckpt = parse_checkpoint(data, str(out))
        assert (ckpt.framework, ckpt.task_type) == ("ultralytics", info["task_type"])
        spec = ModelSpec(ckpt.framework, ckpt.architecture, ckpt.task_type, ckpt.classes, ckpt.img_size,
                         ckpt.arch_kwargs, name=name)
        adapter = UltralyticsAdapter(spec, "cpu")
        adapter.load(ckpt.state_dict)
        rebuilt, _ = adapter.run(imgs, [i.shape[:2] for i in imgs])
        for a, b in zip(rebuilt, ours(src, imgs)):
            if name == "rtdetr-l":  # the .pt reuses the anchors its decoder cached in fp16 at training (as
                # Ultralytics' predict does); the rebuilt model makes them in fp32: scores differ in the 4th
                # decimal, so a query at the threshold may flip. Compare those clear of it.
                # Queries of equal score may also come in either order: compared as sets.
                a, b = (o.__class__(o.boxes[o.scores > 0.26], o.scores[o.scores > 0.26],
                                    o.class_ids[o.scores > 0.26]) for o in (a, b))
                from scipy.optimize import linear_sum_assignment

                cost = np.abs(a.boxes[:, None] - b.boxes[None]).max(-1) + 1e3 * (a.class_ids[:, None] != b.class_ids)
                rows, cols = linear_sum_assignment(cost)
                assert len(a.boxes) == len(b.boxes) >= 20 and cost[rows, cols].max() <= BOX_PX
                np.testing.assert_allclose(a.scores[rows], b.scores[cols], atol=SCORE_TOL)
                continue
            np.testing.assert_allclose(a.boxes, b.boxes, atol=BOX_PX)
            np.testing.assert_allclose(a.scores, b.scores, atol=SCORE_TOL)
            if b.probs is not None:
                np.testing.assert_allclose(a.probs, b.probs, atol=1e-4)
            if b.keypoints is not None:
                np.testing.assert_allclose(a.keypoints, b.keypoints, atol=KPT_PX)
            if b.obb is not None:
                np.testing.assert_allclose(a.obb, b.obb, atol=BOX_PX)
            if b.masks is not None:
                assert mask_ious(a.masks, b.masks).min() >= MASK_IOU


def test_older_checkpoint_layouts_load(yolo_dir, tmp_path):
    """What older Ultralytics versions pickle: the EMA model fused (bound `forward_fuse` methods: builtins.getattr),
    its args as an IterableSimpleNamespace, numpy scalars for the fitness. They load, and predict as Ultralytics."""
    import copy

    import torch
    import ultralytics.nn.tasks as tasks
    from ultralytics.utils import DEFAULT_CFG_DICT, IterableSimpleNamespace

    src = yolo_file(yolo_dir, "yolo11n-seg")
    model = copy.deepcopy(tasks.torch_safe_load(src, safe_only=True)[0]["model"]).float().fuse(verbose=False)
    model.args = IterableSimpleNamespace(**{**DEFAULT_CFG_DICT, "imgsz": ym.IMGSZ})
    path = tmp_path / "old.pt"
    torch.save({"epoch": 3, "best_fitness": np.float64(0.25), "model": None, "ema": model.half(), "updates": 5,
                "optimizer": None, "train_args": {**DEFAULT_CFG_DICT, "imgsz": ym.IMGSZ},
                "train_metrics": {"fitness": np.float32(0.1)}, "version": "8.0.100"}, path)
    names = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    assert {"builtins.getattr", "numpy.dtype", "ultralytics.utils.IterableSimpleNamespace"} <= names
    imgs = ym.images()[:2]
    for img, out in zip(imgs, ours(str(path), imgs)):
        assert_same_boxes(out, theirs(str(path), img))


# ------------------------------------------------------------------------------------------------ safe loading


class Smuggled:
    """A class that is on no allow-list."""


def test_pickle_calling_os_system_runs_nothing(tmp_path):
    import torch

    marker = tmp_path / "ran"
    zipped = tmp_path / "evil.pt"
    torch.save({"model": RunsShell(marker)}, zipped)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"model": RunsShell(marker)}))
    for path in (zipped, raw):
        with pytest.raises(CheckpointError) as err:
            UltralyticsAdapter.from_file(str(path), path.read_bytes())
        assert re.search(r"\b(posix|nt|os)\.system\b", str(err.value)) and str(path) in str(err.value)
    assert not marker.exists()


def test_model_with_a_smuggled_class_is_refused_naming_it(yolo_dir, tmp_path):
    import ultralytics.nn.tasks as tasks

    model = tasks.torch_safe_load(yolo_file(yolo_dir, "yolo11n"), safe_only=True)[0]["model"]
    path = ym.save_trainer_style(model, tmp_path / "smuggled.pt", extra={"train_metrics": {"x": Smuggled()}})
    with pytest.raises(CheckpointError, match=r"test_ultralytics\.Smuggled"):
        UltralyticsAdapter.from_file(str(path), path.read_bytes())


def test_getattr_in_a_pickle_cannot_reach_dunders(yolo_dir, tmp_path):
    import torch
    from ultralytics.nn.modules import Conv

    class Walk:
        def __reduce__(self):
            return (getattr, (Conv, "__init__"))

    path = tmp_path / "walk.pt"
    torch.save({"model": Walk()}, path)
    with pytest.raises(CheckpointError, match="getattr"):
        UltralyticsAdapter.from_file(str(path), path.read_bytes())


def test_yaml_activation_is_never_evaluated(yolo_dir, tmp_path):
    from workers.models import parse_checkpoint
    from workers.models.base import ModelSpec
    from workers.models.convert import convert

    out = tmp_path / "m.pth"
    convert(yolo_file(yolo_dir, "yolo11n"), out)
    ckpt = parse_checkpoint(out.read_bytes(), str(out))
    marker = tmp_path / "evaluated"
    kwargs = dict(ckpt.arch_kwargs, yaml=dict(ckpt.arch_kwargs["yaml"], activation=f"__import__('os').system('touch {marker}')"))
    spec = ModelSpec("ultralytics", ckpt.architecture, ckpt.task_type, ckpt.classes, ckpt.img_size, kwargs)
    with pytest.raises(ModelLoadError, match="activation"):
        UltralyticsAdapter(spec, "cpu").load(ckpt.state_dict)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------- bad input


def test_a_pt_that_is_neither_ours_nor_ultralytics(tmp_path):
    import torch

    path = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match=r"weights\.pt is not an Ultralytics model checkpoint"):
        UltralyticsAdapter.from_file(str(path), path.read_bytes())


def test_unsupported_task_is_refused_before_any_replica(tmp_path):
    path = ym.build_pt("yolo26n-depth.yaml", tmp_path)
    with pytest.raises(ModelLoadError, match=r"yolo26n-depth\.pt is an Ultralytics 'depth' model"):
        UltralyticsAdapter.from_file(str(path), path.read_bytes())


def test_ultralytics_patches_of_pil_and_torch_are_undone():
    """Ultralytics replaces PIL.Image.open (pip-installing a HEIF plugin on an unidentified image) and torch.save."""
    import PIL.Image
    import torch

    from workers.models._ultralytics_load import import_ultralytics

    import_ultralytics()
    assert PIL.Image.open.__module__ == "PIL.Image" and torch.save.__module__ == "torch.serialization"
    with pytest.raises(PIL.UnidentifiedImageError):
        PIL.Image.open(io.BytesIO(b"not an image"))


def test_missing_extra_names_it(monkeypatch):
    from workers.models import _ultralytics_load

    monkeypatch.setitem(sys.modules, "ultralytics.nn.tasks", None)
    monkeypatch.delitem(sys.modules, "ultralytics.nn", raising=False)
    with pytest.raises(ModelLoadError, match=r"cv-pipeline\[ultralytics\]"):
        _ultralytics_load.import_ultralytics("best.pt")


def test_resolve_weights_never_downloads(tmp_path, monkeypatch):
    import workers.models.ultralytics as mod

    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "yolo11n.pt").write_bytes(b"x")
    assert resolve_weights(str(weights / "yolo11n.pt")) == str(weights / "yolo11n.pt")
    monkeypatch.setenv("PIPELINE_WEIGHTS_DIR", str(weights))
    assert resolve_weights("yolo11n.pt") == str(weights / "yolo11n.pt")
    monkeypatch.delenv("PIPELINE_WEIGHTS_DIR")
    cfg = tmp_path / "cfg"
    (cfg / "Ultralytics").mkdir(parents=True)
    (cfg / "Ultralytics" / "settings.json").write_text(json.dumps({"weights_dir": str(weights)}))
    monkeypatch.setattr(mod, "_USER_YOLO_CONFIG_DIR", str(cfg))
    assert resolve_weights("yolo11n.pt") == str(weights / "yolo11n.pt")
    with pytest.raises(ModelLoadError, match="never downloads"):
        resolve_weights("yolo26x.pt")


def test_import_is_offline_and_writes_nothing_in_home(tmp_path):
    """A worker importing Ultralytics through the adapter's loader sets offline mode and keeps $HOME untouched;
    importing the adapter alone (as every deploy does, to ask it whether a file is its) sets nothing."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "MPLCONFIGDIR", "XDG_"))}
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join(sys.path))
    code = (
        "import os, workers.models.ultralytics as m; assert 'YOLO_OFFLINE' not in os.environ;"
        "m.import_ultralytics(); import ultralytics.utils as u;"
        "print(os.environ['YOLO_OFFLINE'], u.is_online(), str(u.USER_CONFIG_DIR).startswith(os.environ['HOME']))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1].split() == ["1", "False", "False"]
    assert list(home.iterdir()) == []
