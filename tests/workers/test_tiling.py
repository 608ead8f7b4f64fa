"""Tiled inference (workers/tiling.py): the window grid, views, shifting back, NMS / NMM merging, the checks."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.exceptions import InvalidArgumentError
from workers.tiling import (
    Detections,
    check_tiling,
    concat,
    iter_tile_batches,
    merge,
    paste_masks,
    predict_tiled,
    shift_back,
    tile_grid,
)


def sahi_slice_bboxes(h: int, w: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Reference: the loop of SAHI's `slicing.get_slice_bboxes`, written out, as (y0, x0, y1, x1)."""
    out = []
    y_min = y_max = 0
    step_over = int(overlap * tile)
    while y_max < h:
        x_min = x_max = 0
        y_max = y_min + tile
        while x_max < w:
            x_max = x_min + tile
            if y_max > h or x_max > w:
                x_max, y_max = min(w, x_max), min(h, y_max)
                x_min, y_min = max(0, x_max - tile), max(0, y_max - tile)
            out.append((y_min, x_min, y_max, x_max))
            x_min = x_max - step_over
        y_min = y_max - step_over
    return out


@pytest.mark.parametrize("h, w, tile, overlap, expected", [
    # overlap 0: tiles side by side, the last one shifted back to end at the border
    (100, 100, 64, 0.0, [(0, 0, 64, 64), (0, 36, 64, 100), (36, 0, 100, 64), (36, 36, 100, 100)]),
    # overlap 0.5: step 32; non-square image
    (100, 150, 64, 0.5, [(y, x, y + 64, x + 64) for y in (0, 32, 36) for x in (0, 32, 64, 86)]),
    # exactly two tiles wide: no shifted extra tile
    (64, 128, 64, 0.0, [(0, 0, 64, 64), (0, 64, 64, 128)]),
    # smaller than one tile: one tile = the image
    (20, 50, 64, 0.2, [(0, 0, 20, 50)]),
    # one side smaller than a tile: full-width tiles, the image's height
    (20, 200, 64, 0.0, [(0, 0, 20, 64), (0, 64, 20, 128), (0, 128, 20, 192), (0, 136, 20, 200)]),
])
def test_tile_grid_table(h, w, tile, overlap, expected):
    assert tile_grid(h, w, tile, overlap) == expected


@pytest.mark.parametrize("h, w, tile, overlap", [
    (4096, 4096, 256, 0.2), (1080, 1920, 640, 0.2), (333, 517, 100, 0.0), (333, 517, 100, 0.5),
    (700, 90, 64, 0.25), (31, 2000, 32, 0.89),
])
def test_tile_grid_equals_sahi_and_covers_the_image(h, w, tile, overlap):
    grid = tile_grid(h, w, tile, overlap)
    assert grid == sahi_slice_bboxes(h, w, tile, overlap)
    covered = np.zeros((h, w), bool)
    for y0, x0, y1, x1 in grid:
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        assert (y1 - y0, x1 - x0) == (min(tile, h), min(tile, w))  # never a partial tile
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def test_tile_grid_rectangular_tiles():
    grid = tile_grid(100, 300, (50, 128), 0.0)
    assert {(y1 - y0, x1 - x0) for y0, x0, y1, x1 in grid} == {(50, 128)}
    assert sorted({g[0] for g in grid}) == [0, 50] and sorted({g[1] for g in grid}) == [0, 128, 172]


def test_tiles_are_views_streamed_in_batches():
    image = np.arange(300 * 500 * 3, dtype=np.uint32).reshape(300, 500, 3).astype(np.uint8)
    batches = list(iter_tile_batches(image, 128, 0.25, batch_size=4))
    windows = [win for b in batches for win, _ in b]
    assert windows == tile_grid(300, 500, 128, 0.25)
    sizes = [len(b) for b in batches]
    assert sum(sizes) == len(windows) and set(sizes[:-1]) == {4} and 1 <= sizes[-1] <= 4
    for b in batches:
        for (y0, x0, y1, x1), view in b:
            assert view.base is image and np.shares_memory(view, image)  # a view, not a copy
            np.testing.assert_array_equal(view, image[y0:y1, x0:x1])


