"""Video uploads: create / append / replace / iou_merge into platform video annotations, read back; resume after a
crash without duplicates; the `<name>_nn` rule; export and import of what was written. The merge rules themselves
are table-tested first: on `merge_video_annotation` (pure, the whole annotation) and through `write_frames` on
the platform's rows, which the upload uses and which must give the same annotation reading only the predicted
frames."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workers"))  # the shared video writers
from test_video_decode import truncate, write_video  # noqa: E402

import pipeline.annotation  # noqa: E402
from pipeline.annotation import (  # noqa: E402
    CONFIDENCE_TAG,
    Bitmap,
    Label,
    ObjClass,
    ProjectMeta,
    Rectangle,
    Tag,
    TagMeta,
    VideoAnnotation,
    VideoFigure,
    VideoObject,
)
from pipeline.exceptions import FormatError, RunError  # noqa: E402
from pipeline.platform import Platform, ops, video_rows  # noqa: E402
from pipeline.prediction import Item, Prediction  # noqa: E402
from pipeline.stages.upload.merge import (  # noqa: E402
    labels_to_video,
    merge_video_annotation,
    stored_labels,
)
from pipeline.stages.upload.videos import VideoTarget, write_frames  # noqa: E402

IMG = 64
SETTINGS = {"conf": 0.0, "max_det": 3}  # three objects on every frame: small annotations, never empty

A, B = ObjClass("a", "rectangle"), ObjClass("b", "rectangle")


def _box(x1, y1, x2, y2) -> Rectangle:
    return Rectangle.from_xyxy(x1, y1, x2, y2)


def _current() -> VideoAnnotation:
    """Frame 0: object `multi` (class a) and `only0` (class b); frame 1: `multi` again and `only1` (class a);
    object `bare` has no figure at all."""
    multi, only0, only1, bare = (VideoObject(A, key="m" * 32), VideoObject(B, key="0" * 32),
                                 VideoObject(A, key="1" * 32), VideoObject(B, key="b" * 32))
    figs = [VideoFigure(multi, _box(0, 0, 10, 10), 0), VideoFigure(only0, _box(20, 20, 30, 30), 0),
            VideoFigure(multi, _box(1, 1, 11, 11), 1), VideoFigure(only1, _box(40, 0, 60, 20), 1)]
    return VideoAnnotation((48, 64), 10, (multi, only0, only1, bare)).add_figures(figs)


def _pred(cls, box, score=0.5) -> Label:
    return Label(_box(*box), cls, (Tag(CONFIDENCE_TAG, score),))


def _summary(ann: VideoAnnotation) -> dict[int, list[tuple[str, tuple]]]:
    return {fr.index: sorted((f.video_object.obj_class.name, tuple(round(v) for v in f.geometry.to_xyxy()))
                             for f in fr.figures) for fr in ann.frames}


# (mode, predicted {frame: labels}, expected figures per frame, expected object keys kept from `_current`)
MERGE_TABLE = [
    ("append", {1: [_pred(A, (1, 1, 11, 11))], 2: [_pred(B, (5, 5, 9, 9))]},
     {0: [("a", (0, 0, 10, 10)), ("b", (20, 20, 30, 30))],
      1: [("a", (1, 1, 11, 11)), ("a", (1, 1, 11, 11)), ("a", (40, 0, 60, 20))],
      2: [("b", (5, 5, 9, 9))]},
     {"m", "0", "1", "b"}),
    # replace: frame 1's figures go; `only1` had no other figure so it goes too; `multi` keeps frame 0; `bare` stays
    ("replace", {1: [_pred(B, (2, 2, 8, 8))]},
     {0: [("a", (0, 0, 10, 10)), ("b", (20, 20, 30, 30))], 1: [("b", (2, 2, 8, 8))]},
     {"m", "0", "b"}),
    ("replace", {1: []},  # an empty prediction clears the frame
     {0: [("a", (0, 0, 10, 10)), ("b", (20, 20, 30, 30))]},
     {"m", "0", "b"}),
    # iou_merge: the same box of the same class is dropped; the same box of another class, or a far box, is kept
    ("iou_merge", {1: [_pred(A, (1, 1, 11, 11)), _pred(B, (1, 1, 11, 11)), _pred(A, (30, 30, 40, 40))],
                   0: [_pred(B, (20, 20, 30, 31))]},
     {0: [("a", (0, 0, 10, 10)), ("b", (20, 20, 30, 30))],
      1: [("a", (1, 1, 11, 11)), ("a", (30, 30, 40, 40)), ("a", (40, 0, 60, 20)), ("b", (1, 1, 11, 11))]},
     {"m", "0", "1", "b"}),
    ("create", {3: [_pred(A, (0, 0, 5, 5))]},
     {0: [("a", (0, 0, 10, 10)), ("b", (20, 20, 30, 30))],
      1: [("a", (1, 1, 11, 11)), ("a", (40, 0, 60, 20))], 3: [("a", (0, 0, 5, 5))]},
     {"m", "0", "1", "b"}),
]


@pytest.mark.parametrize("mode,predicted,figures,kept", MERGE_TABLE, ids=[f"{m}-{i}" for i, (m, *_) in
                                                                          enumerate(MERGE_TABLE)])
def test_merge_video_annotation(mode, predicted, figures, kept):
    before = _current()
    after = merge_video_annotation(mode, before, predicted, 0.9)
    assert _summary(after) == figures
    old_keys = {o.key[0] for o in after.objects if o.key in {x.key for x in before.objects}}
    assert old_keys == kept
    new = [o for o in after.objects if o.key not in {x.key for x in before.objects}]
    assert len(new) == len(after.figures) - sum(1 for f in after.figures if f.video_object.key in
                                                {x.key for x in before.objects})  # one object per new figure
    assert _summary(before) == _summary(_current())  # immutable: the input is untouched


def _platform_video(tmp_path, ann: VideoAnnotation) -> tuple[Platform, Any]:
    """A platform video (no file) holding `ann`, its classes and the confidence tag in the meta."""
    platform = Platform(tmp_path / "platform")
    project = platform.project.create("rows", type="videos")
    ds = platform.dataset.create(project.id, "ds0")
    with platform.store.write() as conn:
        video_id = ops.insert_video(conn, ds.id, "v.mp4", ann.frames_count, 30.0, ann.img_size[1], ann.img_size[0],
                                    "0" * 64, 0, "mp4")
    platform.project.merge_meta(project.id, ProjectMeta((A, B), (CONFIDENCE_TAG,), "videos"))
    platform.video.set_annotation(video_id, ann)
    with platform.store.read() as conn:
        return platform, ops.get_video_row(conn, video_id)


@pytest.mark.parametrize("mode,predicted,figures,kept", MERGE_TABLE, ids=[f"{m}-{i}" for i, (m, *_) in
                                                                          enumerate(MERGE_TABLE)])
def test_write_frames_on_rows(tmp_path, mode, predicted, figures, kept):
    """The same table written into the platform's rows: the same figures and objects as `merge_video_annotation`,
    every stored object and figure that stays is the very JSON that was stored, and the objects count follows."""
    platform, row = _platform_video(tmp_path, _current())
    before = platform.video.get_annotation(row["id"]).to_json()
    with platform.store.write() as conn:
        meta = ops.get_meta(conn, row["project_id"])
        write_frames(conn, row, mode, {f: [(lab, -1, 0.5) for lab in labs] for f, labs in predicted.items()}, meta,
                     0.9, "job")
    after = platform.video.get_annotation(row["id"])
    assert _summary(after) == figures
    assert {o.key[0] for o in after.objects if o.key in {x["key"] for x in before["objects"]}} == kept
    data = after.to_json()
    old_figures = [f for fr in before["frames"] for f in fr["figures"]]
    assert all(f in old_figures for fr in data["frames"] for f in fr["figures"] if f["key"] in
               {g["key"] for g in old_figures})
    assert [fr["index"] for fr in data["frames"]] == sorted(fr["index"] for fr in data["frames"])
    assert (data["key"], data["size"], data["framesCount"]) == (before["key"], before["size"], before["framesCount"])
    reference = merge_video_annotation(mode, _current(), predicted, 0.9)
    assert len(after.objects) == len(reference.objects) and _summary(after) == _summary(reference)
    assert platform.project.stats(row["project_id"])["objects"] == len(after.objects)


def test_iou_merge_decodes_only_the_predicted_frames(tmp_path, monkeypatch):
    platform, row = _platform_video(tmp_path, _current())
    with platform.store.write() as conn:  # a figure that cannot be decoded, on frame 7
        video_rows.add_figures(conn, row["id"], [(7, {"key": "f" * 32, "objectKey": "b" * 32, "geometryType": "bitmap",
                                                      "geometry": {"bitmap": {"data": "not a png", "origin": [0, 0]}}})])
    decoded = []
    real = pipeline.annotation.geometry_from_json

    def counting(geometry_type, geometry, where="geometry"):
        decoded.append(where)
        return real(geometry_type, geometry, where)

    monkeypatch.setattr(pipeline.annotation, "geometry_from_json", counting)
    with platform.store.write() as conn:
        meta = ops.get_meta(conn, row["project_id"])
        rows = video_rows.figures_on_frames(conn, row["id"], [1])
        assert [lab.obj_class.name for lab in stored_labels(rows)[1]] == ["a", "a"]
        assert len(decoded) == 2  # frame 1's two figures; frame 0's and frame 7's (an unreadable bitmap) never
        decoded.clear()
        write_frames(conn, row, "iou_merge", {1: [(_pred(A, (1, 1, 11, 11)), -1, 0.5),
                                                  (_pred(A, (30, 30, 40, 40)), -1, 0.5)]}, meta)
        assert len(decoded) == 2  # the same box is dropped, the other one kept
        with pytest.raises(FormatError, match="frame 7"):  # the stored figure is decoded once its frame is predicted
            write_frames(conn, row, "iou_merge", {7: [(_pred(B, (0, 0, 4, 4)), -1, 0.5)]}, meta)
    monkeypatch.undo()
    with platform.store.read() as conn:
        assert len(video_rows.figures_on_frames(conn, row["id"], [1])[1]) == 3


def test_labels_become_one_object_each_with_a_frame_confidence_tag():
    objects, figures = labels_to_video(7, [_pred(A, (0, 0, 4, 4), 0.75), _pred(A, (1, 1, 5, 5), 0.5)])
    assert len({o.key for o in objects}) == 2
    assert [f.frame_index for f in figures] == [7, 7]
    assert [f.video_object for f in figures] == objects
    tag = objects[0].tags[0]
    assert (tag.name, tag.value, tag.frame_range) == ("confidence", 0.75, (7, 7))
    assert objects[0].to_json()["tags"][0]["frameRange"] == [7, 7]


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="unknown upload mode"):
        merge_video_annotation("merge", _current(), {}, 0.9)


# ------------------------------------------------------------------------------------------- on the platform


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("upload") / "street.mp4", 24)


def _figures_by_frame(ann: VideoAnnotation) -> dict[int, list[tuple]]:
    return {fr.index: sorted(tuple(round(v, 2) for v in f.geometry.to_xyxy()) for f in fr.figures)
            for fr in ann.frames}


def _pred_boxes(preds) -> dict[int, list[tuple]]:
    return {p.frame_idx: sorted(tuple(round(float(v), 2) for v in b) for b in p.boxes) for p in preds if len(p)}


def test_create_from_a_video_file(tiny_model, api, clip, capfd):
    preds = tiny_model.predict(input=str(clip), video_params={"stride": 4}, upload="create", img_size=IMG,
                               settings=SETTINGS, progress=False)
    assert "create into new project" in capfd.readouterr().err
    assert [p.frame_idx for p in preds] == list(range(0, 24, 4))
    (project,) = api.project.list()
    assert (project.name, project.type) == ("street", "videos")
    (ds,) = api.dataset.list(project.id)
    (video,) = api.video.list(ds.id)
    assert (video.name, video.frames_count, video.width, video.height) == ("street.mp4", 24, 64, 48)
    assert video.hash == hashlib.sha256(clip.read_bytes()).hexdigest()  # the file itself is stored
    assert all(p.target.video_id == video.id and p.target.frame_idx == p.frame_idx for p in preds)
    ann = api.video.get_annotation(video.id)
    assert _figures_by_frame(ann) == _pred_boxes(preds)
    assert len(ann.objects) == len(ann.figures) == sum(len(p) for p in preds) == 3 * 6  # no tracking
    scores = sorted(round(float(s), 4) for p in preds for s in p.scores)
    assert sorted(o.tags[0].value for o in ann.objects) == scores
    for obj in ann.objects:
        (fig,) = [f for f in ann.figures if f.video_object.key == obj.key]
        assert obj.tags[0].to_json()["frameRange"] == [fig.frame_index, fig.frame_index]
    meta = api.project.get_meta(project.id)
    assert {c.name for c in meta.obj_classes} == {c for p in preds for c in p.classes}
    assert meta.get_tag_meta("confidence") is not None


def test_a_mask_model_uploads_the_frames_where_it_found_nothing(ray_session, api, tiny_mask_checkpoint, clip):
    """A frame without objects has masks of shape (0, H, W): its upload writes no figure (it used to fail the
    whole run: `reshape(0, -1)`)."""
    model = api.nn.deploy(str(tiny_mask_checkpoint), device="cpu")
    try:
        preds = model.predict(input=str(clip), video_params={"stride": 6}, upload="create", settings={"conf": 1.0},
                              progress=False)
    finally:
        model.shutdown()
    assert [p.frame_idx for p in preds] == [0, 6, 12, 18]
    assert all(p.error is None and p.target is not None and p.masks.shape == (0, 48, 64) for p in preds)
    ann = api.video.get_annotation(preds[0].target.video_id)
    assert (len(ann.objects), len(ann.figures)) == (0, 0)


def test_export_and_import_round_trip(tiny_model, api, clip, tmp_path):
    preds = tiny_model.predict(input=str(clip), video_params={"num_frames": 3}, upload="create", img_size=IMG,
                               settings=SETTINGS, progress=False)
    pid = preds[0].target.project_id
    api.project.export_dir(pid, tmp_path / "out")
    assert (tmp_path / "out" / "ds0" / "video" / "street.mp4").read_bytes() == clip.read_bytes()
    new_pid = api.project.import_dir(tmp_path / "out")
    (ds,) = api.dataset.list(new_pid)
    (video,) = api.video.list(ds.id)
    before = api.video.get_annotation(preds[0].target.video_id)
    after = api.video.get_annotation(video.id)
    assert after.to_json() == before.to_json()


def test_create_from_a_platform_video_shares_its_blob(tiny_model, api, clip):
    src = api.project.create("traffic", type="videos")
    ds = api.dataset.create(src.id, "cams")
    info = api.video.upload(ds.id, "cam1.mp4", clip)
    preds = tiny_model.predict(video_id=info.id, video_params={"end_frame": 3}, upload="create", img_size=IMG,
                               settings=SETTINGS, progress=False)
    target = preds[0].target
    assert api.project.get(target.project_id).name == "traffic (predictions)"
    assert api.dataset.list(target.project_id)[0].name == "cams"  # datasets mirrored
    copy = api.video.get(target.video_id)
    assert (copy.name, copy.hash, copy.path) == ("cam1.mp4", info.hash, info.path)
    assert _figures_by_frame(api.video.get_annotation(copy.id)) == _pred_boxes(preds)
    assert len(api.video.get_annotation(info.id).figures) == 0  # the source is untouched


@pytest.fixture
def annotated(api, clip):
    """A platform video with a human figure of class `a` on frames 0 and 5 (one object), and the class `b` as a
    bitmap class in the meta (so predicted `b` boxes must go to `b_nn`)."""
    from pipeline.annotation import ProjectMeta

    project = api.project.create("labelled", type="videos")
    ds = api.dataset.create(project.id, "ds0")
    info = api.video.upload(ds.id, "street.mp4", clip)
    api.project.merge_meta(project.id, ProjectMeta((A, ObjClass("b", "bitmap")), (CONFIDENCE_TAG,), "videos"))
    obj = VideoObject(A)
    ann = VideoAnnotation((48, 64), 24, (obj,)).add_figures(
        [VideoFigure(obj, _box(2, 2, 20, 20), 0), VideoFigure(obj, _box(3, 3, 21, 21), 5)])
    api.video.set_annotation(info.id, ann)
    return info


def test_append_keeps_what_was_there(tiny_model, api, annotated):
    preds = tiny_model.predict(video_id=annotated.id, video_params={"stride": 5}, upload="append", img_size=IMG,
                               settings=SETTINGS, progress=False)
    ann = api.video.get_annotation(annotated.id)
    got = _figures_by_frame(ann)
    want = _pred_boxes(preds)
    want[0] = sorted(want[0] + [(2.0, 2.0, 20.0, 20.0)])
    want[5] = sorted(want[5] + [(3.0, 3.0, 21.0, 21.0)])
    assert got == want
    assert len(ann.objects) == 1 + sum(len(p) for p in preds)
    classes = {f.video_object.obj_class.name for f in ann.figures if f.frame_index == 10}
    assert classes <= {"a", "b_nn", "c"}  # `b` is a bitmap class here: predicted boxes go to b_nn
    if any("b" in p.classes for p in preds):
        assert api.project.get_meta(annotated.project_id).get_obj_class("b_nn").shape == "rectangle"


def test_replace_only_touches_predicted_frames(tiny_model, api, annotated):
    preds = tiny_model.predict(video_id=annotated.id, video_params={"start_frame": 5, "end_frame": 8},
                               upload="replace", img_size=IMG, settings=SETTINGS, progress=False)
    ann = api.video.get_annotation(annotated.id)
    want = _pred_boxes(preds)
    want[0] = [(2.0, 2.0, 20.0, 20.0)]  # frame 0 was not predicted: the human figure stays
    assert _figures_by_frame(ann) == want  # frame 5's human figure is gone
    assert len(ann.objects) == 1 + 3 * 3  # the human object lives on through frame 0


def test_iou_merge_drops_what_is_already_there(tiny_model, api, annotated):
    params = {"stride": 6}
    first = tiny_model.predict(video_id=annotated.id, video_params=params, upload="append", img_size=IMG,
                               settings=SETTINGS, progress=False)
    before = api.video.get_annotation(annotated.id)
    again = tiny_model.predict(video_id=annotated.id, video_params=params, upload="iou_merge", img_size=IMG,
                               settings=SETTINGS, progress=False)
    after = api.video.get_annotation(annotated.id)
    assert [p.error for p in again] == [None] * len(first)
    assert _figures_by_frame(after) == _figures_by_frame(before)  # every prediction is already there: IoU 1.0
    assert len(after.objects) == len(before.objects)
    # on frames that had only the human figure, nothing predicted is dropped (no overlap of the same class >= 0.9)
    other = tiny_model.predict(video_id=annotated.id, video_params={"start_frame": 1, "end_frame": 3},
                               upload="iou_merge", img_size=IMG, settings=SETTINGS, progress=False)
    assert _figures_by_frame(api.video.get_annotation(annotated.id)) == {**_figures_by_frame(after),
                                                                         **_pred_boxes(other)}


def test_resume_after_a_crash_neither_loses_nor_duplicates(tiny_model, api, annotated, monkeypatch):
    params = {"end_frame": 16}
    clean = tiny_model.predict(video_id=annotated.id, video_params=params, img_size=IMG, settings=SETTINGS,
                               progress=False)
    calls = {"n": 0}
    real_write = VideoTarget.write

    def crash_on_second_group(self, preds):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash: the process died here")
        return real_write(self, preds)

    monkeypatch.setattr(VideoTarget, "write", crash_on_second_group)
    with pytest.raises(RunError, match="simulated crash"):
        tiny_model.predict(video_id=annotated.id, video_params=params, upload="append", img_size=IMG,
                           settings=SETTINGS, batch_size=2, job_id="video-resume", progress=False)
    partial = api.video.get_annotation(annotated.id)
    done_frames = {fr.index for fr in partial.frames} - {0, 5}
    assert 0 < len(partial.figures) - 2 < 3 * 16  # the first group was written, not everything
    monkeypatch.setattr(VideoTarget, "write", real_write)

    rest = tiny_model.predict(video_id=annotated.id, video_params=params, upload="append", img_size=IMG,
                              settings=SETTINGS, batch_size=2, job_id="video-resume", progress=False)
    assert {p.frame_idx for p in rest}.isdisjoint(done_frames)  # the done frames were skipped
    ann = api.video.get_annotation(annotated.id)
    want = _pred_boxes(clean)
    want[0] = sorted(want[0] + [(2.0, 2.0, 20.0, 20.0)])
    want[5] = sorted(want[5] + [(3.0, 3.0, 21.0, 21.0)])
    assert _figures_by_frame(ann) == want  # every frame once: nothing lost, nothing twice
    assert len(ann.objects) == 1 + 3 * 16
    # and a third run of the same job has nothing left to do
    assert tiny_model.predict(video_id=annotated.id, video_params=params, upload="append", img_size=IMG,
                              settings=SETTINGS, job_id="video-resume", progress=False) == []
    assert len(api.video.get_annotation(annotated.id).figures) == len(ann.figures)


def test_resume_create_reuses_the_video_it_made(tiny_model, api, clip, monkeypatch):
    calls = {"n": 0}
    real_write = VideoTarget.write

    def crash(self, preds):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real_write(self, preds)

    monkeypatch.setattr(VideoTarget, "write", crash)
    with pytest.raises(RunError):
        tiny_model.predict(input=str(clip), upload="create", img_size=IMG, settings=SETTINGS, batch_size=2,
                           job_id="create-resume", progress=False)
    monkeypatch.setattr(VideoTarget, "write", real_write)
    tiny_model.predict(input=str(clip), upload="create", img_size=IMG, settings=SETTINGS, batch_size=2,
                       job_id="create-resume", progress=False)
    (project,) = api.project.list()
    (ds,) = api.dataset.list(project.id)
    (video,) = api.video.list(ds.id)  # one video, not one per run
    ann = api.video.get_annotation(video.id)
    assert sorted(fr.index for fr in ann.frames) == list(range(24))
    assert len(ann.figures) == 3 * 24


def test_truncated_video_uploads_the_frames_before_the_break(tiny_model, api, data_dir, tmp_path):
    cut = truncate(write_video(tmp_path / "whole.mkv", 60, "mkv_mpeg4_bframes"), tmp_path / "cut.mkv", 0.6)
    preds = tiny_model.predict(input=str(cut), upload="create", img_size=IMG, settings=SETTINGS, progress=False)
    ok = [p for p in preds if p.error is None]
    failed = [p for p in preds if p.error is not None]
    assert ok and failed and all(p.target is None for p in failed)
    ann = api.video.get_annotation(ok[0].target.video_id)
    assert sorted(fr.index for fr in ann.frames) == [p.frame_idx for p in ok]
    assert np.all([p.target.frame_idx == p.frame_idx for p in ok])
    # the viewer shows the failed frames on the video the job made (their keys name the file, not the video)
    from fastapi.testclient import TestClient

    from pipeline.viewer import create_app

    client = TestClient(create_app(data_dir), base_url="http://127.0.0.1:8000")
    video_id = ok[0].target.video_id
    shown = client.get(f"/api/videos/{video_id}").json()["errors"]
    keys = {f"frame:{cut}:{p.frame_idx}" for p in failed}
    assert len(shown) == min(20, len(failed)) and {e["item_key"] for e in shown} <= keys  # the 20 newest
    assert {e["video_id"] for e in shown} == {video_id}
    (job,) = client.get("/api/runs").json()["runs"]
    logged = client.get(f"/api/runs/{job['id']}/errors").json()["errors"]
    assert len(logged) == len(failed) and {e["video_id"] for e in logged} == {video_id}


# ------------------------------------------------------- the write itself, on a platform video (no model needed)


@pytest.fixture
def stored(tmp_path):
    """(platform, video id): a 24-frame video whose annotation has a box of class `a` on frames 0 and 5 and a
    bitmap of class `m` on frame 3; the meta has those classes and the confidence tag."""
    from pipeline.platform import Platform, ops

    platform = Platform(tmp_path / "platform")
    project = platform.project.create("labelled", type="videos")
    ds = platform.dataset.create(project.id, "ds0")
    with platform.store.write() as conn:
        video_id = ops.insert_video(conn, ds.id, "street.mp4", 24, 30.0, 64, 48, "0" * 64, 0, "mp4")
    mask_cls = ObjClass("m", "bitmap")
    platform.project.merge_meta(project.id, ProjectMeta((A, mask_cls), (CONFIDENCE_TAG,), "videos"))
    obj, blob = VideoObject(A), VideoObject(mask_cls)
    mask = np.zeros((48, 64), bool)
    mask[10:20, 5:30] = True
    ann = VideoAnnotation((48, 64), 24, (obj, blob)).add_figures(
        [VideoFigure(obj, _box(2, 2, 20, 20), 0), VideoFigure(obj, _box(3, 3, 21, 21), 5),
         VideoFigure(blob, Bitmap.from_mask(mask), 3)])
    platform.video.set_annotation(video_id, ann)
    return platform, video_id


def _target(platform, mode: str) -> VideoTarget:
    return VideoTarget(SimpleNamespace(upload=mode, settings={}, job_id=None),
                       SimpleNamespace(name="street", project_type="videos", description="video"),
                       platform, SimpleNamespace(spec=SimpleNamespace(task_type="detection")))


def _frame_pred(video_id: int, frame: int, *boxes) -> Prediction:
    item = Item(index=frame, key=f"video:{video_id}:{frame}", name="v", video_id=video_id, frame_idx=frame)
    return Prediction(boxes=list(boxes), scores=[0.75] * len(boxes), class_ids=[0] * len(boxes),
                      classes=["a"] * len(boxes), item=item, orig_size=(48, 64))


def _boxes(ann: VideoAnnotation) -> dict[int, list[tuple]]:
    return {fr.index: sorted(tuple(round(v, 2) for v in f.geometry.to_bbox().to_xyxy()) for f in fr.figures)
            for fr in ann.frames}


def _row(platform, video_id: int):
    """(the stored annotation JSON, its objects count, its last change)."""
    with platform.store.read() as conn:
        row = conn.execute("SELECT objects_count, updated_at FROM video_annotations WHERE video_id = ?",
                           (video_id,)).fetchone()
        return json.loads(ops.get_video_annotation_text(conn, video_id)), row["objects_count"], row["updated_at"]


def test_append_keeps_the_stored_rows_as_they_are(stored, monkeypatch):
    platform, video_id = stored
    before, _, _ = _row(platform, video_id)

    def no_decoding(*args, **kwargs):
        raise AssertionError("the stored annotation was decoded")

    monkeypatch.setattr(VideoAnnotation, "from_json", no_decoding)
    monkeypatch.setattr(Bitmap, "from_json", no_decoding)
    preds = [_frame_pred(video_id, 3, (1, 1, 9, 9)), _frame_pred(video_id, 7, (4, 4, 12, 12), (30, 5, 50, 25))]
    preds = _target(platform, "append").write(preds)
    monkeypatch.undo()
    assert [p.error for p in preds] == [None, None] and all(p.target.video_id == video_id for p in preds)
    after, count, _ = _row(platform, video_id)
    assert after["objects"][:2] == before["objects"] and count == len(after["objects"]) == 2 + 3
    frames = {fr["index"]: fr["figures"] for fr in after["frames"]}
    assert sorted(frames) == [0, 3, 5, 7]
    assert frames[3][0] == before["frames"][1]["figures"][0]  # the stored bitmap, as it was
    assert _boxes(platform.video.get_annotation(video_id)) == {
        0: [(2.0, 2.0, 20.0, 20.0)], 3: [(1.0, 1.0, 9.0, 9.0), (5.0, 10.0, 30.0, 20.0)], 5: [(3.0, 3.0, 21.0, 21.0)],
        7: [(4.0, 4.0, 12.0, 12.0), (30.0, 5.0, 50.0, 25.0)]}


def test_replace_and_iou_merge_write_the_rows(stored):
    platform, video_id = stored
    _target(platform, "replace").write([_frame_pred(video_id, 5, (6, 6, 16, 16)), _frame_pred(video_id, 3)])
    ann = platform.video.get_annotation(video_id)
    assert _boxes(ann) == {0: [(2.0, 2.0, 20.0, 20.0)], 5: [(6.0, 6.0, 16.0, 16.0)]}
    assert len(ann.objects) == 2  # `a` lives on through frame 0; the bitmap's object went with frame 3
    preds = [_frame_pred(video_id, 0, (2, 2, 20, 20)), _frame_pred(video_id, 5, (6, 6, 16, 16))]
    _, _, stamp = _row(platform, video_id)
    _target(platform, "iou_merge").write(preds)
    assert [p.error for p in preds] == [None, None]
    assert _row(platform, video_id)[2] == stamp  # everything already there: nothing to write
    assert _boxes(platform.video.get_annotation(video_id)) == _boxes(ann)


def test_new_objects_are_checked_against_the_video_and_the_meta(stored):
    platform, video_id = stored
    before = _row(platform, video_id)
    target = _target(platform, "append")
    past = [_frame_pred(video_id, 23, (1, 1, 5, 5)), _frame_pred(video_id, 24, (1, 1, 5, 5))]
    past = target.write(past)
    assert past[0].error and "frame 24" in past[1].error and "has 24" in past[1].error  # the video's frames fail
    meta = platform.project.get_meta(platform.video.get(video_id).project_id)
    platform.project.update_meta(platform.video.get(video_id).project_id, ProjectMeta(
        meta.obj_classes, (TagMeta("confidence", "any_string"),), "videos"))
    wrong_tag = [_frame_pred(video_id, 1, (1, 1, 5, 5))]
    wrong_tag = target.write(wrong_tag)
    assert "confidence" in wrong_tag[0].error
    assert _row(platform, video_id) == before  # nothing written
    with platform.store.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM upload_job_items WHERE job_id = ?", (target.job_id,)).fetchone()[0] == 0


def _tag(name: str, value, frames) -> dict:
    return {"name": name, "value": value, "key": f"{name}{frames}", **({"frameRange": list(frames)} if frames else {})}


@pytest.mark.parametrize("mode, expected", [
    # replace: "cat" on frame 1 alone is replaced; the range tag and the whole-video tag stay, "dog" is added
    ("replace", [_tag("cat", 0.5, (0, 9)), _tag("scene", None, None), _tag("cat", 0.9, (1, 1)), _tag("dog", 0.8, (2, 2)),
                 _tag("cat", 0.7, (12, 12))]),
    # append: "cat" already covers frames 1 and 2 (the range); frame 12's is new; "dog" is new on frame 2
    ("append", [_tag("cat", 0.5, (0, 9)), _tag("cat", 0.1, (1, 1)), _tag("scene", None, None), _tag("dog", 0.8, (2, 2)),
                _tag("cat", 0.7, (12, 12))]),
])
def test_frame_tags_combine_with_the_video_s_tags_per_frame(mode, expected):
    from pipeline.stages.upload.videos import frame_tags

    current = [_tag("cat", 0.5, (0, 9)), _tag("cat", 0.1, (1, 1)), _tag("scene", None, None)]
    predicted = {1: [_tag("cat", 0.9, (1, 1))], 2: [_tag("dog", 0.8, (2, 2))], 12: [_tag("cat", 0.7, (12, 12))]}
    assert sorted(map(json.dumps, frame_tags(mode, current, predicted))) == sorted(map(json.dumps, expected))
    assert sorted(map(json.dumps, frame_tags("iou_merge", current, predicted))) == \
        sorted(map(json.dumps, frame_tags("append", current, predicted)))
