"""The embedded platform: records, uploads, annotations, transactions, errors and concurrent writers."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.annotation import (
    CONFIDENCE_TAG,
    Annotation,
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
from pipeline.exceptions import FormatError, InvalidArgumentError, NotFoundError, PipelineError
from pipeline.platform import DatasetInfo, ImageInfo, Platform, ProjectInfo, VideoInfo, ops
from pipeline.platform.store import SCHEMA_VERSION

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CLIP = FIXTURES / "sly_video_project" / "ds0" / "video" / "clip.mp4"  # 8 frames, 10 fps, 32 x 24


@pytest.fixture
def platform(tmp_path) -> Platform:
    return Platform(tmp_path / "data")


@pytest.fixture
def dataset(platform) -> DatasetInfo:
    project = platform.project.create("p")
    return platform.dataset.create(project.id, "ds")


def png_bytes(h: int = 12, w: int = 16, value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def box_ann(h: int = 12, w: int = 16, name: str = "car") -> Annotation:
    return Annotation((h, w), [Label(Rectangle.from_xyxy(1, 1, 5, 5), ObjClass(name, "rectangle"),
                                     [Tag(CONFIDENCE_TAG, 0.8)])])


# --------------------------------------------------------------------------------------------------------- store


def test_platform_is_lazy_and_the_database_is_set_up_on_first_use(tmp_path):
    data = tmp_path / "data"
    platform = Platform(data)
    assert not data.exists()
    assert platform.project.list() == []
    conn = platform.store.connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 10000
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION == 3
    assert (data / "platform.db").exists()
    plan = conn.execute("EXPLAIN QUERY PLAN SELECT * FROM images WHERE dataset_id = 1 AND id > 0 ORDER BY id LIMIT 5")
    assert "images_dataset" in " ".join(str(tuple(r)) for r in plan)  # pages of a dataset walk an index


def test_an_older_database_is_migrated(tmp_path):
    data = tmp_path / "data"
    Platform(data).project.create("old")
    with sqlite3.connect(data / "platform.db") as conn:  # make it look like a version-1 database
        conn.execute("DROP INDEX images_dataset")
        conn.execute("DELETE FROM schema_version WHERE version >= 2")
    platform = Platform(data)
    assert [p.name for p in platform.project.list()] == ["old"]
    conn = platform.store.connection()
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 3
    assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'images_dataset'").fetchone()
    with sqlite3.connect(data / "platform.db") as raw:
        raw.execute("INSERT INTO schema_version (version) VALUES (99)")
    with pytest.raises(PipelineError, match="upgrade the package"):
        Platform(data).project.list()


def test_a_version_2_video_annotation_is_split_into_rows(tmp_path):
    """Version 2 stored a video annotation as one JSON row; version 3 keeps its objects and figures in rows of
    their own. The migration splits what is there and the annotation reads back as it was: objects in order,
    frames by index (figures in order), a frame's own keys, a frame listed without figures, a keyless object."""
    data = tmp_path / "data"
    platform = Platform(data)
    project = platform.project.create("v", type="videos")
    ds = platform.dataset.create(project.id, "ds0")
    with platform.store.write() as conn:
        video_id = ops.insert_video(conn, ds.id, "v.mp4", 10, 30.0, 64, 48, "0" * 64, 0, "mp4")
    rect = {"geometryType": "rectangle", "geometry": {"points": {"exterior": [[1, 2], [5, 6]], "interior": []}}}
    old = {"size": {"height": 48, "width": 64}, "description": "d", "key": "k" * 32, "tags": [], "framesCount": 10,
           "custom": 1,
           "objects": [{"key": "b" * 32, "classTitle": "x", "tags": []}, {"key": "a" * 32, "classTitle": "y", "tags": []},
                       {"classTitle": "x", "tags": []}],
           "frames": [{"index": 4, "figures": [{"key": "4" * 32, "objectKey": "a" * 32, **rect}], "note": "n"},
                      {"index": 2, "figures": [{"key": "2" * 32, "objectKey": "b" * 32, **rect},
                                               {"key": "3" * 32, "objectKey": "a" * 32, **rect}]},
                      {"index": 6, "figures": []}]}
    with sqlite3.connect(data / "platform.db") as conn:  # back to version 2, the annotation in one row
        conn.execute("DROP TABLE video_figures")
        conn.execute("DROP TABLE video_objects")
        conn.execute("DELETE FROM schema_version WHERE version = 3")
        conn.execute("INSERT INTO video_annotations VALUES (?, ?, 3, 'now')", (video_id, json.dumps(old)))
    platform = Platform(data)
    got = json.loads(ops.get_video_annotation_text(platform.store.connection(), video_id))
    keyless = got["objects"][2].pop("key")
    assert len(keyless) == 32 and got["objects"] == old["objects"]
    assert [fr["index"] for fr in got["frames"]] == [2, 4, 6]
    assert got["frames"][0] == old["frames"][1] and got["frames"][1] == old["frames"][0]
    assert got["frames"][2] == old["frames"][2]
    assert {k: v for k, v in got.items() if k not in ("objects", "frames")} == \
        {k: v for k, v in old.items() if k not in ("objects", "frames")}
    assert platform.project.stats(project.id)["objects"] == 3
    conn = platform.store.connection()
    assert conn.execute("SELECT COUNT(*) FROM video_figures WHERE video_id = ?", (video_id,)).fetchone()[0] == 3
    platform.video.delete(video_id)  # rows go with their video
    assert conn.execute("SELECT COUNT(*) FROM video_objects").fetchone()[0] == 0