def test_a_20000_px_image_is_cut_lazily():
    # a broadcast array stands for a decoded 20000 x 20000 image without allocating its 1.2 GB
    image = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (20000, 20000, 3))
    gen = iter_tile_batches(image, 640, 0.2, batch_size=16)
    first = next(gen)
    assert len(first) == 16 and first[0][1].shape == (640, 640, 3) and np.shares_memory(first[0][1], image)
    assert len(tile_grid(20000, 20000, 640, 0.2)) == 39 * 39


# --------------------------------------------------------------------------------------------- shift back


def test_shift_back_moves_boxes_and_crops_masks():
    window = (100, 200, 164, 264)
    masks = np.zeros((2, 64, 64), bool)
    masks[0, 10:20, 5:15] = True
    masks[1, 40:64, 50:64] = True  # touches the tile's corner
    boxes = np.array([[5, 10, 15, 20], [50, 40, 64, 64]], np.float32)
    d = shift_back(boxes, np.array([0.9, 0.8]), np.array([1, 2]), masks, window)
    np.testing.assert_array_equal(d.boxes, [[205, 110, 215, 120], [250, 140, 264, 164]])
    assert [(m.y0, m.x0, m.mask.shape) for m in d.masks] == [(110, 205, (10, 10)), (140, 250, (24, 14))]
    full = paste_masks(d, 300, 400)
    expected = np.zeros((2, 300, 400), bool)
    expected[:, 100:164, 200:264] = masks
    np.testing.assert_array_equal(full, expected)


def test_concat_keeps_order_and_masks():
    a = shift_back(np.array([[0, 0, 4, 4]]), [0.5], [0], np.ones((1, 8, 8), bool), (0, 0, 8, 8))
    b = shift_back(np.array([[1, 1, 3, 3]]), [0.7], [1], np.ones((1, 8, 8), bool), (10, 10, 18, 18))
    c = concat([a, b])
    np.testing.assert_array_equal(c.boxes, [[0, 0, 4, 4], [11, 11, 13, 13]])
    assert c.class_ids.tolist() == [0, 1] and len(c.masks) == 2
    assert concat([a, Detections.empty()]).masks is None  # a box-only part: no masks


# --------------------------------------------------------------------------------------------- merging


def reference_nms(boxes, scores, classes, thr, agnostic=False):
    """Greedy NMS in plain Python: per class, best first, drop boxes with IoU > thr with a kept one."""
    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    keep = []
    for i in sorted(range(len(boxes)), key=lambda k: -scores[k]):
        if all(iou(boxes[i], boxes[k]) <= thr for k in keep if agnostic or classes[k] == classes[i]):
            keep.append(i)
    return keep


def test_nms_hand_made_is_class_aware():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.85, 0.7], np.float32)
    classes = np.array([0, 0, 1, 0])
    d = merge(boxes, scores, classes, "nms", 0.5)  # IoU(0, 1) = 81 / 119 = 0.68
    assert d.groups == [[0], [2], [3]]
    np.testing.assert_array_equal(d.boxes, boxes[[0, 2, 3]])
    assert merge(boxes, scores, classes, "nms", 0.5, class_agnostic=True).groups == [[0], [3]]
    assert merge(boxes, scores, classes, "nms", 0.7).groups == [[0], [2], [1], [3]]


def test_nms_equals_reference_on_random_boxes():
    rng = np.random.default_rng(3)
    for _ in range(30):
        n = int(rng.integers(1, 30))
        xy = rng.uniform(0, 100, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], 1).astype(np.float32)
        scores = rng.permutation(n).astype(np.float32) / n + 0.01  # distinct scores: one valid answer
        classes = rng.integers(0, 3, n)
        for agnostic in (False, True):
            d = merge(boxes, scores, classes, "nms", 0.4, class_agnostic=agnostic)
            assert [g[0] for g in d.groups] == reference_nms(boxes, scores, classes, 0.4, agnostic)


