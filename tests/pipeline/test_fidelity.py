"""Predictions the model itself would make (issue 12): an int `img_size` fits the image the framework's own way on
any aspect ratio, the Supervisely SDK's task names, `num_classes` in `arch_kwargs`, unknown settings refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.exceptions import InvalidArgumentError, ModelLoadError
from workers.models import load_checkpoint, save_checkpoint
from workers.models._small_archs import SMALL_ARCHITECTURES

CLASSES = ["a", "b", "c"]
KWARGS = {"min_size": 96, "max_size": 128}
S = {"conf": 0.0, "max_det": 100}


@pytest.fixture(scope="module")
def sized_checkpoint(tmp_path_factory):
    """The tiny detector saved with `img_size: 320`, as docs/api.md's example saves a Mask R-CNN with 800."""
    torch.manual_seed(3)
    model = SMALL_ARCHITECTURES["fasterrcnn_tiny_fpn"](num_classes=len(CLASSES) + 1, **KWARGS)
    path = tmp_path_factory.mktemp("sized") / "sized.pth"
    save_checkpoint(model, path, framework="torchvision", architecture="fasterrcnn_tiny_fpn", task_type="detection",
                    classes=CLASSES, img_size=320, arch_kwargs=KWARGS)
    return path


@pytest.fixture(scope="module")
def sized_model(ray_session, sized_checkpoint, tmp_path_factory):
    import pipeline

    model = pipeline.Api(data_dir=tmp_path_factory.mktemp("sized-home")).nn.deploy(str(sized_checkpoint), device="cpu")
    yield model
    model.shutdown()


def _direct(path, image: np.ndarray, side: int):
    """The model called directly, its own transform set to min_size = max_size = side: what torchvision itself
    does with an image fitted into a side x side square."""
    ckpt = load_checkpoint(str(path))
    model = SMALL_ARCHITECTURES[ckpt.architecture](num_classes=len(ckpt.classes) + 1, **ckpt.arch_kwargs)
    model.load_state_dict(ckpt.state_dict)
    model.eval()
    model.transform.min_size, model.transform.max_size = (side,), side
    model.roi_heads.score_thresh, model.roi_heads.detections_per_img = 0.0, 100
    with torch.inference_mode():
        (det,) = model([torch.from_numpy(image).permute(2, 0, 1).float() / 255.0])
    keep = det["scores"] >= 0.0
    return det["boxes"][keep].numpy(), det["scores"][keep].numpy(), det["labels"][keep].numpy() - 1


@pytest.mark.parametrize("hw", [(320, 480), (480, 320), (200, 1000), (320, 320)],
                         ids=["landscape", "portrait", "very-wide", "square"])
def test_a_checkpoint_img_size_keeps_the_aspect_ratio(sized_model, sized_checkpoint, tmp_path, hw):
    from helpers import write_images

    from workers.decode import read_image_file

    [path] = write_images(tmp_path, 1, size=hw, fmt="png")
    image = read_image_file(str(path))
    [p] = sized_model.predict(input=path, settings=S, progress=False)
    boxes, scores, labels = _direct(sized_checkpoint, image, 320)
    assert len(boxes) > 5 and len(p) == len(boxes)
    np.testing.assert_allclose(p.boxes, boxes, atol=1.0)  # within 1 px
    np.testing.assert_allclose(p.scores, scores, atol=1e-4)
    np.testing.assert_array_equal(p.class_ids, labels)
    assert p.orig_size == hw


def test_an_exact_size_is_a_tuple(tiny_model, direct_tiny, tmp_path):
    """(h, w) resizes exactly (aspect not kept), as documented; boxes come back in original pixels."""
    from helpers import write_images

    from workers.decode import read_image_file

    [path] = write_images(tmp_path, 1, size=(90, 240), fmt="png")
    [p] = tiny_model.predict(input=path, img_size=(64, 64), settings=S, progress=False)
    [out] = direct_tiny([read_image_file(str(path))], S, img_size=(64, 64))
    np.testing.assert_allclose(p.boxes, out.boxes, atol=1e-2)
    assert (p.boxes[:, 2] > 64).any()  # original pixels (240 wide), not the 64 x 64 input's


@pytest.mark.parametrize("alias, ours", [("object detection", "detection"),
                                         ("instance segmentation", "instance_segmentation"),
                                         ("semantic segmentation", "semantic_segmentation"),
                                         ("pose estimation", "pose"), ("Object Detection", "detection")])
def test_the_supervisely_sdk_task_names_are_aliases(tmp_path, alias, ours):
    from workers.models.checkpoint import parse_checkpoint

    buf = tmp_path / "x.pth"
    torch.save({"format": "pipeline-checkpoint/1", "framework": "torchvision", "architecture": "fasterrcnn_tiny_fpn",
                "task_type": alias, "classes": CLASSES, "state_dict": {}}, buf)
    assert parse_checkpoint(buf.read_bytes()).task_type == ours