def test_write_is_one_transaction_and_composes_with_ops(platform, dataset):
    tmp_image = platform.image.upload(dataset.id, "a.png", png_bytes())
    with pytest.raises(RuntimeError):
        with platform.store.write() as conn:
            ops.set_annotation(conn, tmp_image.id, box_ann(), add_to_meta=True)
            ops.insert_dataset(conn, dataset.project_id, "other")
            raise RuntimeError("boom")
    assert platform.annotation.get(tmp_image.id).labels == ()
    assert platform.project.get_meta(dataset.project_id).obj_classes == ()
    assert [d.name for d in platform.dataset.list(dataset.project_id)] == ["ds"]
    with platform.store.write() as conn:
        ops.set_annotation(conn, tmp_image.id, box_ann(), add_to_meta=True)
        with pytest.raises(InvalidArgumentError):
            with platform.store.write():  # nested: a savepoint, rolled back alone
                ops.insert_dataset(conn, dataset.project_id, "inner")
                ops.insert_dataset(conn, dataset.project_id, "inner")
    assert len(platform.annotation.get(tmp_image.id).labels) == 1
    assert [d.name for d in platform.dataset.list(dataset.project_id)] == ["ds"]


def test_a_corrupt_database_is_a_format_error_not_a_sqlite_error(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "platform.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(FormatError, match="platform.db") as info:
        Platform(data).project.list()
    assert not isinstance(info.value, sqlite3.Error)


# ------------------------------------------------------------------------------------------- projects, datasets


def test_projects_create_list_get_and_names(platform):
    a = platform.project.create("shapes")
    assert isinstance(a, ProjectInfo) and a.name == "shapes" and a.type == "images" and a.created_at.endswith("Z")
    v = platform.project.create("clips", type="videos")
    assert platform.project.list() == [a, v]
    assert platform.project.get(a.id) == a and platform.project.get_by_name("clips") == v
    assert platform.project.get_by_name("nope") is None
    with pytest.raises(InvalidArgumentError, match="get_free_name"):
        platform.project.create("shapes")
    assert platform.project.get_free_name("shapes") == "shapes (1)"
    platform.project.create("shapes (1)")
    assert platform.project.get_free_name("shapes") == "shapes (2)"
    assert platform.project.get_free_name("new") == "new"
    with pytest.raises(InvalidArgumentError):
        platform.project.create("x", type="audio")
    assert platform.project.get_meta(v.id).project_type == "videos"


def test_datasets_nested_listed_parents_first(platform):
    p = platform.project.create("p")
    a = platform.dataset.create(p.id, "a")
    b = platform.dataset.create(p.id, "b")
    a1 = platform.dataset.create(p.id, "a1", parent_id=a.id)
    a1x = platform.dataset.create(p.id, "x", parent_id=a1.id)
    a2 = platform.dataset.create(p.id, "a2", parent_id=a.id)
    assert [d.name for d in platform.dataset.list(p.id)] == ["a", "a1", "x", "a2", "b"]
    assert a1x.parent_id == a1.id and platform.dataset.get(a2.id) == a2
    with pytest.raises(InvalidArgumentError, match="already has a dataset named 'a'"):
        platform.dataset.create(p.id, "a")
    platform.dataset.create(p.id, "a", parent_id=b.id)  # the same name under another parent is fine
    assert platform.dataset.get_or_create(p.id, "a1", parent_id=a.id) == a1
    new = platform.dataset.get_or_create(p.id, "fresh")
    assert platform.dataset.get_or_create(p.id, "fresh") == new
    other = platform.project.create("q")
    with pytest.raises(InvalidArgumentError, match="not"):
        platform.dataset.create(other.id, "c", parent_id=a.id)
    for bad in ("..", "a/b", "", "x\\y"):
        with pytest.raises(InvalidArgumentError):
            platform.dataset.create(p.id, bad)


def test_hidden_names_are_refused_they_would_be_lost_on_export(platform, dataset):
    with pytest.raises(InvalidArgumentError, match="'.cache' may not start with '.'"):
        platform.dataset.create(dataset.project_id, ".cache")
    with pytest.raises(InvalidArgumentError, match="'.hidden.png' may not start with '.'"):
        platform.image.upload(dataset.id, ".hidden.png", png_bytes())
    videos = platform.project.create("v", type="videos")
    vds = platform.dataset.create(videos.id, "d")
    with pytest.raises(InvalidArgumentError, match="'.clip.mp4' may not start with '.'"):
        platform.video.upload(vds.id, ".clip.mp4", CLIP)
    platform.image.upload(dataset.id, "a.b.png", png_bytes())  # a dot elsewhere is fine
    assert platform.dataset.list(dataset.project_id) == [dataset] and platform.video.count(dataset_id=vds.id) == 0


@pytest.mark.parametrize("name", ["meta.json", "key_id_map.json"])
def test_top_level_dataset_names_of_project_files_are_reserved(platform, dataset, name):
    with pytest.raises(InvalidArgumentError, match="reserved"):
        platform.dataset.create(dataset.project_id, name)
    with pytest.raises(InvalidArgumentError, match="reserved"):
        platform.dataset.get_or_create(dataset.project_id, name)
    assert platform.dataset.create(dataset.project_id, name, parent_id=dataset.id).name == name  # nested: no clash


def test_meta_update_merge_and_delete(platform, dataset):
    pid = dataset.project_id
    meta = ProjectMeta([ObjClass("car", "rectangle")], [CONFIDENCE_TAG])
    platform.project.update_meta(pid, meta)
    assert platform.project.get_meta(pid) == meta
    merged = platform.project.merge_meta(pid, ProjectMeta([ObjClass("dog", "bitmap")]))
    assert [c.name for c in merged.obj_classes] == ["car", "dog"] == [
        c.name for c in platform.project.get_meta(pid).obj_classes]
    with pytest.raises(FormatError, match="'car' is a rectangle"):
        platform.project.merge_meta(pid, ProjectMeta([ObjClass("car", "polygon")]))
    image = platform.image.upload(dataset.id, "a.png", png_bytes())
    platform.project.delete(pid)
    with pytest.raises(NotFoundError):
        platform.image.get(image.id)
    with pytest.raises(NotFoundError):
        platform.dataset.get(dataset.id)
    assert platform.project.list() == []


# -------------------------------------------------------------------------------------------------------- images


def test_upload_from_path_array_and_bytes(platform, dataset, tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(10, 20, 7))
    a = platform.image.upload(dataset.id, "x.png", path)
    assert isinstance(a, ImageInfo) and (a.width, a.height, a.ext) == (20, 10, "png")
    assert a.hash == hashlib.sha256(path.read_bytes()).hexdigest() and a.size == path.stat().st_size
    assert Path(a.path).is_absolute() and Path(a.path) == platform.data_dir.resolve() / "blobs" / a.hash[:2] / (
        a.hash + ".png")
    assert platform.image.download_bytes(a.id) == path.read_bytes()
    arr = np.random.default_rng(0).integers(0, 255, (9, 11, 3), dtype=np.uint8)
    b = platform.image.upload(dataset.id, "arr.png", arr)
    assert np.array_equal(platform.image.download(b.id), arr)
    gray = platform.image.upload(dataset.id, "gray", arr[..., 0])
    assert platform.image.download(gray.id).shape == (9, 11, 3)
    c = platform.image.upload(dataset.id, "c.png", png_bytes(10, 20, 7))
    assert c.hash == a.hash and c.path == a.path  # same content, one blob
    assert [i.name for i in platform.image.list(dataset.id)] == ["x.png", "arr.png", "gray", "c.png"]
    assert platform.image.get_by_name(dataset.id, "c.png") == c and platform.image.get_by_name(dataset.id, "z") is None
    assert platform.image.count(dataset_id=dataset.id) == 4 == platform.image.count(project_id=dataset.project_id)
    platform.image.delete(c.id)
    assert platform.image.count(dataset_id=dataset.id) == 3


def test_exif_orientation_is_applied_and_reflected_in_the_size(platform, dataset):
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))  # 20 wide, 10 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    info = platform.image.upload(dataset.id, "rot.jpg", buf.getvalue())
    assert (info.width, info.height, info.ext) == (10, 20, "jpg")
    assert platform.image.download(info.id).shape == (20, 10, 3)


