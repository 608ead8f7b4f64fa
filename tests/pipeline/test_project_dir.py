"""Supervisely project folders: import of SDK-written folders, export that the SDK's reader accepts, round trips,
and bad input that is refused with the file named and nothing left behind."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import uuid
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.annotation import Annotation, Bitmap, Label, ObjClass, Polygon, Rectangle
from pipeline.exceptions import FormatError, InvalidArgumentError, NotFoundError, PipelineError
from pipeline.platform import Platform, ops, project_dir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SLY_PROJECT = FIXTURES / "sly_project"
SLY_VIDEO_PROJECT = FIXTURES / "sly_video_project"

# ------------------------------------------------------------------------------------------------------------------
# A checker of what the Supervisely SDK's readers require of a project folder. Each rule cites the SDK code it
# mirrors (repository supervisely/supervisely); a folder that passes opens with `sly.Project(path, OpenMode.READ)`
# (or `sly.VideoProject`) and its annotations load with `Dataset.get_ann(name, project.meta)`.
# ------------------------------------------------------------------------------------------------------------------

# supervisely/imaging/image.py: SUPPORTED_IMG_EXTS; supervisely/video/video.py: ALLOWED_VIDEO_EXTENSIONS
SDK_IMAGE_EXTS = {".jpg", ".jpeg", ".mpo", ".bmp", ".png", ".webp", ".tiff", ".tif", ".jfif", ".avif", ".heic", ".heif"}
SDK_VIDEO_EXTS = {".avi", ".mp4", ".3gp", ".flv", ".webm", ".wmv", ".mov", ".mkv"}
# supervisely/annotation/json_geometries_map.py (GET_GEOMETRY_FROM_STR), the shapes this project writes
SDK_SHAPES = {"rectangle", "bitmap", "polygon", "any_shape", "point", "line", "graph", "cuboid", "alpha_mask"}
# supervisely/annotation/tag_meta.py: TagValueType, TagApplicableTo
SDK_TAG_VALUE_TYPES = {"none", "any_number", "any_string", "oneof_string", "date"}
SDK_APPLICABLE = {"all", "imagesOnly", "objectsOnly"}
# supervisely/project/project.py: Dataset.ignorable_dirs() (every "*_dir_name") -- folders that are not datasets
SDK_IGNORABLE_DIRS = {"img", "ann", "img_info", "seg", "meta", "datasets", "blob", "video", "video_info"}
# supervisely/video_annotation/key_id_map.py: ALLOWED_KEY_TYPES
SDK_KEY_TYPES = {"tags", "objects", "figures", "videos"}


def check_sly_project(root: Path) -> list[str]:
    """Problems the SDK's reader would have with the project folder at `root` (empty: it reads it)."""
    problems: list[str] = []
    # Project._read: load_json_file(meta.json) then ProjectMeta.from_json
    meta = json.loads((root / "meta.json").read_text())
    classes = {}
    for c in meta["classes"]:  # ProjectMeta.from_json: data["classes"]; ObjClass.from_json: title, shape, color
        if not re.fullmatch(r"#[0-9A-Fa-f]{6}", c["color"]) or c["shape"] not in SDK_SHAPES:
            problems.append(f"meta.json: class {c['title']!r}: bad color or shape")
        if c["shape"] == "graph":
            _check_graph_template(c.get("geometry_config"), f"meta.json: class {c['title']!r}", problems)
        classes[c["title"]] = c
    tags = {}
    for t in meta.get("tags", []):  # TagMeta.from_json: name, value_type; values for oneof_string
        if t["value_type"] not in SDK_TAG_VALUE_TYPES or t.get("applicable_type", "all") not in SDK_APPLICABLE:
            problems.append(f"meta.json: tag {t['name']!r}: bad value_type or applicable_type")
        if t["value_type"] == "oneof_string" and not isinstance(t.get("values"), list):
            problems.append(f"meta.json: tag {t['name']!r}: oneof_string without values")
        tags[t["name"]] = t
    videos = meta.get("projectType") == "videos"
    item_dir_name, exts = ("video", SDK_VIDEO_EXTS) if videos else ("img", SDK_IMAGE_EXTS)
    if videos:  # VideoProject._read: KeyIdMap.load_json(key_id_map.json) -> from_dict -> _add(type, UUID(key), id)
        kim = json.loads((root / "key_id_map.json").read_text())
        for key_type, mapping in kim.items():
            if key_type not in SDK_KEY_TYPES:
                problems.append(f"key_id_map.json: key type {key_type!r} is not allowed")
            for key, value in mapping.items():
                _uuid(key, f"key_id_map.json {key_type}", problems)
                if type(value) is not int:
                    problems.append(f"key_id_map.json: {key_type} {key}: id {value!r} is not an int")
            if len(set(mapping.values())) != len(mapping):  # a bidict: ids are unique
                problems.append(f"key_id_map.json: {key_type}: duplicate ids")
    total = 0
    for ds_dir in _possible_datasets(root):  # Project._read: subdirs_tree(root, ignorable, ignorable - datasets)
        item_dir, ann_dir = ds_dir / item_dir_name, ds_dir / "ann"
        if not item_dir.is_dir() or not ann_dir.is_dir():  # Dataset._read: FileNotFoundError -> dataset skipped
            problems.append(f"{ds_dir.relative_to(root)}: missing {item_dir_name}/ or ann/")
            continue
        ann_names = {p.name for p in ann_dir.iterdir() if p.suffix == ".json"}
        for item in sorted(item_dir.iterdir()):
            if item.suffix.lower() not in exts:  # _has_valid_ext: the SDK does not see this file at all
                problems.append(f"{item.relative_to(root)}: extension not read by the SDK")
                continue
            total += 1
            ann_name = item.name + ".json"  # _get_effective_ann_name: "<name>.json", else "<stem>.json"
            if ann_name not in ann_names:
                problems.append(f"{item.relative_to(root)}: no annotation file")
                continue
            ann = json.loads((ann_dir / ann_name).read_text())
            where = str((ann_dir / ann_name).relative_to(root))
            if videos:
                _check_video_ann(ann, classes, tags, where, problems)
            else:
                _check_image_ann(ann, classes, tags, where, problems)
    if total == 0:  # Project._read: a project without items is an error
        problems.append("the project has no items")
    return problems


