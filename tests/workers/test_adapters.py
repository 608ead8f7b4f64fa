"""The torchvision adapter on the architectures beyond the tiny R-CNNs: single-stage detectors and semantic
segmentation (random weights, small inputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import DirectModel

CLASSES = ["a", "b", "c"]


def _checkpoint(tmp_path, arch: str, task_type: str, **arch_kwargs):
    import torch
    import torchvision

    from workers.models import save_checkpoint

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=len(CLASSES) + 1,
                                         **arch_kwargs)
    path = tmp_path / f"{arch}.pth"
    save_checkpoint(model, path, framework="torchvision", architecture=arch, task_type=task_type, classes=CLASSES,
                    arch_kwargs=arch_kwargs)
    return path


def _image(seed: int = 0, size=(96, 128)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.mark.parametrize("arch, kwargs", [
    ("retinanet_resnet50_fpn", {"min_size": 128, "max_size": 128, "score_thresh": 0.0}),
    ("fcos_resnet50_fpn", {"min_size": 128, "max_size": 128, "score_thresh": 0.0}),
    ("ssdlite320_mobilenet_v3_large", {"score_thresh": 0.0}),
])
def test_single_stage_detectors_never_report_the_background(tmp_path, arch, kwargs):
    """RetinaNet, FCOS and SSD score label 0 (the background) like any other: it must not become class -1."""
    direct = DirectModel(_checkpoint(tmp_path, arch, "detection", **kwargs))
    [out] = direct([_image()], settings={"conf": 0.0, "max_det": 300})
    assert len(out.boxes) > 0
    assert out.class_ids.min() >= 0 and out.class_ids.max() < len(CLASSES)
    assert (out.boxes[:, 2] <= 128).all() and (out.boxes[:, 3] <= 96).all()


def test_semantic_segmentation_gives_one_mask_per_present_class(tmp_path):
    import torch

    path = _checkpoint(tmp_path, "lraspp_mobilenet_v3_large", "semantic_segmentation")
    direct = DirectModel(path)
    image = _image(1, size=(70, 90))
    [out] = direct([image], settings={"conf": 0.0})
    # the same argmax computed by hand from the raw model, at the image's own size
    adapter = direct.adapter
    with torch.inference_mode():
        logits = adapter.model(torch.cat(adapter.preprocess([image])))["out"]
    label = logits[0].argmax(0).numpy()
    present = sorted(int(c) for c in np.unique(label) if c != 0)
    assert sorted((out.class_ids + 1).tolist()) == present and len(present) > 0
    assert out.masks.shape == (len(present), 70, 90)
    for cid, mask, box in zip(out.class_ids, out.masks, out.boxes):
        np.testing.assert_array_equal(mask, label == cid + 1)
        ys, xs = np.nonzero(mask)
        np.testing.assert_allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    assert out.masks.sum(0).max() <= 1  # one class per pixel


def test_semantic_segmentation_through_the_pipeline(api, tmp_path):
    from pipeline.annotation import Bitmap

    path = _checkpoint(tmp_path, "lraspp_mobilenet_v3_large", "semantic_segmentation")
    images = [_image(i, size=(70, 90)) for i in range(3)]
    model = api.nn.deploy(str(path), device="cpu")
    try:
        preds = model.predict(input=images, conf=0.0, progress=False)
    finally:
        model.shutdown()
    for pred, out in zip(preds, DirectModel(path)(images, settings={"conf": 0.0})):
        assert pred.error is None
        np.testing.assert_array_equal(pred.class_ids, out.class_ids)
        np.testing.assert_array_equal(pred.masks, out.masks)
        ann = pred.to_annotation()
        assert all(isinstance(label.geometry, Bitmap) for label in ann.labels)


def test_check_weights_finds_a_misfit_in_the_driver_without_building_weights(tmp_path):
    """deploy() checks the state dict on PyTorch's meta device before starting any replica."""
    from pipeline.exceptions import ModelLoadError
    from workers.models import get_adapter, load_checkpoint
    from workers.models.base import ModelSpec

    ckpt = load_checkpoint(str(Path(__file__).resolve().parents[2] / "checkpoints" / "shapes.pth"))
    spec = ModelSpec(ckpt.framework, ckpt.architecture, ckpt.task_type, ckpt.classes, ckpt.img_size,
                     ckpt.arch_kwargs)
    adapter = get_adapter("torchvision")
    adapter.check_weights(spec, ckpt.state_dict)  # fits
    more = ModelSpec(ckpt.framework, ckpt.architecture, ckpt.task_type, ckpt.classes + ["star"], ckpt.img_size,
                     ckpt.arch_kwargs)
    with pytest.raises(ModelLoadError, match="size mismatch for roi_heads.box_predictor.cls_score.weight"):
        adapter.check_weights(more, ckpt.state_dict)
    missing = {k: v for k, v in ckpt.state_dict.items() if not k.startswith("rpn.")}
    with pytest.raises(ModelLoadError, match="Missing key"):
        adapter.check_weights(spec, missing)