@pytest.mark.parametrize("content", [b"definitely not an image", png_bytes()[:60], b""])
def test_a_corrupt_image_is_refused_and_leaves_no_row(platform, dataset, content):
    with pytest.raises(FormatError, match="broken.png"):
        platform.image.upload(dataset.id, "broken.png", content)
    assert platform.image.count(dataset_id=dataset.id) == 0


def test_a_truncated_jpeg_is_refused_on_upload(platform, dataset):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, format="JPEG")
    whole = buf.getvalue()
    assert platform.image.upload(dataset.id, "whole.jpg", whole).ext == "jpg"
    with pytest.raises(FormatError, match="cut.jpg"):
        platform.image.upload(dataset.id, "cut.jpg", whole[: len(whole) // 2])
    assert [i.name for i in platform.image.list(dataset.id)] == ["whole.jpg"]


def test_upload_errors(platform, dataset, tmp_path):
    platform.image.upload(dataset.id, "a.png", png_bytes())
    with pytest.raises(InvalidArgumentError, match="already has a image named 'a.png'"):
        platform.image.upload(dataset.id, "a.png", png_bytes(value=3))
    with pytest.raises(NotFoundError, match="missing.png"):
        platform.image.upload(dataset.id, "m.png", tmp_path / "missing.png")
    with pytest.raises(InvalidArgumentError):
        platform.image.upload(dataset.id, "f.png", np.zeros((4, 4), np.float32))
    with pytest.raises(InvalidArgumentError):
        platform.image.upload(dataset.id, "../evil.png", png_bytes())
    with pytest.raises(InvalidArgumentError):
        platform.image.upload(dataset.id, "n.png", 42)  # type: ignore[arg-type]
    videos = platform.project.create("v", type="videos")
    vds = platform.dataset.create(videos.id, "d")
    with pytest.raises(InvalidArgumentError, match="project of videos"):
        platform.image.upload(vds.id, "a.png", png_bytes())


def test_iterate_pages_lazily(platform, dataset):
    for i in range(5):
        platform.image.upload(dataset.id, f"{i}.png", png_bytes(value=i))
    queries: list[str] = []
    platform.store.connection().set_trace_callback(queries.append)
    it = platform.image.iterate(project_id=dataset.project_id, batch=2)
    assert not [q for q in queries if "LIMIT" in q]  # nothing read before the first next()
    first = next(it)
    assert first.name == "0.png" and len([q for q in queries if "LIMIT" in q]) == 1
    late = platform.image.upload(dataset.id, "late.png", png_bytes(value=9))  # added mid-iteration: still seen
    rest = [i.name for i in it]
    assert rest == ["1.png", "2.png", "3.png", "4.png", "late.png"]
    assert len([q for q in queries if "LIMIT" in q]) == 4  # pages of 2, 2, 2 and an empty one
    platform.store.connection().set_trace_callback(None)
    assert [i.id for i in platform.image.iterate(dataset_id=dataset.id, batch=1000)][-1] == late.id
    with pytest.raises(InvalidArgumentError):
        platform.image.iterate(dataset_id=dataset.id, project_id=dataset.project_id)


# --------------------------------------------------------------------------------------------------- annotations


def test_annotation_get_set_round_trip(platform, dataset):
    info = platform.image.upload(dataset.id, "a.png", png_bytes())
    assert platform.annotation.get(info.id) == Annotation((12, 16))
    with pytest.raises(FormatError, match="class 'car' is not in the project meta"):
        platform.annotation.set(info.id, box_ann())
    platform.annotation.set(info.id, box_ann(), add_to_meta=True)
    meta = platform.project.get_meta(dataset.project_id)
    assert meta.get_obj_class("car") is not None and meta.get_tag_meta("confidence") is not None
    got = platform.annotation.get(info.id)
    assert got == box_ann() and got.labels[0].confidence == 0.8
    mask = np.zeros((12, 16), bool)
    mask[2:6, 3:9] = True
    platform.project.merge_meta(dataset.project_id, ProjectMeta([ObjClass("blob", "bitmap")]))
    ann = got.add_labels([Label(Bitmap.from_mask(mask), meta.get_obj_class("car").__class__("blob", "bitmap"))])
    platform.annotation.set(info.id, ann.to_json())  # JSON is accepted too
    assert platform.annotation.get(info.id).to_json() == ann.to_json()
    assert platform.project.stats(dataset.project_id) == {"datasets": 1, "items": 1, "objects": 2}


@pytest.mark.parametrize(
    "ann, message",
    [
        (box_ann(h=99), "size 99x16"),
        (Annotation((12, 16), [Label(Bitmap(np.ones((2, 2), bool)), ObjClass("car", "bitmap"))]), "rectangle class"),
        (Annotation((12, 16), img_tags=[Tag("mood", "ok")]), "tag 'mood'"),
        (Annotation((12, 16), img_tags=[Tag(TagMeta("confidence", "any_string"), "high")]), "any_number"),
    ],
)
def test_annotation_set_checks_the_meta_and_the_size(platform, dataset, ann, message):
    info = platform.image.upload(dataset.id, "a.png", png_bytes())
    platform.project.update_meta(dataset.project_id, ProjectMeta([ObjClass("car", "rectangle")], [CONFIDENCE_TAG]))
    with pytest.raises(FormatError, match=message):
        platform.annotation.set(info.id, ann)
    assert platform.annotation.get(info.id).labels == ()


def test_set_many_is_all_or_nothing_and_get_many(platform, dataset):
    infos = [platform.image.upload(dataset.id, f"{i}.png", png_bytes(value=i)) for i in range(3)]
    with pytest.raises(FormatError):
        platform.annotation.set_many([(infos[0].id, box_ann()), (infos[1].id, box_ann(h=5))], add_to_meta=True)
    assert all(a.labels == () for a in platform.annotation.get_many([i.id for i in infos]).values())
    assert platform.project.get_meta(dataset.project_id).obj_classes == ()
    platform.annotation.set_many([(i.id, box_ann(name=f"c{i.id}")) for i in infos], add_to_meta=True)
    anns = platform.annotation.get_many([i.id for i in infos])
    assert list(anns) == [i.id for i in infos]
    assert [a.labels[0].obj_class.name for a in anns.values()] == [f"c{i.id}" for i in infos]


# ------------------------------------------------------------------------------------------------------ not found


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: p.project.get(99), "project 99 does not exist"),
        (lambda p: p.project.get_meta(99), "project 99"),
        (lambda p: p.project.delete(99), "project 99"),
        (lambda p: p.project.export_dir(99, "/tmp/never"), "project 99"),
        (lambda p: p.dataset.get(98), "dataset 98 does not exist"),
        (lambda p: p.dataset.create(99, "d"), "project 99"),
        (lambda p: p.dataset.list(99), "project 99"),
        (lambda p: p.image.get(42), "image 42 does not exist"),
        (lambda p: p.image.download(42), "image 42"),
        (lambda p: p.image.delete(42), "image 42"),
        (lambda p: p.image.upload(98, "a.png", png_bytes()), "dataset 98"),
        (lambda p: p.image.list(98), "dataset 98"),
        (lambda p: list(p.image.iterate(project_id=99)), "project 99"),
        (lambda p: p.annotation.get(42), "image 42"),
        (lambda p: p.annotation.set(42, Annotation((1, 1))), "image 42"),
        (lambda p: p.annotation.get_many([42]), "image 42"),
        (lambda p: p.video.get(7), "video 7 does not exist"),
        (lambda p: p.video.get_annotation(7), "video 7"),
        (lambda p: p.video.set_annotation(7, {}), "video 7"),
        (lambda p: p.project.get(2**70), f"project {2**70} does not exist"),  # beyond SQLite's INTEGER
        (lambda p: p.image.get(0), "image 0 does not exist"),
    ],
)
def test_unknown_ids_are_not_found_errors(platform, call, message):
    platform.project.list()
    with pytest.raises(NotFoundError, match=message) as info:
        call(platform)
    assert isinstance(info.value, KeyError) and str(info.value).startswith(message.split(" does")[0])