def test_a_checkpoint_written_with_a_task_alias_deploys(ray_session, api, tmp_path):
    torch.manual_seed(0)
    model = SMALL_ARCHITECTURES["fasterrcnn_tiny_fpn"](num_classes=4, **KWARGS)
    path = tmp_path / "alias.pth"
    save_checkpoint(model, path, framework="torchvision", architecture="fasterrcnn_tiny_fpn",
                    task_type="object detection", classes=CLASSES, arch_kwargs=KWARGS)
    deployed = api.nn.deploy(str(path), device="cpu")
    try:
        assert deployed.info()["task_type"] == "detection"
    finally:
        deployed.shutdown()


def _with_num_classes(tmp_path, n: int):
    torch.manual_seed(0)
    model = SMALL_ARCHITECTURES["fasterrcnn_tiny_fpn"](num_classes=4, **KWARGS)
    path = tmp_path / f"n{n}.pth"
    save_checkpoint(model, path, framework="torchvision", architecture="fasterrcnn_tiny_fpn", task_type="detection",
                    classes=CLASSES, arch_kwargs={**KWARGS, "num_classes": n})
    return path


def test_num_classes_in_arch_kwargs_that_agrees_is_accepted(ray_session, api, tmp_path):
    deployed = api.nn.deploy(str(_with_num_classes(tmp_path, len(CLASSES) + 1)), device="cpu")
    try:
        assert deployed.classes == CLASSES
    finally:
        deployed.shutdown()


def test_num_classes_that_disagrees_is_refused_naming_both_numbers(ray_session, api, tmp_path):
    with pytest.raises(ModelLoadError, match=r"num_classes=7 .*3 classes.*num_classes=4"):
        api.nn.deploy(str(_with_num_classes(tmp_path, 7)), device="cpu")


@pytest.mark.parametrize("settings, words", [
    ({"cnf": 0.9}, "unknown setting(s) 'cnf' (did you mean 'conf'?)"),
    ({"decod": "full"}, "unknown setting(s) 'decod' (did you mean 'decode'?)"),
    ({"agnostic": True}, "unknown setting(s) 'agnostic'"),  # an Ultralytics setting: not this model's
])
def test_unknown_settings_are_refused_before_any_work(tiny_model, settings, words):
    with pytest.raises(InvalidArgumentError) as err:
        tiny_model.predict(input=np.zeros((8, 8, 3), np.uint8), settings=settings)
    assert words in str(err.value) and "conf" in str(err.value)


@pytest.mark.parametrize("key, value", [("conf", math.nan), ("iou", math.nan), ("iou_merge_threshold", math.nan),
                                        ("url_timeout", math.nan), ("url_timeout", math.inf),
                                        ("conf", -math.inf)])
def test_nan_and_infinite_settings_are_refused_with_the_key_named(tiny_model, key, value):
    with pytest.raises(InvalidArgumentError, match=rf"settings\['{key}'\] must be a finite number"):
        tiny_model.predict(input=np.zeros((8, 8, 3), np.uint8), settings={key: value})


def test_img_size_as_a_setting_is_the_same_argument(tiny_model, direct_tiny):
    img = np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)
    [a] = tiny_model.predict(input=img, settings={**S, "img_size": 64}, progress=False)
    [b] = tiny_model.predict(input=img, img_size=64, settings=S, progress=False)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    with pytest.raises(InvalidArgumentError, match="img_size given twice"):
        tiny_model.predict(input=img, img_size=32, settings={"img_size": 64})


def test_semantic_segmentation_int_size_is_torchvision_s_preset(tmp_path):
    """An int `img_size` on a semantic-segmentation model: the shorter side resized to it, as torchvision's
    `SemanticSegmentation(resize_size=...)` preset does, then the logits brought back to the original size."""
    import torch.nn.functional as F
    from torchvision.models import get_model
    from torchvision.transforms._presets import SemanticSegmentation

    from workers.models import get_adapter
    from workers.models.base import ModelSpec

    torch.manual_seed(0)
    net = get_model("lraspp_mobilenet_v3_large", num_classes=3, weights=None, weights_backbone=None).eval()
    with torch.no_grad():  # random weights predict the background everywhere: demote it so classes show up
        net.classifier.high_classifier.bias.copy_(torch.tensor([-5.0, 0.0, 0.0]))
    spec = ModelSpec("torchvision", "lraspp_mobilenet_v3_large", "semantic_segmentation", ["x", "y"])
    adapter = get_adapter("torchvision")(spec, "cpu")
    adapter.load(net.state_dict())
    image = np.random.default_rng(1).integers(0, 255, (150, 260, 3), dtype=np.uint8)
    (out,), _ = adapter.run([image], [image.shape[:2]], {"conf": 0.0, "img_size": 96})
    with torch.inference_mode():
        x = SemanticSegmentation(resize_size=96)(torch.from_numpy(image).permute(2, 0, 1))
        assert min(x.shape[-2:]) == 96  # the preset keeps the aspect
        logits = F.interpolate(net(x[None])["out"], size=image.shape[:2], mode="bilinear", align_corners=False)
    label = logits[0].softmax(0).argmax(0).numpy()
    expected = sorted(c - 1 for c in np.unique(label) if c != 0)
    assert sorted(out.class_ids.tolist()) == expected and len(expected) > 0
    for cid, mask in zip(out.class_ids, out.masks):
        np.testing.assert_array_equal(mask, label == cid + 1)