def _possible_datasets(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        for d in list(dirnames):
            if d in SDK_IGNORABLE_DIRS and d != "datasets":
                dirnames.remove(d)  # not a dataset, and nothing inside is one
            elif d != "datasets":
                out.append(here / d)
    return out


def _check_image_ann(ann: dict, classes: dict, tags: dict, where: str, problems: list[str]) -> None:
    # Annotation.from_json: data["size"]["height"|"width"], data["objects"], data["tags"] (TagCollection.from_json)
    for key in ("size", "objects", "tags"):
        if key not in ann:
            problems.append(f"{where}: missing {key!r}")
            return
    if not all(isinstance(ann["size"].get(k), int) for k in ("height", "width")):
        problems.append(f"{where}: size needs int height and width")
    _check_tags(ann["tags"], tags, where, problems)
    for i, obj in enumerate(ann["objects"]):
        # Label.from_json: data["classTitle"] in the meta, data["tags"]; geometry by the class's shape
        cls = classes.get(obj.get("classTitle"))
        if cls is None or "tags" not in obj:
            problems.append(f"{where}: object {i}: unknown class or no tags")
            continue
        _check_tags(obj["tags"], tags, f"{where}: object {i}", problems)
        shape = cls["shape"] if cls["shape"] != "any_shape" else obj.get("geometryType", obj.get("shape"))
        _check_geometry(shape, obj, f"{where}: object {i}", problems, cls.get("geometry_config"))


def _check_video_ann(ann: dict, classes: dict, tags: dict, where: str, problems: list[str]) -> None:
    # VideoAnnotation.from_json: key (UUID), size, framesCount, tags, objects, frames
    for key in ("size", "framesCount", "tags", "objects", "frames"):
        if key not in ann:
            problems.append(f"{where}: missing {key!r}")
            return
    if "key" in ann:
        _uuid(ann["key"], f"{where}: key", problems)
    for t in ann["tags"]:  # VideoTag.from_json: a Tag, optional frameRange [start, end], optional key
        _uuid(t.get("key", uuid.uuid4().hex), f"{where}: tag key", problems)
        if "frameRange" in t and (len(t["frameRange"]) != 2 or t["frameRange"][0] > t["frameRange"][1]):
            problems.append(f"{where}: bad frameRange {t['frameRange']}")
    _check_tags(ann["tags"], tags, where, problems)
    objects = {}
    for obj in ann["objects"]:  # VideoObject.from_json: classTitle in the meta, key (UUID), data["tags"]
        if obj.get("classTitle") not in classes or "tags" not in obj:
            problems.append(f"{where}: object {obj.get('key')}: unknown class or no tags")
            continue
        objects[_uuid(obj.get("key", uuid.uuid4().hex), f"{where}: object key", problems)] = obj
        _check_tags(obj["tags"], tags, f"{where}: object", problems)
    for frame in ann["frames"]:  # Frame.from_json: index, figures; FrameCollection: index < framesCount
        if not 0 <= frame["index"] < ann["framesCount"]:
            problems.append(f"{where}: frame index {frame['index']} out of range")
        for fig in frame["figures"]:  # VideoFigure.from_json: objectKey (UUID) in objects, geometryType, geometry
            obj = objects.get(_uuid(fig.get("objectKey", ""), f"{where}: objectKey", problems))
            if obj is None:
                problems.append(f"{where}: figure of an unknown object")
                continue
            _uuid(fig.get("key", uuid.uuid4().hex), f"{where}: figure key", problems)
            shape = classes[obj["classTitle"]]["shape"]
            if shape != "any_shape" and fig["geometryType"] != shape:
                problems.append(f"{where}: figure geometry {fig['geometryType']} in a {shape} class")
            _check_geometry(fig["geometryType"], fig["geometry"], f"{where}: figure", problems,
                            classes[obj["classTitle"]].get("geometry_config"))


def _check_tags(items: list, tags: dict, where: str, problems: list[str]) -> None:
    for t in items:  # Tag.from_json: the meta has the name; TagMeta.is_valid_value
        meta = tags.get(t.get("name"))
        if meta is None:
            problems.append(f"{where}: tag {t.get('name')!r} not in meta.json")
            continue
        v, vt = t.get("value"), meta["value_type"]
        ok = {"none": v is None, "any_number": isinstance(v, (int, float)) and not isinstance(v, bool),
              "any_string": isinstance(v, str), "date": isinstance(v, str),
              "oneof_string": v in meta.get("values", [])}[vt]
        if not ok:
            problems.append(f"{where}: tag {meta['name']!r}: value {v!r} is not a valid {vt}")


def _check_graph_template(config, where: str, problems: list[str]) -> None:
    # ObjClass.from_json of a graph class: GraphNodes.config_from_json -> _transform_config_colors(config, hex2rgb):
    # config["nodes"] (a dict; its "color"s hex) and config.get("edges", []) (their "color"s hex); edges name nodes
    # (KeypointsTemplate.add_edge)
    try:
        nodes = config["nodes"]
        assert isinstance(nodes, dict) and nodes
        for node in nodes.values():
            assert re.fullmatch(r"#[0-9A-Fa-f]{6}", node.get("color", "#000000")) and len(node["loc"]) == 2
        for edge in config.get("edges", []):
            assert re.fullmatch(r"#[0-9A-Fa-f]{6}", edge.get("color", "#000000"))
            assert edge["src"] in nodes and edge["dst"] in nodes
    except (AssertionError, KeyError, TypeError, AttributeError) as exc:
        problems.append(f"{where}: graph template unreadable by the SDK ({type(exc).__name__} {exc})")


def _check_geometry(shape: str, data: dict, where: str, problems: list[str], config=None) -> None:
    try:
        if shape == "graph":
            # GraphNodes.from_json: data["nodes"] {key: Node.from_json: data["loc"] [col, row], "disabled"}; Label()
            # validates the geometry against its class: GraphNodes.validate -> no node outside config["nodes"]
            nodes = data["nodes"]
            assert isinstance(nodes, dict) and nodes
            for node in nodes.values():
                col, row = node["loc"]
                assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in (col, row))
                assert isinstance(node.get("disabled", False), bool)
            assert set(nodes) <= set((config or {}).get("nodes", {})), "nodes not declared in the template"
            return
        if shape == "rectangle":  # Rectangle.from_json: 2 exterior points; Rectangle(): top <= bottom, left <= right
            (left, top), (right, bottom) = data["points"]["exterior"]
            assert top <= bottom and left <= right
        elif shape == "polygon":  # Polygon.from_json: exterior (>= 3 points) and interior rings (>= 3 points each)
            assert len(data["points"]["exterior"]) >= 3
            assert all(len(ring) >= 3 for ring in data["points"]["interior"])
        elif shape == "bitmap":  # BitmapBase.from_json: bitmap.origin [col, row], bitmap.data; base64_2_data
            col, row = data["bitmap"]["origin"]
            assert isinstance(col, int) and isinstance(row, int)
            png = zlib.decompress(base64.b64decode(data["bitmap"]["data"]))
            img = Image.open(io.BytesIO(png))
            # cv2.imdecode(IMREAD_UNCHANGED) gives 2-D for gray/palette (4 channels with a tRNS chunk), 3 for RGB:
            # base64_2_data raises "Wrong internal mask format." on 3 channels; Bitmap() rejects an empty mask
            assert img.mode in ("L", "1", "P", "LA", "RGBA")
            assert np.asarray(img).any()
        else:
            problems.append(f"{where}: geometry {shape!r} is not one this project writes")
    except (AssertionError, KeyError, ValueError, TypeError, OSError, zlib.error) as exc:
        problems.append(f"{where}: {shape} geometry unreadable by the SDK ({type(exc).__name__} {exc})")


