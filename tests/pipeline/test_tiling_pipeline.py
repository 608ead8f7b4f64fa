"""Tiled inference through the pipeline: small objects in a large image, found by the demo model only on tiles."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.exceptions import InvalidArgumentError

DEMO = "checkpoints/shapes.pth"


def _large_scene(tmp_path, side: int = 1024, n: int = 12, seed: int = 3):
    """A `side` x `side` image with `n` shapes of the size the demo model was trained on (24-90 px), and their
    boxes: at the model's 256 px input they shrink 4x, below what it finds."""
    from PIL import Image

    from pipeline.app.shapes import get_sample

    rng = np.random.default_rng(seed)
    canvas = np.full((side, side, 3), 128, np.uint8)
    boxes = []
    cells = rng.permutation((side // 256) ** 2)[:n]
    for k, cell in enumerate(cells):
        s = get_sample(seed, k, max_objects=1)
        y0, x0 = (cell // (side // 256)) * 256, (cell % (side // 256)) * 256
        canvas[y0:y0 + 256, x0:x0 + 256] = s.image
        boxes.append(s.boxes[0] + [x0, y0, x0, y0])
    path = tmp_path / "scene.png"
    Image.fromarray(canvas).save(path)
    return path, np.asarray(boxes)


def _recall(pred, truth: np.ndarray, iou: float = 0.5) -> float:
    import torch
    from torchvision.ops import box_iou

    if not len(pred):
        return 0.0
    m = box_iou(torch.as_tensor(truth, dtype=torch.float32), torch.as_tensor(pred.boxes)).numpy()
    return float((m.max(axis=1) >= iou).mean())


@pytest.fixture(scope="module")
def demo_model(ray_session, tmp_path_factory):
    import pipeline

    model = pipeline.Api(data_dir=tmp_path_factory.mktemp("tiling-home")).nn.deploy(DEMO, device="cpu")
    yield model
    model.shutdown()


def test_tiling_finds_the_small_objects_a_whole_image_pass_misses(demo_model, tmp_path):
    path, truth = _large_scene(tmp_path)
    [whole] = demo_model.predict(input=path, settings={"conf": 0.5}, progress=False)
    [tiled] = demo_model.predict(input=path, settings={"conf": 0.5}, progress=False,
                                 tiling={"tile": 256, "overlap": 0.2})
    assert _recall(tiled, truth) >= 0.9 > _recall(whole, truth) + 0.3
    assert tiled.orig_size == (1024, 1024) and tiled.masks.shape[1:] == (1024, 1024)
    assert (tiled.boxes[:, 2] <= 1024).all() and (tiled.boxes[:, 3] <= 1024).all()


def test_an_image_smaller_than_a_tile_is_one_tile(demo_model, tmp_path):
    """A tile larger than the image: one window, the image itself, so the same objects as without tiling."""
    from PIL import Image

    from pipeline.app.shapes import get_sample

    path = tmp_path / "small.png"
    Image.fromarray(get_sample(5, 0).image).save(path)
    [plain] = demo_model.predict(input=path, settings={"conf": 0.5}, progress=False)
    [tiled] = demo_model.predict(input=path, settings={"conf": 0.5}, progress=False,
                                 tiling={"tile": 512, "merge": "nms", "merge_iou": 0.99})
    assert len(plain) == len(tiled) > 0
    np.testing.assert_allclose(np.sort(plain.boxes, axis=0), np.sort(tiled.boxes, axis=0), atol=1e-3)


@pytest.mark.parametrize("tiling, words", [
    ({"tile": 16}, "at least 32 px"),
    ({"overlap": 0.95}, "must be a number in [0, 0.9)"),
    ({"overlap": float("nan")}, "must be a number in [0, 0.9)"),
    ({"merge": "wbf"}, "'nms' or 'nmm'"),
    ({"tyle": 640}, "did you mean 'tile'?"),
])
def test_bad_tiling_is_refused_before_any_work(demo_model, tiling, words):
    with pytest.raises(InvalidArgumentError) as err:
        demo_model.predict(input=np.zeros((64, 64, 3), np.uint8), tiling=tiling)
    assert words in str(err.value)


def test_tiling_with_a_reduced_decode_is_refused(demo_model):
    with pytest.raises(InvalidArgumentError, match="tiling decodes each image whole"):
        demo_model.predict(input=np.zeros((64, 64, 3), np.uint8), tiling=True, settings={"decode": "reduced"})