def test_nmm_merges_a_box_cut_by_a_tile_border_into_the_whole_one():
    # IOS: the cut box lies inside the whole box (IOS 1) although their IoU is only 0.5
    boxes = np.array([[100, 100, 140, 140], [120, 100, 140, 140], [300, 300, 330, 330]], np.float32)
    d = merge(boxes, [0.8, 0.9, 0.5], [0, 0, 0], "nmm", 0.5)
    assert d.groups == [[1, 0], [2]]
    np.testing.assert_array_equal(d.boxes, [[100, 100, 140, 140], [300, 300, 330, 330]])
    np.testing.assert_allclose(d.scores, [0.9, 0.5])  # score = max
    assert len(merge(boxes, [0.8, 0.9, 0.5], [0, 0, 0], "nms", 0.6)) == 3  # NMS at IoU 0.6 keeps both halves


def test_nmm_two_halves_union_and_the_higher_scored_class_when_agnostic():
    boxes = np.array([[0, 0, 30, 40], [15, 0, 40, 40]], np.float32)  # IOS = 600 / 1000 = 0.6
    d = merge(boxes, [0.7, 0.8], [2, 1], "nmm", 0.5, class_agnostic=True)
    np.testing.assert_array_equal(d.boxes, [[0, 0, 40, 40]])
    assert d.scores.tolist() == pytest.approx([0.8]) and d.class_ids.tolist() == [1]
    assert len(merge(boxes, [0.7, 0.8], [2, 1], "nmm", 0.5)) == 2  # class-aware: different classes stay apart
    assert len(merge(boxes, [0.7, 0.8], [0, 0], "nmm", 0.61)) == 2  # IOS 0.6 < 0.61: no candidate
    # at exactly 0.6 it is a candidate (>=) that then fails SAHI's strict re-check (>): it is dropped, not kept
    d = merge(boxes, [0.7, 0.8], [0, 0], "nmm", 0.6)
    assert d.groups == [[1]] and d.boxes.tolist() == [[15, 0, 40, 40]]


def test_nmm_rechecks_candidates_against_the_growing_box_as_sahi_does():
    # keeper K, candidates c1 (IoU 0.714) and c2 (IoU 0.625) with K; after K absorbs c1 the merged box
    # (10, 10, 20, 24) has IoU exactly 0.5 with c2, not above 0.5: c2 is neither merged nor kept
    boxes = np.array([[10, 10, 20, 20], [10, 10, 20, 24], [10, 4, 20, 20]], np.float32)
    d = merge(boxes, [0.9, 0.8, 0.7], [0, 0, 0], "nmm", 0.5, metric="IOU")
    assert d.groups == [[0, 1]]
    np.testing.assert_array_equal(d.boxes, [[10, 10, 20, 24]])


def test_nmm_unions_mask_crops():
    mask_a = np.pad(np.ones((20, 30), bool), ((0, 12), (0, 2)))[None]
    mask_b = np.pad(np.ones((20, 20), bool), ((0, 12), (0, 12)))[None]
    a = shift_back(np.array([[0, 0, 30, 20]]), [0.9], [0], mask_a, (0, 0, 32, 32))
    b = shift_back(np.array([[0, 0, 20, 20]]), [0.6], [0], mask_b, (0, 20, 32, 52))
    d = merge(concat([a, b]), method="nmm", iou=0.4)  # IOS 200 / 400 = 0.5
    assert len(d) == 1
    np.testing.assert_array_equal(d.boxes, [[0, 0, 40, 20]])
    full = paste_masks(d, 40, 60)[0]
    assert full[:20, :40].all() and full.sum() == 20 * 40


def test_merge_of_nothing():
    assert len(merge(np.zeros((0, 4)), np.zeros(0), np.zeros(0), "nmm")) == 0
    assert len(merge(Detections.empty(with_masks=True), method="nms")) == 0


