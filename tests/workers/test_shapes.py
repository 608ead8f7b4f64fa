"""The generated shapes set (pipeline/app/shapes.py) and the committed demo model checkpoints/shapes.pth."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._metrics import box_iou, mask_iou  # noqa: E402
from benchmarks.demo_model import TEST_SEED, TRAIN_SEED, to_tensor  # noqa: E402
from pipeline.app.shapes import CLASSES, ShapesSample, generate_dataset, get_sample, masks_to_boxes  # noqa: E402

CHECKPOINT = ROOT / "checkpoints" / "shapes.pth"


# --------------------------------------------------------------------------------------------- the generator


def test_same_seed_same_arrays_and_item_i_alone():
    a = list(generate_dataset(4, seed=7))
    b = list(generate_dataset(4, seed=7))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.masks, y.masks)
        np.testing.assert_array_equal(x.boxes, y.boxes)
        np.testing.assert_array_equal(x.class_ids, y.class_ids)
    alone = get_sample(7, 3)
    np.testing.assert_array_equal(alone.image, a[3].image)
    np.testing.assert_array_equal(alone.masks, a[3].masks)
    assert not np.array_equal(get_sample(8, 3).image, a[3].image)
    assert not np.array_equal(get_sample(7, 2).image, a[3].image)


def test_shapes_dtypes_and_boxes_match_masks():
    counts = np.zeros(len(CLASSES), int)
    for s in generate_dataset(30, seed=TRAIN_SEED + 123):
        assert isinstance(s, ShapesSample)
        n = len(s)
        assert 1 <= n <= 4
        assert s.image.shape == (256, 256, 3) and s.image.dtype == np.uint8
        assert s.masks.shape == (n, 256, 256) and s.masks.dtype == bool
        assert s.boxes.shape == (n, 4) and s.boxes.dtype == np.float32
        assert s.class_ids.shape == (n,) and s.class_ids.dtype == np.int64
        assert s.class_names == [CLASSES[i] for i in s.class_ids]
        assert ((s.class_ids >= 0) & (s.class_ids < len(CLASSES))).all()
        # every object keeps a clear visible area; visible parts never overlap (later shapes occlude earlier ones)
        assert (s.masks.reshape(n, -1).sum(1) >= 150).all()
        assert (s.masks.sum(0) <= 1).all()
        # boxes are the tight boxes of the masks, x2/y2 exclusive
        for m, (x1, y1, x2, y2) in zip(s.masks, s.boxes.astype(int)):
            ys, xs = np.nonzero(m)
            assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        np.testing.assert_array_equal(masks_to_boxes(s.masks), s.boxes)
        counts += np.bincount(s.class_ids, minlength=len(CLASSES))
    assert (counts > 0).all()


def test_other_sizes():
    s = get_sample(0, 0, height=128, width=192, max_objects=2)
    assert s.image.shape == (128, 192, 3)
    assert s.masks.shape[1:] == (128, 192)
    assert 1 <= len(s) <= 2
    assert (s.boxes[:, 2] <= 192).all() and (s.boxes[:, 3] <= 128).all()


# --------------------------------------------------------------------------------------------- the demo model


@pytest.fixture(scope="module")
def checkpoint():
    from workers.models.checkpoint import load_checkpoint

    assert CHECKPOINT.is_file(), "checkpoints/shapes.pth is committed; rebuild it with scripts/train_shapes.py"
    return load_checkpoint(CHECKPOINT)


@pytest.fixture(scope="module")
def model(checkpoint):
    from workers.models._small_archs import SMALL_ARCHITECTURES

    m = SMALL_ARCHITECTURES[checkpoint.architecture](num_classes=len(checkpoint.classes) + 1, **checkpoint.arch_kwargs)
    m.load_state_dict(checkpoint.state_dict, strict=True)
    return m.eval()


def test_checkpoint_describes_itself(checkpoint):
    from workers.models._small_archs import SMALL_ARCHITECTURES
    from workers.models.checkpoint import FORMAT

    raw = torch.load(io.BytesIO(CHECKPOINT.read_bytes()), map_location="cpu", weights_only=True)
    assert raw["format"] == FORMAT
    assert os.path.getsize(CHECKPOINT) < 20_000_000
    assert all(v.dtype == torch.float16 for v in raw["state_dict"].values() if v.is_floating_point())
    assert checkpoint.framework == "torchvision"
    assert checkpoint.task_type == "instance_segmentation"
    assert checkpoint.classes == CLASSES
    assert checkpoint.architecture in SMALL_ARCHITECTURES
    assert checkpoint.img_size == 256
    assert json.loads(json.dumps(checkpoint.arch_kwargs)) == checkpoint.arch_kwargs  # JSON-plain
    assert checkpoint.arch_kwargs["min_size"] == checkpoint.arch_kwargs["max_size"] == 256


def test_model_finds_the_shapes(model):
    samples = list(generate_dataset(10, seed=TEST_SEED))
    with torch.inference_mode():
        outputs = model([to_tensor(s.image) for s in samples])
    matched = total = 0
    for s, out in zip(samples, outputs):
        # torchvision's detection contract
        n = out["boxes"].shape[0]
        assert out["boxes"].shape == (n, 4) and out["scores"].shape == (n,) and out["labels"].dtype == torch.int64
        assert out["masks"].shape == (n, 1, 256, 256) and out["masks"].dtype == torch.float32
        assert ((out["labels"] >= 1) & (out["labels"] <= len(CLASSES))).all()
        if n:
            assert float(out["masks"].min()) >= 0.0 and float(out["masks"].max()) <= 1.0
        keep = out["scores"] >= 0.5
        boxes = out["boxes"][keep].numpy()
        labels = out["labels"][keep].numpy() - 1
        masks = out["masks"][keep, 0].numpy() > 0.5
        ious = box_iou(s.boxes, boxes)
        mious = mask_iou(s.masks, masks)
        for g in range(len(s)):
            ok = (ious[g] >= 0.5) & (labels == s.class_ids[g])
            matched += bool(ok.any())
            total += 1
            if ok.any():  # the matching detection's mask is a good mask of the object too
                assert mious[g][ok].max() >= 0.5
    assert total >= 15
    assert matched / total >= 0.8, f"matched {matched}/{total} objects"


def test_model_rescales_other_sizes(model):
    """A 512x384 image (objects twice as big) comes back in its own pixel frame."""
    s = get_sample(TEST_SEED, 99, height=384, width=512)
    with torch.inference_mode():
        (out,) = model([to_tensor(s.image)])
    assert out["masks"].shape[2:] == (384, 512)
    keep = out["scores"] >= 0.5
    ious = box_iou(s.boxes, out["boxes"][keep].numpy())
    assert (ious.max(axis=1, initial=0.0) >= 0.5).mean() >= 0.5