def _uuid(key: str, where: str, problems: list[str]) -> str:
    try:
        return uuid.UUID(key).hex
    except (ValueError, TypeError, AttributeError):
        problems.append(f"{where}: {key!r} is not a UUID")
        return str(key)


# ------------------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def platform(tmp_path) -> Platform:
    return Platform(tmp_path / "data")


def copy_project(src: Path, tmp_path: Path, name: str = "proj") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def table_counts(platform: Platform) -> dict[str, int]:
    with platform.store.read() as conn:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("projects", "datasets", "images", "annotations", "videos", "video_annotations")}


def snapshot(platform: Platform, project_id: int) -> dict[tuple[str, str], tuple[str, dict]]:
    """{(dataset path, image name): (content hash, annotation JSON)} of a project."""
    paths: dict[int, str] = {}
    out = {}
    for ds in platform.dataset.list(project_id):
        paths[ds.id] = f"{paths[ds.parent_id]}/{ds.name}" if ds.parent_id else ds.name
        for info in platform.image.list(ds.id):
            out[(paths[ds.id], info.name)] = (info.hash, platform.annotation.get(info.id).to_json())
    return out


# -------------------------------------------------------------------------------------------------------- import


def test_the_fixture_is_what_the_sdk_reads():
    assert check_sly_project(SLY_PROJECT) == []
    assert check_sly_project(SLY_VIDEO_PROJECT) == []


