"""Upload modes on a project with existing annotations: the exact objects after each upload."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import write_images
from test_merge import box_with_iou

from pipeline.annotation import Annotation, Bitmap, Label, ObjClass, ProjectMeta, Rectangle, Tag, TagMeta
from workers.decode import read_image_file

S = {"conf": 0.0, "max_det": 5}
REVIEWED = TagMeta("reviewed", "none")


@pytest.fixture
def target(api, tmp_path):
    """Project 'target': 3 images; image 0 has two 'a' rectangles and an image tag, image 1 a 'c' bitmap."""
    project = api.project.create("target")
    ds = api.dataset.create(project.id, "ds")
    paths = write_images(tmp_path / "src", 3, size=(96, 128), seed=11)
    infos = [api.image.upload(ds.id, p.name, p) for p in paths]
    a, c = ObjClass("a", "rectangle"), ObjClass("c", "bitmap")
    api.project.update_meta(project.id, ProjectMeta(obj_classes=(a, c), tag_metas=(REVIEWED,)))
    mask = np.zeros((96, 128), bool)
    mask[10:40, 20:60] = True
    existing = {
        infos[0].id: Annotation((96, 128), (Label(Rectangle.from_xyxy(1, 2, 30, 40), a),
                                            Label(Rectangle.from_xyxy(50, 10, 90, 60), a)), img_tags=(Tag(REVIEWED),)),
        infos[1].id: Annotation((96, 128), (Label(Bitmap.from_mask(mask), c),)),
    }
    for image_id, ann in existing.items():
        api.annotation.set(image_id, ann)
    return project, ds, infos, existing


def _assert_predicted_labels(labels, pred, renamed=None):
    renamed = renamed or {}
    assert len(labels) == len(pred)
    for lab, box, score, name in zip(labels, pred.boxes, pred.scores, pred.classes):
        assert lab.obj_class.name == renamed.get(name, name)
        assert lab.geometry.geometry_type == "rectangle"
        np.testing.assert_allclose(lab.geometry.to_xyxy(), box, atol=0.01)
        assert lab.confidence == pytest.approx(float(score), abs=1e-4)


def test_append_adds_to_what_was_there(tiny_model, api, target):
    project, ds, infos, existing = target
    preds = tiny_model.predict(project_id=project.id, upload="append", settings=S, progress=False)
    for p, info in zip(preds, infos):
        assert p.error is None and len(p) == 5
        assert (p.target.project_id, p.target.dataset_id, p.target.image_id) == (project.id, ds.id, info.id)
        ann = api.annotation.get(info.id)
        old = existing.get(info.id, Annotation((96, 128)))
        assert ann.labels[: len(old.labels)] == old.labels
        # 'c' is a bitmap class in the project, so predicted 'c' boxes go to 'c_nn'
        _assert_predicted_labels(ann.labels[len(old.labels):], p, renamed={"c": "c_nn"})
        assert ann.img_tags == old.img_tags
    meta = api.project.get_meta(project.id)
    assert meta.get_obj_class("c").shape == "bitmap"
    if any("c" in p.classes for p in preds):
        assert meta.get_obj_class("c_nn").shape == "rectangle"
    assert meta.get_tag_meta("confidence").value_type == "any_number"


def test_replace_keeps_image_tags_only(tiny_model, api, target):
    project, ds, infos, existing = target
    preds = tiny_model.predict(dataset_id=ds.id, upload="replace", settings=S, progress=False)
    for p, info in zip(preds, infos):
        ann = api.annotation.get(info.id)
        _assert_predicted_labels(ann.labels, p, renamed={"c": "c_nn"})
        assert ann.img_tags == existing.get(info.id, Annotation((96, 128))).img_tags


def test_iou_merge_keeps_089_drops_091_boxes(tiny_model, api, target):
    project, ds, infos, existing = target
    image = infos[2]
    [p] = tiny_model.predict(image_ids=image.id, settings=S, progress=False)
    name0, name1 = p.classes[0], p.classes[1]
    cls0 = ObjClass(name0 if name0 != "c" else "c_nn", "rectangle")
    cls1 = ObjClass(name1 if name1 != "c" else "c_nn", "rectangle")
    api.project.merge_meta(project.id, ProjectMeta(obj_classes=tuple({c.name: c for c in (cls0, cls1)}.values())))
    e0 = Label(Rectangle.from_xyxy(*box_with_iou(*p.boxes[0], 0.91)), cls0)
    e1 = Label(Rectangle.from_xyxy(*box_with_iou(*p.boxes[1], 0.89)), cls1)
    api.annotation.set(image.id, Annotation((96, 128), (e0, e1)))
    [again] = tiny_model.predict(image_ids=image.id, upload="iou_merge", settings=S, progress=False)
    np.testing.assert_allclose(again.boxes, p.boxes, atol=1e-3)
    ann = api.annotation.get(image.id)
    assert [lab.to_json() for lab in ann.labels[:2]] == [e0.to_json(), e1.to_json()]  # as stored (2 decimals)
    added = ann.labels[2:]
    # prediction 0 overlapped e0 at IoU 0.91 >= 0.9: dropped; prediction 1 at 0.89 < 0.9: kept; the rest kept
    assert len(added) == 4
    np.testing.assert_allclose([lab.geometry.to_xyxy() for lab in added], p.boxes[1:], atol=0.01)


def test_iou_merge_masks_and_custom_threshold(ray_session, api, tiny_mask_checkpoint, tmp_path):
    model = api.nn.deploy(str(tiny_mask_checkpoint), device="cpu")
    try:
        project = api.project.create("masks")
        ds = api.dataset.create(project.id, "ds")
        [path] = write_images(tmp_path, 1, size=(96, 128), seed=5)
        info = api.image.upload(ds.id, path.name, path)
        [p] = model.predict(image_ids=info.id, settings=S, progress=False)
        assert p.masks is not None and len(p) >= 2
        m0, m1 = p.masks[0].copy(), p.masks[1].copy()

        def shrink(mask, keep_fraction):  # IoU(sub, mask) = |sub| / |mask|
            ys, xs = np.nonzero(mask)
            order = np.lexsort((xs, ys))
            n_drop = int(round(len(ys) * (1 - keep_fraction)))
            sub = mask.copy()
            sub[ys[order[:n_drop]], xs[order[:n_drop]]] = False
            return sub

        c0 = ObjClass(p.classes[0], "bitmap")
        c1 = ObjClass(p.classes[1], "bitmap")
        api.project.merge_meta(project.id, ProjectMeta(obj_classes=tuple({c0.name: c0, c1.name: c1}.values())))
        e0 = Label(Bitmap.from_mask(shrink(m0, 0.92)), c0)
        e1 = Label(Bitmap.from_mask(shrink(m1, 0.88)), c1)
        api.annotation.set(info.id, Annotation((96, 128), (e0, e1)))
        model.predict(image_ids=info.id, upload="iou_merge", settings=S, progress=False)
        ann = api.annotation.get(info.id)
        added = ann.labels[2:]
        assert len(added) == len(p) - 1
        np.testing.assert_array_equal(added[0].geometry.to_mask(96, 128), m1)
        assert all(lab.geometry.geometry_type == "bitmap" for lab in added)
        # a stricter threshold (0.95) keeps the prediction that overlaps at 0.92
        api.annotation.set(info.id, Annotation((96, 128), (e0, e1)))
        model.predict(image_ids=info.id, upload="iou_merge", settings={**S, "iou_merge_threshold": 0.95},
                      progress=False)
        assert len(api.annotation.get(info.id).labels) == 2 + len(p)
    finally:
        model.shutdown()


def test_an_upload_job_id_given_again_on_another_project_is_refused(tiny_model, api, tmp_path):
    a, b = (api.project.create(name) for name in ("first", "second"))
    for project, n in ((a, 1), (b, 2)):
        ds = api.dataset.create(project.id, "ds")
        write_images(tmp_path / project.name, n, size=(40, 50))
        for f in sorted((tmp_path / project.name).iterdir()):
            api.image.upload(ds.id, f.name, str(f))
    tiny_model.predict(project_id=a.id, upload="append", job_id="jobX", settings=S, progress=False)
    with pytest.raises(ValueError, match=rf"job 'jobX' was started on another input \(project_id={a.id}\); this "
                                         rf"run's is project_id={b.id}"):
        tiny_model.predict(project_id=b.id, upload="append", job_id="jobX", settings=S, progress=False)
    assert tiny_model.predict(project_id=a.id, upload="append", job_id="jobX", settings=S,
                              progress=False) == []  # its own input resumes: everything is done


def test_create_from_a_directory_tree(tiny_model, api, tmp_path):
    root = tmp_path / "photos"
    top = write_images(root, 2, seed=1)
    deep = write_images(root / "city" / "night", 1, seed=2)
    preds = tiny_model.predict(input=root, recursive=True, upload="create", settings=S, progress=False)
    project_id = preds[0].target.project_id
    project = api.project.get(project_id)
    assert project.name == "photos" and project.type == "images"
    datasets = {d.id: d for d in api.dataset.list(project_id)}
    paths = {}
    for d in datasets.values():
        parent = datasets.get(d.parent_id)
        paths[d.id] = (parent.name + "/" if parent else "") + d.name
    assert sorted(paths.values()) == ["city", "city/night", "ds0"]
    for p, src in zip(preds, top + deep):
        info = api.image.get(p.target.image_id)
        assert info.name == src.name
        np.testing.assert_array_equal(api.image.download(info.id), read_image_file(str(src)))
        _assert_predicted_labels(api.annotation.get(info.id).labels, p)
    assert paths[api.image.get(preds[-1].target.image_id).dataset_id] == "city/night"


def test_create_from_a_platform_project_mirrors_datasets(tiny_model, api, target, capsys):
    project, ds, infos, _ = target
    preds = tiny_model.predict(project_id=project.id, upload="create", settings=S, progress=False)
    new = api.project.get(preds[0].target.project_id)
    assert new.name == "target (predictions)"
    assert [d.name for d in api.dataset.list(new.id)] == ["ds"]
    for p, info in zip(preds, infos):
        copy = api.image.get(p.target.image_id)
        assert (copy.name, copy.hash) == (info.name, info.hash)
        _assert_predicted_labels(api.annotation.get(copy.id).labels, p)
    # the same name again: a suffixed name is used, and said
    again = tiny_model.predict(project_id=project.id, upload="create", settings=S, progress=False)
    second = api.project.get(again[0].target.project_id)
    assert second.name == "target (predictions) (1)"
    assert "exists already" in capsys.readouterr().err


def test_create_from_loose_inputs(tiny_model, api):
    arrays = [np.full((40, 50, 3), v, np.uint8) for v in (10, 200)]
    preds = tiny_model.predict(input=arrays, upload="create", settings=S, progress=False)
    project = api.project.get(preds[0].target.project_id)
    assert project.name == "Predictions"
    [ds] = api.dataset.list(project.id)
    assert ds.name == "ds0"
    assert [api.image.get(p.target.image_id).name for p in preds] == ["image_000000.png", "image_000001.png"]
    np.testing.assert_array_equal(api.image.download(preds[1].target.image_id), arrays[1])


def test_an_item_whose_upload_fails_is_its_error(tiny_model, api, tmp_path):
    project = api.project.create("shrinking")
    ds = api.dataset.create(project.id, "ds")
    paths = write_images(tmp_path, 30, size=(40, 50))
    infos = [api.image.upload(ds.id, p.name, p) for p in paths]
    session = tiny_model.predict_detached(image_ids=[i.id for i in infos], upload="append", batch_size=1,
                                          settings=S)
    api.image.delete(infos[-1].id)  # deleted after the job listed it, before its upload
    preds = {p.image_id: p for p in session}
    assert "upload failed" in preds[infos[-1].id].error and "does not exist" in preds[infos[-1].id].error
    for info in infos[:-1]:
        assert preds[info.id].error is None
        assert len(api.annotation.get(info.id).labels) == len(preds[info.id])


def test_create_of_a_directory_with_videos_is_refused_before_any_work(tiny_model, api, tmp_path):
    import av

    write_images(tmp_path / "mixed", 1)
    with av.open(str(tmp_path / "mixed" / "clip.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(ValueError, match="directory that holds videos"):
        tiny_model.predict(input=tmp_path / "mixed", upload="create")
    assert api.project.list() == []


def test_create_a_bad_name_fails_that_item_only_and_its_dataset_still_fills(tiny_model, api, tmp_path):
    root = tmp_path / "names"
    bad = write_images(root / "sub", 1, seed=3)[0].rename(root / "sub" / "a\\b.jpg")
    good = write_images(root / "sub", 2, seed=4)  # img_0000.jpg, img_0001.jpg
    other = write_images(root / "zz", 1, seed=5)
    preds = tiny_model.predict(input=root, recursive=True, upload="create", settings=S, progress=False)
    by_name = {p.name: p for p in preds}
    assert "upload failed" in by_name[bad.name].error
    project_id = next(p.target.project_id for p in preds if p.target)
    datasets = {d.id: d.name for d in api.dataset.list(project_id)}
    for path, ds in [(good[0], "sub"), (good[1], "sub"), (other[0], "zz")]:
        p = next(q for q in preds if q.image_path == str(path))
        assert p.error is None and datasets[p.target.dataset_id] == ds
        assert api.image.get(p.target.image_id).dataset_id == p.target.dataset_id


def test_create_from_a_url_that_stops_answering_fails_that_item_only(tiny_model, api, tmp_path, http_server):
    paths = write_images(tmp_path / "www", 2)
    once = http_server.url(paths[0].name, root=tmp_path / "www", prefix="/once/")  # gone when the upload refetches
    ok = http_server.url(paths[1].name, root=tmp_path / "www")
    preds = tiny_model.predict(input=[once, ok], upload="create", settings=S, progress=False)
    assert "upload failed" in preds[0].error and "404" in preds[0].error
    assert preds[1].error is None and preds[1].target is not None


def test_a_confidence_tag_of_another_type_is_refused_before_any_work(tiny_model, api, target):
    project, _, infos, existing = target
    meta = api.project.get_meta(project.id)
    api.project.update_meta(project.id, meta.add_tag_meta(TagMeta("confidence", "any_string")))
    for source in ({"project_id": project.id}, {"image_ids": [infos[0].id]}):
        with pytest.raises(ValueError, match="defines the tag 'confidence' as any_string"):
            tiny_model.predict(**source, upload="append", settings=S, progress=False)
    assert api.annotation.get(infos[0].id) == existing[infos[0].id]  # nothing written
