"""Every input kind of predict(): boxes equal a direct model call on the same decoded image, and the
Prediction's source fields are set as docs/api.md's table says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_objects, write_images
from PIL import Image

from workers.decode import read_image_file

S = {"conf": 0.0, "max_det": 20}


def _check(preds, images, direct, img_size=None):
    outs = direct(images, S, img_size=img_size)
    assert len(preds) == len(images)
    for p, out, img in zip(preds, outs, images):
        assert_same_objects(p, out)
        assert p.orig_size == img.shape[:2]


def test_single_path_str_and_pathlib(tiny_model, direct_tiny, tmp_path):
    [path] = write_images(tmp_path, 1)
    for value in (str(path), path):
        preds = tiny_model.predict(input=value, settings=S, progress=False)
        assert isinstance(preds, list) and len(preds) == 1
        _check(preds, [read_image_file(str(path))], direct_tiny)
        p = preds[0]
        assert p.image_path == str(path) and p.image_url is None and p.image is None
        assert p.source == value and p.name == path.name
        assert p.project_id is p.dataset_id is p.image_id is None


def test_pil_image_and_arrays(tiny_model, direct_tiny):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (70, 90), dtype=np.uint8)
    rgba = rng.integers(0, 256, (70, 90, 4), dtype=np.uint8)
    pil = Image.fromarray(rgb)
    cases = [
        (pil, rgb),
        (rgb, rgb),
        (gray, np.repeat(gray[:, :, None], 3, axis=2)),
        (rgba, rgba[:, :, :3]),
    ]
    for value, expected in cases:
        [p] = tiny_model.predict(input=value, settings=S, progress=False)
        _check([p], [expected], direct_tiny)
        np.testing.assert_array_equal(p.image, expected)
        np.testing.assert_array_equal(p.load_image(), expected)
        assert p.image_path is None and p.image_url is None
        assert p.source is value


def test_list_mixing_kinds_keeps_input_order(tiny_model, direct_tiny, tmp_path, http_server):
    paths = write_images(tmp_path / "imgs", 3)
    arr = np.random.default_rng(1).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    url = http_server.url("img_0001.jpg", root=tmp_path / "imgs")
    inputs = [str(paths[0]), arr, url, Image.open(paths[2]), paths[1]]
    preds = tiny_model.predict(input=inputs, settings=S, progress=False)
    images = [read_image_file(str(paths[0])), arr, read_image_file(str(paths[1])),
              read_image_file(str(paths[2])), read_image_file(str(paths[1]))]
    _check(preds, images, direct_tiny)
    assert preds[2].image_url == url and preds[2].source == url and preds[2].image_path is None
    assert preds[1].image is not None and preds[3].image is not None
    assert preds[4].image_path == str(paths[1])


def test_url(tiny_model, direct_tiny, tmp_path, http_server):
    [path] = write_images(tmp_path / "www", 1)
    url = http_server.url(path.name, root=tmp_path / "www")
    [p] = tiny_model.predict(input=url, settings=S, progress=False)
    _check([p], [read_image_file(str(path))], direct_tiny)
    assert p.image_url == url and p.image_path is None
    np.testing.assert_array_equal(p.load_image(), read_image_file(str(path)))


def test_directory_sorted_images_only_and_recursive(tiny_model, direct_tiny, tmp_path):
    root = tmp_path / "dir"
    top = write_images(root, 3, seed=1)
    sub = write_images(root / "sub" / "deeper", 2, seed=2, fmt="png")
    (root / "notes.txt").write_text("not an image")
    (root / "._img_0000.jpg").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource fork: hidden, skipped
    (root / "sub" / "data.csv").write_text("1,2")
    flat = tiny_model.predict(input=root, settings=S, progress=False)
    assert [p.image_path for p in flat] == [str(p) for p in top]
    deep = tiny_model.predict(input=str(root), recursive=True, settings=S, progress=False)
    assert [p.image_path for p in deep] == [str(p) for p in top + sub]
    assert deep[-1].dataset == ("sub", "deeper") and deep[0].dataset == ()
    _check(deep, [read_image_file(str(p)) for p in top + sub], direct_tiny)


def test_local_supervisely_project_keeps_dataset_and_item_names(tiny_model, direct_tiny, tmp_path):
    root = tmp_path / "proj"
    (root).mkdir()
    (root / "meta.json").write_text(json.dumps({"classes": [], "tags": [], "projectType": "images"}))
    a = write_images(root / "train" / "img", 2, seed=4)
    b = write_images(root / "train" / "datasets" / "hard" / "img", 1, seed=5)
    preds = tiny_model.predict(input=root, settings=S, progress=False)
    assert [(p.dataset, p.name) for p in preds] == [
        (("train",), a[0].name), (("train",), a[1].name), (("train", "hard"), b[0].name)]
    _check(preds, [read_image_file(str(p)) for p in a + b], direct_tiny)


@pytest.fixture
def platform_project(api, tmp_path):
    """A project with a nested dataset: ds (2 images) / ds/child (1 image) and other (1 image)."""
    project = api.project.create("source")
    ds = api.dataset.create(project.id, "ds")
    child = api.dataset.create(project.id, "child", parent_id=ds.id)
    other = api.dataset.create(project.id, "other")
    paths = write_images(tmp_path / "p", 4, seed=7)
    infos = [api.image.upload(ds.id, paths[0].name, paths[0]), api.image.upload(ds.id, paths[1].name, paths[1]),
             api.image.upload(child.id, paths[2].name, paths[2]), api.image.upload(other.id, paths[3].name, paths[3])]
    return project, (ds, child, other), infos, paths


def test_platform_ids(tiny_model, direct_tiny, api, platform_project):
    project, (ds, child, other), infos, paths = platform_project
    images = {i.id: read_image_file(str(p)) for i, p in zip(infos, paths)}

    by_project = tiny_model.predict(project_id=project.id, settings=S, progress=False)
    assert sorted(p.image_id for p in by_project) == sorted(images)
    by_dataset = tiny_model.predict(dataset_id=ds.id, settings=S, progress=False)  # nested child included
    assert [p.image_id for p in by_dataset] == [infos[0].id, infos[1].id, infos[2].id]
    assert by_dataset[2].dataset == ("ds", "child") and by_dataset[2].dataset_id == child.id
    one = tiny_model.predict(image_ids=infos[3].id, settings=S, progress=False)
    many = tiny_model.predict(image_ids=[infos[1].id, infos[0].id], settings=S, progress=False)
    alias = tiny_model.predict(image_id=infos[1].id, settings=S, progress=False)
    assert [p.image_id for p in many] == [infos[1].id, infos[0].id]
    for p in by_project + one + many + alias:
        assert p.project_id == project.id and p.source == p.image_id
        assert p.image_path is None and p.image_url is None and p.image is None
        _check([p], [images[p.image_id]], direct_tiny)
        np.testing.assert_array_equal(p.load_image(), images[p.image_id])


def test_img_size_int_and_tuple_boxes_in_original_pixels(tiny_model, direct_tiny, tmp_path):
    [path] = write_images(tmp_path, 1, size=(90, 120))
    img = read_image_file(str(path))
    for size in (64, (48, 80)):
        [p] = tiny_model.predict(input=path, img_size=size, settings=S, progress=False)
        _check([p], [img], direct_tiny, img_size=size)  # an int: fitted the model's way; a tuple: exact
        assert p.orig_size == (90, 120)
        assert (p.boxes[:, 0::2] <= 120).all() and (p.boxes[:, 1::2] <= 90).all()


def test_classes_filter(tiny_model, tmp_path):
    [path] = write_images(tmp_path, 1)
    [everything] = tiny_model.predict(input=path, settings=S, progress=False)
    [only] = tiny_model.predict(input=path, settings=S, classes=["a"], progress=False)
    assert set(only.classes) <= {"a"}
    assert len(only) == sum(1 for c in everything.classes if c == "a")


def test_instance_masks_in_original_pixels(ray_session, api, tiny_mask_checkpoint, tmp_path):
    from helpers import DirectModel

    model = api.nn.deploy(str(tiny_mask_checkpoint), device="cpu")
    try:
        [path] = write_images(tmp_path, 1, size=(80, 100))
        img = read_image_file(str(path))
        [p] = model.predict(input=path, img_size=64, settings=S, progress=False)
        [out] = DirectModel(Path(tiny_mask_checkpoint))([img], S, img_size=64)
        keep = out.masks.reshape(len(out.masks), -1).any(axis=1)  # empty masks are dropped
        assert p.masks.shape == (int(keep.sum()), 80, 100)
        np.testing.assert_array_equal(p.masks, out.masks[keep])
        np.testing.assert_allclose(p.boxes, out.boxes[keep], atol=1e-2)
        ann = p.annotation
        assert all(lab.geometry.geometry_type == "bitmap" for lab in ann.labels)
    finally:
        model.shutdown()


def test_directory_symlink_loops_are_walked_once(tiny_model, tmp_path):
    import os

    root = tmp_path / "loop"
    [img] = write_images(root, 1)
    sub = write_images(root / "sub", 1, seed=9)
    os.symlink(root, root / "self")  # a loop
    os.symlink(root / "sub", root / "again")  # the same folder twice
    preds = tiny_model.predict(input=root, recursive=True, settings=S, progress=False)
    assert sorted(p.name for p in preds) == sorted([img.name, sub[0].name])