def test_the_checker_finds_problems(tmp_path):
    root = copy_project(SLY_PROJECT, tmp_path)
    (root / "ds1" / "ann" / "img_3.png.json").unlink()
    ann_path = root / "ds0" / "ann" / "img_0.png.json"
    ann = json.loads(ann_path.read_text())
    ann["objects"][0]["points"]["exterior"] = [[12, 13], [2, 3]]
    del ann["objects"][1]["tags"]
    ann_path.write_text(json.dumps(ann))
    problems = check_sly_project(root)
    assert len(problems) == 3, problems


def test_import_an_sdk_project(platform):
    project_id = platform.project.import_dir(SLY_PROJECT)
    info = platform.project.get(project_id)
    assert (info.name, info.type) == ("sly_project", "images")
    datasets = platform.dataset.list(project_id)
    assert [(d.name, d.parent_id) for d in datasets] == [("ds0", None), ("child", datasets[0].id), ("ds1", None)]
    assert platform.project.stats(project_id) == {"datasets": 3, "items": 4, "objects": 5}
    meta = platform.project.get_meta(project_id)
    assert [c.name for c in meta.obj_classes] == ["square", "ring", "blob", "anything"]
    assert meta.get_obj_class("square").id == 11 and meta.extra["projectSettings"]["multiView"]["enabled"] is False
    img0 = platform.image.get_by_name(datasets[0].id, "img_0.png")
    assert (img0.width, img0.height) == (32, 24)
    ann = platform.annotation.get(img0.id)
    rect, poly, blob = (lb.geometry for lb in ann.labels)
    assert rect == Rectangle(top=3, left=2, bottom=13, right=12)
    assert isinstance(poly, Polygon) and len(poly.interior) == 1
    ring = np.ones((6, 8), bool)
    ring[2:4, 3:5] = False
    assert blob == Bitmap(ring, origin=(20, 4))
    assert ann.labels[0].confidence == pytest.approx(0.87)
    assert [(t.name, t.value) for t in ann.img_tags] == [("weather", "sunny"), ("reviewed", None)]
    expected = json.loads((SLY_PROJECT / "ds0" / "ann" / "img_0.png.json").read_text())
    got = ann.to_json()
    got["objects"][2]["bitmap"]["data"] = expected["objects"][2]["bitmap"]["data"]  # same mask, our PIL's bytes
    assert got == expected  # ids, labeler logins, timestamps and nn flags all kept
    jpg = platform.image.get_by_name(datasets[0].id, "img_1.jpg")
    assert jpg.ext == "jpg" and platform.annotation.get(jpg.id).labels[0].obj_class.shape == "any_shape"
    assert platform.image.download_bytes(jpg.id) == (SLY_PROJECT / "ds0" / "img" / "img_1.jpg").read_bytes()