# --------------------------------------------------------------------------------------------------------- videos


@pytest.fixture
def video_dataset(platform) -> DatasetInfo:
    project = platform.project.create("clips", type="videos")
    return platform.dataset.create(project.id, "ds")


def test_video_upload_probe_and_annotation(platform, video_dataset):
    info = platform.video.upload(video_dataset.id, "clip.mp4", CLIP)
    assert isinstance(info, VideoInfo)
    assert (info.frames_count, info.fps, info.width, info.height) == (8, 10.0, 32, 24)
    assert Path(info.path).read_bytes() == CLIP.read_bytes()
    assert platform.video.list(video_dataset.id) == [info] and platform.video.get(info.id) == info
    empty = platform.video.get_annotation(info.id)
    assert (empty.img_size, empty.frames_count, empty.objects) == ((24, 32), 8, ())
    car = VideoObject(ObjClass("car", "rectangle"))
    ann = VideoAnnotation((24, 32), 8, [car]).add_figures(
        [VideoFigure(car, Rectangle.from_xyxy(1, 1, 9, 9), i) for i in range(0, 8, 3)])
    with pytest.raises(FormatError, match="class 'car'"):
        platform.video.set_annotation(info.id, ann)
    platform.video.set_annotation(info.id, ann, add_to_meta=True)
    assert platform.video.get_annotation(info.id).to_json() == ann.to_json()
    late = VideoAnnotation((24, 32), 20, [car]).add_figures([VideoFigure(car, Rectangle(0, 0, 1, 1), 12)])
    with pytest.raises(FormatError, match="frame 12"):
        platform.video.set_annotation(info.id, late)
    with pytest.raises(FormatError, match="framesCount is 9; the video has 8 frames"):
        platform.video.set_annotation(info.id, VideoAnnotation((24, 32), 9, [car]))
    with pytest.raises(FormatError, match="size 24x40 .* differs from the video's 24x32"):
        platform.video.set_annotation(info.id, VideoAnnotation((24, 40), 8, [car]))
    assert platform.video.get_annotation(info.id).to_json() == ann.to_json()
    assert platform.project.stats(video_dataset.project_id)["objects"] == 1