# --------------------------------------------------------------------------------------------- end to end


def _squares_detector(image, objects):
    """A fake model: finds the given squares `(y0, x0, size)` visible in a view, boxes clipped to the view, score =
    the visible fraction. A view's place in the image is read from its offset into the image's memory."""
    def predict(views):
        outs = []
        for v in views:
            off = v.__array_interface__["data"][0] - image.__array_interface__["data"][0]
            vy, vx = off // image.strides[0], (off % image.strides[0]) // image.strides[1]
            h, w = v.shape[:2]
            boxes, scores = [], []
            for y0, x0, s in objects:
                bx0, by0 = max(x0, vx) - vx, max(y0, vy) - vy
                bx1, by1 = min(x0 + s, vx + w) - vx, min(y0 + s, vy + h) - vy
                if bx1 > bx0 and by1 > by0:
                    boxes.append([bx0, by0, bx1, by1])
                    scores.append((bx1 - bx0) * (by1 - by0) / (s * s))
            outs.append(Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                                   np.zeros(len(boxes), np.int64)))
        return outs

    return predict


def test_predict_tiled_recovers_objects_cut_by_tile_borders():
    objects = [(10, 10, 40), (90, 120, 60), (250, 250, 50), (0, 400, 30), (470, 470, 30)]
    image = np.zeros((500, 500, 3), np.uint8)
    tiling = check_tiling({"tile": 128, "overlap": 0.5, "merge": "nmm"})
    d = predict_tiled(image, _squares_detector(image, objects), tiling, batch_size=5)
    got = sorted(map(tuple, d.boxes.astype(int).tolist()))
    assert got == sorted((x, y, x + s, y + s) for y, x, s in objects)
    assert np.allclose(d.scores, 1.0)  # each object seen whole in some tile


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("tiling, message", [
    ({"tile": 16}, "at least 32 px"),
    ({"tile": "640"}, "must be an int"),
    ({"overlap": 0.9}, r"in \[0, 0.9\)"),
    ({"overlap": -0.1}, r"in \[0, 0.9\)"),
    ({"merge": "soft-nms"}, "'nms' or 'nmm'"),
    ({"merge": "nms", "merge_metric": "IOS"}, "needs merge='nmm'"),
    ({"merge_iou": 0}, r"in \(0, 1\]"),
    ({"full_image": "yes"}, "True or False"),
    ({"overlapp": 0.2}, "did you mean 'overlap'"),
    ([640], "must be a dict"),
])
def test_bad_tiling_is_refused_before_work(tiling, message):
    with pytest.raises(InvalidArgumentError, match=message):
        check_tiling(tiling)


def test_check_tiling_defaults_and_tasks():
    t = check_tiling(True)
    assert t["tile"] == (640, 640) and t["overlap"] == 0.2 and (t["merge"], t["merge_metric"]) == ("nmm", "IOS")
    assert check_tiling({"merge": "nms"})["merge_metric"] == "IOU"
    assert check_tiling(None) is None and check_tiling(False) is None
    assert check_tiling({"tile": [256, 512]}, "instance_segmentation")["tile"] == (256, 512)
    with pytest.raises(InvalidArgumentError, match="semantic_segmentation"):
        check_tiling({}, "semantic_segmentation")
    with pytest.raises(InvalidArgumentError, match="at least 32"):
        tile_grid(100, 100, 31, 0.2)


def test_large_shapes_image_ground_truth():
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks.mot import box_iou
    from benchmarks.scenes import large_shapes_image

    image, boxes, ids = large_shapes_image(1024, 12, seed=3)
    assert image.shape == (1024, 1024, 3) and boxes.shape == (12, 4) and set(ids.tolist()) <= {0, 1, 2}
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert sides.min() >= 20 and sides.max() <= 92  # 24-90 px shapes (a rotated triangle's box may be smaller)
    iou = box_iou(boxes, boxes)
    assert (iou[~np.eye(12, dtype=bool)] == 0).all()  # placed apart