def test_import_twice_gets_a_free_name(platform):
    first = platform.project.import_dir(SLY_PROJECT)
    second = platform.project.import_dir(SLY_PROJECT)
    assert platform.project.get(first).name == "sly_project"
    assert platform.project.get(second).name == "sly_project (1)"


def test_an_image_without_annotation_file_gets_an_empty_one_and_old_ann_names_are_read(platform, tmp_path):
    root = copy_project(SLY_PROJECT, tmp_path)
    (root / "ds1" / "ann" / "img_3.png.json").unlink()
    os.rename(root / "ds0" / "ann" / "img_1.jpg.json", root / "ds0" / "ann" / "img_1.json")  # the SDK's old naming
    project_id = platform.project.import_dir(root)
    by_name = {i.name: i for i in platform.image.iterate(project_id=project_id)}
    assert platform.annotation.get(by_name["img_3.png"].id) == Annotation((24, 32))
    assert len(platform.annotation.get(by_name["img_1.jpg"].id).labels) == 1


def test_junk_files_are_skipped_and_files_without_an_image_extension_skipped_with_a_warning(platform, tmp_path):
    root = copy_project(SLY_PROJECT, tmp_path)
    for folder in (root, root / "ds0" / "img", root / "ds0" / "ann"):
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "ds0" / "img" / "._img_0.png").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble
    (root / "ds0" / "ann" / "._img_0.png.json").write_bytes(b"\x00\x05\x16\x07")
    (root / "ds1" / "img" / "README.txt").write_text("frames from camera 3")
    (root / ".git").mkdir()  # a hidden folder that is no dataset
    (root / "ds1" / "img" / ".thumbnails").mkdir()
    with pytest.warns(UserWarning, match=r"README.txt: skipped") as record:
        project_id = platform.project.import_dir(root)
    assert len(record) == 1
    assert snapshot(platform, project_id) == snapshot(platform, platform.project.import_dir(SLY_PROJECT))


def test_an_image_of_a_format_the_sdk_does_not_know_comes_back_from_an_export(platform, tmp_path):
    project = platform.project.create("gifs")
    ds = platform.dataset.create(project.id, "d")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(buf, format="GIF")
    platform.image.upload(ds.id, "anim", buf.getvalue())
    out = tmp_path / "out"
    platform.project.export_dir(project.id, out)
    assert (out / "d" / "img" / "anim.gif").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = platform.project.import_dir(out)
    assert [i.name for i in platform.image.iterate(project_id=again)] == ["anim.gif"]


def test_import_export_import_gives_the_same_project(platform, tmp_path):
    first = platform.project.import_dir(SLY_PROJECT)
    out = tmp_path / "exported"
    platform.project.export_dir(first, out)
    second = platform.project.import_dir(out)
    assert snapshot(platform, first) == snapshot(platform, second)
    assert len(snapshot(platform, first)) == 4
    assert platform.project.get_meta(first).to_json() == platform.project.get_meta(second).to_json()
    assert json.loads((out / "meta.json").read_text()) == json.loads((SLY_PROJECT / "meta.json").read_text())
    for path in SLY_PROJECT.rglob("img/*"):
        assert (out / path.relative_to(SLY_PROJECT)).read_bytes() == path.read_bytes()