def test_video_frames_are_counted_when_the_container_does_not_say(platform, video_dataset, tmp_path):
    import av

    path = tmp_path / "c.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 16, 8, "yuv420p"
        for _ in range(6):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((8, 16, 3), np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    info = platform.video.upload(video_dataset.id, "c.mkv", path)
    assert (info.frames_count, info.fps, info.width, info.height) == (6, 5.0, 16, 8)


def test_video_upload_errors(platform, video_dataset, dataset, tmp_path):
    not_video = tmp_path / "x.mp4"
    not_video.write_bytes(b"\x00" * 500)
    with pytest.raises(FormatError, match="x.mp4"):
        platform.video.upload(video_dataset.id, "x.mp4", not_video)
    image_file = tmp_path / "i.png"
    image_file.write_bytes(png_bytes())
    with pytest.raises(FormatError, match="i.png"):
        platform.video.upload(video_dataset.id, "i.png", image_file)
    with pytest.raises(InvalidArgumentError, match="project of images"):
        platform.video.upload(dataset.id, "clip.mp4", CLIP)
    with pytest.raises(NotFoundError):
        platform.video.upload(video_dataset.id, "n.mp4", tmp_path / "nope.mp4")
    assert platform.video.count(dataset_id=video_dataset.id) == 0


# -------------------------------------------------------------------------------------------------- concurrency

_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    from pipeline.annotation import Annotation, Label, ObjClass, ProjectMeta, Rectangle
    from pipeline.platform import Platform

    data_dir, project_id, dataset_id, tag, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], \\
        int(sys.argv[5]), Path(sys.argv[6])
    platform = Platform(data_dir)
    platform.project.get(project_id)  # connect before the start line, so both start writing together
    while not go.exists():
        time.sleep(0.005)
    for i in range(n):
        info = platform.image.upload(dataset_id, f"{tag}_{i}.png", np.full((8, 8, 3), i, np.uint8))
        ann = Annotation((8, 8), [Label(Rectangle(0, 0, 4, 4), ObjClass(f"{tag}_{i % 4}", "rectangle")),
                                  Label(Rectangle(1, 1, 5, 5), ObjClass("shared", "rectangle"))])
        platform.annotation.set(info.id, ann, add_to_meta=True)
        platform.project.merge_meta(project_id, ProjectMeta([ObjClass(f"extra_{tag}_{i}", "bitmap")]))
    """
)


def test_two_processes_writing_at_once_lose_nothing(platform, tmp_path):
    n = 12
    project = platform.project.create("shared")
    datasets = {tag: platform.dataset.create(project.id, tag) for tag in ("a", "b")}
    script, go = tmp_path / "writer.py", tmp_path / "go"
    script.write_text(_WRITER)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(platform.data_dir), str(project.id), str(ds.id), tag,
                          str(n), str(go)], stderr=subprocess.PIPE, text=True)
        for tag, ds in datasets.items()
    ]
    time.sleep(0.2)
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    assert platform.image.count(project_id=project.id) == 2 * n
    names = {c.name for c in platform.project.get_meta(project.id).obj_classes}
    expected = {"shared"} | {f"{t}_{k}" for t in "ab" for k in range(4)} | {f"extra_{t}_{i}" for t in "ab"
                                                                          for i in range(n)}
    assert names == expected
    anns = platform.annotation.get_many([i.id for i in platform.image.iterate(project_id=project.id)])
    assert all(len(a.labels) == 2 for a in anns.values())
    assert platform.project.stats(project.id)["objects"] == 4 * n


def test_sqlite_errors_are_translated(platform, dataset):
    with pytest.raises(PipelineError) as info:
        with platform.store.write() as conn:
            conn.execute("INSERT INTO no_such_table VALUES (1)")
    assert not isinstance(info.value, sqlite3.Error)
    with pytest.raises(InvalidArgumentError):  # a constraint: e.g. a name another process took first
        with platform.store.write() as conn:
            conn.execute("INSERT INTO datasets (project_id, parent_id, name, created_at) VALUES (?, NULL, 'ds', 'x')",
                         (dataset.project_id,))


def test_records_pickle_and_a_write_inside_a_read_is_refused(platform, dataset):
    import pickle

    info = platform.image.upload(dataset.id, "a.png", png_bytes())
    assert pickle.loads(pickle.dumps(info)) == info
    assert pickle.loads(pickle.dumps(dataset)) == dataset
    with pytest.raises(PipelineError, match="inside store.read"):
        with platform.store.read():
            with platform.store.write():
                pass
    with platform.store.write() as conn:  # reads inside a write are fine: they join it
        with platform.store.read() as same:
            assert same is conn


def test_threads_share_a_platform(platform, dataset):
    from concurrent.futures import ThreadPoolExecutor

    def work(i: int) -> int:
        info = platform.image.upload(dataset.id, f"t{i}.png", png_bytes(value=i))
        platform.annotation.set(info.id, box_ann(name=f"c{i % 3}"), add_to_meta=True)
        return info.id

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(work, range(12)))
    assert len(set(ids)) == 12 and platform.image.count(dataset_id=dataset.id) == 12
    assert {c.name for c in platform.project.get_meta(dataset.project_id).obj_classes} == {"c0", "c1", "c2"}
    assert all(len(a.labels) == 1 for a in platform.annotation.get_many(ids).values())


def test_numpy_integer_ids_work(platform):
    import numpy as np

    project = platform.project.create("np-ids")
    assert platform.project.get(np.int64(project.id)).name == "np-ids"


# ------------------------------------------------------------------------------------------ garbage collection


def _age(path: Path, seconds: float = 7200) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_gc_removes_the_files_no_record_uses_and_nothing_else(platform, dataset):
    """Deleted items keep their stored files (content addressed, maybe shared): gc removes those no image or video
    names any more, their thumbnails and the leftovers of interrupted writes, once older than min_age_s."""
    from pipeline.viewer.media import image_thumbnail

    kept = platform.image.upload(dataset.id, "kept.png", png_bytes(value=1))
    shared = platform.image.upload(dataset.id, "shared.png", png_bytes(value=2))
    twin = platform.image.upload(dataset.id, "twin.png", png_bytes(value=2))  # same content, same blob
    gone = platform.image.upload(dataset.id, "gone.png", png_bytes(value=3))
    videos = platform.dataset.create(platform.project.create("v", type="videos").id, "ds")
    video = platform.video.upload(videos.id, "clip.mp4", CLIP)
    store = platform.store
    with store.read() as conn:
        rows = {r["id"]: r for r in conn.execute("SELECT id, name, hash, ext FROM images")}
    thumbs = {i.id: image_thumbnail(store, rows[i.id]) for i in (kept, shared, gone)}
    incoming = store.blobs_dir / ".incoming-crashed"
    incoming.write_bytes(b"x" * 100)
    for path in [*store.blobs_dir.rglob("*.*"), *thumbs.values(), incoming]:
        _age(path)
    platform.image.delete(twin.id)
    platform.image.delete(gone.id)
    gone_blob = Path(gone.path)
    assert gone_blob.exists()

    dry = platform.collect_garbage(dry_run=True)
    assert (dry.blobs, dry.thumbnails, dry.leftovers) == (1, 1, 1) and gone_blob.exists() and incoming.exists()
    report = platform.collect_garbage()
    assert (report.blobs, report.thumbnails, report.leftovers) == (1, 1, 1)
    assert report.blob_bytes == len(png_bytes(value=3)) and "removed 1 stored files" in str(report)
    assert not gone_blob.exists() and not thumbs[gone.id].exists() and not incoming.exists()
    # what records still use is all there: the shared blob (its twin deleted), the video, their thumbnails
    assert platform.image.download_bytes(shared.id) == png_bytes(value=2)
    assert platform.image.download_bytes(kept.id) == png_bytes(value=1)
    assert Path(video.path).exists() and thumbs[kept.id].exists() and thumbs[shared.id].exists()
    assert platform.collect_garbage(min_age_s=0).blobs == 0  # nothing more to remove


def test_gc_leaves_young_files_and_a_blob_an_upload_is_about_to_name(platform, dataset):
    """An upload stores its file before the record naming it commits: a young unnamed blob stays; and an old one
    that an upload of the same content finds (and refreshes) while gc runs is not deleted from under it."""
    info = platform.image.upload(dataset.id, "a.png", png_bytes(value=4))
    blob = Path(info.path)
    platform.image.delete(info.id)
    assert platform.collect_garbage().blobs == 0 and blob.exists()  # younger than an hour
    _age(blob)
    tmp, sha, _ = platform.store.stage_file(io.BytesIO(png_bytes(value=4)))  # an upload of the same content...
    platform.store.commit_blob(tmp, sha, "png")  # ...finds the file there and refreshes it
    assert platform.collect_garbage().blobs == 0 and blob.exists()
    again = platform.image.upload(dataset.id, "a2.png", png_bytes(value=4))
    assert again.path == info.path and platform.image.download_bytes(again.id) == png_bytes(value=4)
    _age(blob)
    assert platform.collect_garbage(min_age_s=60).blobs == 0  # named again
    with pytest.raises(InvalidArgumentError, match="min_age_s"):
        platform.collect_garbage(min_age_s=float("nan"))


def test_gc_from_the_command_line(tmp_path, capsys):
    from pipeline.app.cli import main

    platform = Platform(tmp_path / "data")
    ds = platform.dataset.create(platform.project.create("p").id, "ds")
    info = platform.image.upload(ds.id, "a.png", png_bytes(value=5))
    platform.image.delete(info.id)
    _age(Path(info.path))
    assert main(["--data-dir", str(tmp_path / "data"), "platform", "gc", "--dry-run"]) == 0
    assert "would remove 1 stored files" in capsys.readouterr().out and Path(info.path).exists()
    assert main(["--data-dir", str(tmp_path / "data"), "platform", "gc"]) == 0
    assert "removed 1 stored files" in capsys.readouterr().out and not Path(info.path).exists()
    assert main(["--data-dir", str(tmp_path / "data"), "platform", "gc", "--min-age", "-1"]) == 2


def test_gc_restores_a_blob_an_upload_refreshed_while_it_was_being_removed(platform, dataset, monkeypatch):
    """The narrowest race: an upload of the same content finds the old blob and refreshes it just after gc read its
    age; gc's rename-then-recheck sees the refresh and puts the file back."""
    import pipeline.platform.gc as gc

    info = platform.image.upload(dataset.id, "a.png", png_bytes(value=6))
    blob = Path(info.path)
    platform.image.delete(info.id)
    _age(blob)
    rename = os.rename

    def upload_then_rename(src, dst):
        tmp, sha, _ = platform.store.stage_file(io.BytesIO(png_bytes(value=6)))
        platform.store.commit_blob(tmp, sha, "png")  # between gc's age check and its rename
        rename(src, dst)

    monkeypatch.setattr(gc.os, "rename", upload_then_rename)
    assert platform.collect_garbage().blobs == 0
    assert blob.read_bytes() == png_bytes(value=6) and not list(blob.parent.glob(".gc-*"))


def test_a_read_only_data_dir_is_named_as_such(tmp_path, monkeypatch):
    """SQLite says only "unable to open database file" when the folder cannot take its journal files."""
    import sqlite3

    from pipeline.platform import store

    monkeypatch.setattr(store.os, "access", lambda path, mode: False)
    err = store._translate(sqlite3.OperationalError("unable to open database file"), tmp_path / "platform.db")
    assert "its folder is not writable (a read-only file system or permissions)" in str(err)
    monkeypatch.undo()
    err = store._translate(sqlite3.OperationalError("unable to open database file"), tmp_path / "platform.db")
    assert "not writable" not in str(err)  # a writable folder: no such guess