def test_export_passes_the_sdk_requirements(platform, tmp_path):
    project_id = platform.project.import_dir(SLY_PROJECT)
    ds = platform.dataset.create(project_id, "extra")
    platform.dataset.create(project_id, "empty")
    frame = platform.image.upload(ds.id, "frame", np.zeros((10, 12, 3), np.uint8))  # no extension in the name
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    ann = Annotation((10, 12), [Label(Bitmap.from_mask(mask), ObjClass("blob", "bitmap")),
                                Label(Rectangle.from_xyxy(0.333, 1, 5.5, 9), ObjClass("square", "rectangle"))])
    platform.annotation.set(frame.id, ann)
    out = tmp_path / "out"
    platform.project.export_dir(project_id, out)
    assert check_sly_project(out) == []
    assert (out / "extra" / "img" / "frame.png").is_file() and (out / "extra" / "ann" / "frame.png.json").is_file()
    assert (out / "empty" / "img").is_dir() and (out / "empty" / "ann").is_dir()
    assert (out / "ds0" / "datasets" / "child" / "img" / "img_2.png").is_file()
    for ann_file in out.rglob("ann/*.json"):  # every annotation has the keys the SDK's Annotation.from_json reads
        data = json.loads(ann_file.read_text())
        assert {"description", "tags", "size", "objects", "customBigData"} <= set(data)


def test_export_refuses_a_non_empty_target_and_names_that_escape(platform, tmp_path):
    project_id = platform.project.import_dir(SLY_PROJECT)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(InvalidArgumentError, match="not an empty folder"):
        platform.project.export_dir(project_id, busy)
    with platform.store.write() as conn:  # a name that bypassed the API's checks
        conn.execute("UPDATE images SET name = '../../evil.png' WHERE name = 'img_3.png'")
    target = tmp_path / "deep" / "out"
    with pytest.raises(FormatError, match="evil.png"):
        platform.project.export_dir(project_id, target)
    assert not target.exists() or not any(target.iterdir())
    assert not list(tmp_path.rglob("evil.png"))


def test_a_dataset_named_like_a_project_file_is_refused_before_anything_is_written(platform, tmp_path):
    project_id = platform.project.import_dir(SLY_PROJECT)
    with platform.store.write() as conn:  # a name stored before dataset.create refused it
        conn.execute("UPDATE datasets SET name = 'meta.json' WHERE name = 'ds1'")
    target = tmp_path / "out"
    with pytest.raises(FormatError, match="'meta.json' is reserved"):
        platform.project.export_dir(project_id, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_failed_export_leaves_nothing_and_a_retry_succeeds(platform, tmp_path):
    project_id = platform.project.import_dir(SLY_PROJECT)
    [img3] = [i for i in platform.image.iterate(project_id=project_id) if i.name == "img_3.png"]
    blob = Path(img3.path)
    content = blob.read_bytes()
    blob.unlink()  # exported last: the folder is half written when it fails
    target = tmp_path / "out"
    with pytest.raises(FormatError, match="stored file of image"):
        platform.project.export_dir(project_id, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # neither the target nor a temporary folder
    blob.write_bytes(content)
    target.mkdir()  # an empty folder is a fine target too, and so is a link to one
    (tmp_path / "link").symlink_to(target)
    platform.project.export_dir(project_id, tmp_path / "link")
    assert check_sly_project(target) == [] and len(list(target.rglob("img/*"))) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "link", "out"]


def test_a_file_system_error_during_export_is_a_pipeline_error_naming_the_path(platform, tmp_path, monkeypatch):
    project_id = platform.project.import_dir(SLY_PROJECT)

    def full(src, dest):
        raise OSError(28, "No space left on device", str(dest))

    monkeypatch.setattr(project_dir.shutil, "copyfile", full)
    target = tmp_path / "out"
    with pytest.raises(PipelineError, match=r"No space left on device: '.*/out/ds0/img/img_0.png'") as info:
        platform.project.export_dir(project_id, target)
    assert ".export-" not in str(info.value)  # the path the user asked for, not the temporary one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_video_project_import_export_round_trip(platform, tmp_path):
    project_id = platform.project.import_dir(SLY_VIDEO_PROJECT)
    info = platform.project.get(project_id)
    assert info.type == "videos"
    [ds] = platform.dataset.list(project_id)
    [video] = platform.video.list(ds.id)
    assert (video.frames_count, video.fps, video.width, video.height) == (8, 10.0, 32, 24)
    ann = platform.video.get_annotation(video.id)
    assert ann.key == "5c6fd2bd1d0d4aa7a3bd3c1ea1b2d8f1" and len(ann.figures) == 5
    assert ann.to_json()["tags"][1]["frameRange"] == [0, 5]
    out = tmp_path / "out"
    platform.project.export_dir(project_id, out)
    assert check_sly_project(out) == []
    kim = json.loads((out / "key_id_map.json").read_text())
    assert set(kim) == {"tags", "objects", "figures", "videos"}
    assert kim["videos"] == {ann.key: video.id}
    assert set(kim["objects"]) == {o.key for o in ann.objects} and set(kim["figures"]) == {f.key for f in ann.figures}
    assert set(kim["tags"]) == {t.key for t in ann.tags} and len(kim["tags"]) == 2
    again = platform.project.import_dir(out)
    [ds2] = platform.dataset.list(again)
    [video2] = platform.video.list(ds2.id)
    assert video2.hash == video.hash
    assert platform.video.get_annotation(video2.id).to_json() == ann.to_json()


def test_a_malformed_key_id_map_is_tolerated(platform, tmp_path):
    root = copy_project(SLY_VIDEO_PROJECT, tmp_path)
    (root / "key_id_map.json").write_text("{not json")
    assert platform.project.stats(platform.project.import_dir(root))["items"] == 1


# --------------------------------------------------------------------------------------------------- bad input


def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-300])  # the headers stay whole (PIL opens and verifies it), the scan data is cut


def _bad_symlink(root: Path) -> None:
    outside = root.parent / "secret.png"
    outside.write_bytes((SLY_PROJECT / "ds1" / "img" / "img_3.png").read_bytes())
    (root / "ds1" / "img" / "evil.png").symlink_to(outside)


BAD_INPUTS = {
    "missing meta.json": (lambda r: (r / "meta.json").unlink(), "meta.json"),
    "meta.json not JSON": (lambda r: (r / "meta.json").write_text("{oops"), "meta.json"),
    "meta class without shape": (lambda r: _edit_json(r / "meta.json", lambda d: d["classes"][0].pop("shape")),
                                 "meta.json"),
    "annotation not JSON": (lambda r: (r / "ds0" / "ann" / "img_0.png.json").write_text("[1, 2"), "img_0.png.json"),
    "unknown geometry type": (
        lambda r: _edit_json(r / "ds0" / "ann" / "img_0.png.json",
                             lambda d: d["objects"][0].update(geometryType="ellipse")), "img_0.png.json"),
    "class not in meta": (
        lambda r: _edit_json(r / "ds0" / "ann" / "img_1.jpg.json", lambda d: d["objects"][0].update(classTitle="cat")),
        "img_1.jpg.json"),
    "shape differs from the class": (
        lambda r: _edit_json(r / "ds1" / "ann" / "img_3.png.json", lambda d: d["objects"][0].update(classTitle="blob")),
        "img_3.png.json"),
    "tag not in meta": (
        lambda r: _edit_json(r / "ds1" / "ann" / "img_3.png.json", lambda d: d["tags"][0].update(name="season")),
        "img_3.png.json"),
    "image does not open": (lambda r: (r / "ds1" / "img" / "img_3.png").write_bytes(b"\x89PNG broken"), "img_3.png"),
    "truncated JPEG": (lambda r: _truncate(r / "ds0" / "img" / "img_1.jpg"), "img_1.jpg"),
    "a file with an image extension that is not one": (
        lambda r: (r / "ds1" / "img" / "notes.png").write_text("not an image"), "notes.png"),
    "a hidden image": (
        lambda r: shutil.copy(r / "ds1" / "img" / "img_3.png", r / "ds1" / "img" / ".hidden.png"), ".hidden.png"),
    "a hidden dataset": (lambda r: shutil.copytree(r / "ds1", r / ".cache"), ".cache"),
    "a hidden nested dataset": (
        lambda r: shutil.copytree(r / "ds1", r / "ds0" / "datasets" / ".cache"), ".cache"),
    "annotation without its image": (lambda r: (r / "ds1" / "img" / "img_3.png").unlink(), "img_3.png.json"),
    "annotation size differs from the image": (
        lambda r: _edit_json(r / "ds0" / "datasets" / "child" / "ann" / "img_2.png.json",
                             lambda d: d["size"].update(height=99)), "img_2.png.json"),
    "a link out of the project": (_bad_symlink, "evil.png"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_names_the_file_and_leaves_the_platform_unchanged(platform, tmp_path, case):
    platform.project.import_dir(SLY_PROJECT)  # something already there, that must stay as it is
    before = table_counts(platform)
    root = copy_project(SLY_PROJECT, tmp_path, "broken")
    damage, file_name = BAD_INPUTS[case]
    damage(root)
    with pytest.raises(FormatError) as info:
        platform.project.import_dir(root)
    assert file_name in str(info.value)
    assert table_counts(platform) == before
    assert [p.name for p in platform.project.list()] == ["sly_project"]


def _video_clip_broken(root: Path) -> None:
    (root / "ds0" / "video" / "clip.mp4").write_bytes(b"\x00" * 300)


VIDEO_BAD_INPUTS = {
    "video does not open": (_video_clip_broken, "clip.mp4"),
    "figure of an unknown object": (
        lambda r: _edit_json(r / "ds0" / "ann" / "clip.mp4.json",
                             lambda d: d["frames"][0]["figures"][0].update(objectKey="ab" * 16)), "clip.mp4.json"),
    "size differs from the video": (
        lambda r: _edit_json(r / "ds0" / "ann" / "clip.mp4.json", lambda d: d["size"].update(width=64)),
        "clip.mp4.json"),
    "framesCount past the video's": (
        lambda r: _edit_json(r / "ds0" / "ann" / "clip.mp4.json", lambda d: d.update(framesCount=50)), "clip.mp4.json"),
    "frame past the end": (
        lambda r: _edit_json(r / "ds0" / "ann" / "clip.mp4.json", lambda d: d.update(framesCount=50) or
                             d["frames"][0].update(index=40)), "clip.mp4.json"),
    "video object class not in meta": (
        lambda r: _edit_json(r / "ds0" / "ann" / "clip.mp4.json", lambda d: d["objects"][0].update(classTitle="bus")),
        "clip.mp4.json"),
}


@pytest.mark.parametrize("case", list(VIDEO_BAD_INPUTS))
def test_bad_video_input_names_the_file_and_leaves_the_platform_unchanged(platform, tmp_path, case):
    platform.project.import_dir(SLY_VIDEO_PROJECT)
    before = table_counts(platform)
    root = copy_project(SLY_VIDEO_PROJECT, tmp_path, "broken")
    damage, file_name = VIDEO_BAD_INPUTS[case]
    damage(root)
    with pytest.raises(FormatError) as info:
        platform.project.import_dir(root)
    assert file_name in str(info.value)
    assert table_counts(platform) == before


def test_classes_of_other_sdk_shapes_are_kept_but_their_objects_are_refused(platform, tmp_path):
    root = copy_project(SLY_PROJECT, tmp_path)
    line = {"title": "lane", "shape": "line", "color": "#123456", "geometry_config": {}, "hotkey": "",
            "description": ""}
    _edit_json(root / "meta.json", lambda d: d["classes"].append(line))
    project_id = platform.project.import_dir(root)
    assert platform.project.get_meta(project_id).get_obj_class("lane").to_json() == line
    obj = {"classTitle": "lane", "description": "", "tags": [], "geometryType": "line",
           "points": {"exterior": [[1, 1], [5, 5]], "interior": []}}
    _edit_json(root / "ds1" / "ann" / "img_3.png.json", lambda d: d["objects"].append(obj))
    with pytest.raises(FormatError, match="img_3.png.json.*unknown geometryType 'line'"):
        platform.project.import_dir(root)


def test_a_failure_while_writing_rolls_the_whole_import_back(platform, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = ops.insert_image

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise FormatError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "insert_image", failing)
    with pytest.raises(FormatError, match="disk on fire"):
        platform.project.import_dir(SLY_PROJECT)
    assert table_counts(platform) == dict.fromkeys(table_counts(platform), 0)


def test_import_argument_errors(platform, tmp_path):
    with pytest.raises(NotFoundError):
        platform.project.import_dir(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidArgumentError):
        platform.project.import_dir(tmp_path / "file")


def test_items_without_an_sdk_extension_are_exported_with_one(platform, tmp_path):
    project = platform.project.create("clips", type="videos")
    ds = platform.dataset.create(project.id, "d")
    platform.video.upload(ds.id, "clip", SLY_VIDEO_PROJECT / "ds0" / "video" / "clip.mp4")
    out = tmp_path / "out"
    platform.project.export_dir(project.id, out)
    assert (out / "d" / "video" / "clip.mp4").is_file() and (out / "d" / "ann" / "clip.mp4.json").is_file()
    assert check_sly_project(out) == []
