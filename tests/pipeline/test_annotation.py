"""The Supervisely annotation model: JSON round trips, bitmap encoding, validation, IoU helpers, drawing."""

from __future__ import annotations

import base64
import copy
import io
import json
import zlib

import numpy as np
import pytest
from PIL import Image

import pipeline.annotation as A
from pipeline.annotation import (
    CONFIDENCE_TAG,
    Annotation,
    Bitmap,
    Label,
    ObjClass,
    Polygon,
    ProjectMeta,
    Rectangle,
    Tag,
    TagMeta,
    VideoAnnotation,
    VideoFigure,
    VideoObject,
    VideoTag,
    box_iou,
    box_iou_matrix,
    draw_annotation,
    draw_boxes,
    geometry_iou,
    mask_iou,
)
from pipeline.annotation.geometry import decode_bitmap, encode_bitmap
from pipeline.exceptions import FormatError, InvalidArgumentError

# The SDK's own docstring example (supervisely/geometry/bitmap.py, Bitmap.base64_2_data): a 3 x 3 ring written by
# the SDK's encoder, a palette PNG.
SDK_RING = (
    "eJzrDPBz5+WS4mJgYOD19HAJAtLMIMwIInOeqf8BUmwBPiGuQPr///9Lb86/C2QxlgT5BTM4PLuRBuTwebo4hlTMSa44sKHhISMDuxpTYrr03F6g"
    "DIOnq5/LOqeEJgDM5ht6"
)
RING = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=bool)


def stable(data: object) -> str:
    return json.dumps(data, sort_keys=True)


def _meta() -> ProjectMeta:
    return ProjectMeta(
        [ObjClass("car", "rectangle"), ObjClass("blob", "bitmap"), ObjClass("ring", "polygon"),
         ObjClass("thing", "any_shape")],
        [CONFIDENCE_TAG, TagMeta("weather", "oneof_string", ["sunny", "rainy"]), TagMeta("note", "any_string"),
         TagMeta("reviewed", "none")],
    )


def _object(geometry_type: str) -> dict:
    geometry = {
        "rectangle": {"points": {"exterior": [[1.5, 2], [30, 40.25]], "interior": []}},
        "polygon": {"points": {"exterior": [[0, 0], [20, 0], [20, 20], [0, 20]],
                               "interior": [[[5, 5], [10, 5], [10, 10]]]}},
        "bitmap": {"bitmap": {"data": SDK_RING, "origin": [4, 7]}},
    }[geometry_type]
    title = {"rectangle": "car", "polygon": "ring", "bitmap": "blob"}[geometry_type]
    return {"classTitle": title, "description": "", "tags": [], "geometryType": geometry_type, **geometry}


# ---------------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("geometry_type", ["rectangle", "polygon", "bitmap"])
@pytest.mark.parametrize("with_meta", [True, False])
def test_annotation_json_round_trip_each_geometry(geometry_type, with_meta):
    data = {"description": "", "tags": [], "size": {"height": 50, "width": 60},
            "objects": [_object(geometry_type)], "customBigData": {}}
    ann = Annotation.from_json(copy.deepcopy(data), _meta() if with_meta else None)
    out = ann.to_json()
    if geometry_type == "bitmap":  # our encoder's bytes may differ from an older PIL's: compare the masks
        assert np.array_equal(decode_bitmap(out["objects"][0]["bitmap"]["data"]), RING)
        out["objects"][0]["bitmap"]["data"] = data["objects"][0]["bitmap"]["data"]
    assert out == data
    again = Annotation.from_json(ann.to_json(), _meta() if with_meta else None).to_json()
    assert stable(again) == stable(ann.to_json())


def test_round_trip_keeps_tags_image_tags_and_pass_through_keys():
    server = {"id": 1001, "classId": 11, "labelerLogin": "alice", "createdAt": "2024-03-01T10:00:00.000Z",
              "updatedAt": "2024-03-01T10:00:00.000Z", "nnCreated": True, "nnUpdated": False, "shape": "rectangle"}
    data = {
        "description": "street",
        "tags": [{"name": "weather", "value": "sunny", "id": 5, "tagId": 71}, {"name": "reviewed"}],
        "size": {"height": 50, "width": 60},
        "objects": [{**_object("rectangle"), **server,
                     "tags": [{"name": "confidence", "value": 0.87, "labelerLogin": "bot"},
                              {"name": "note", "value": "left lane"}]}],
        "customBigData": {"k": [1, 2]},
        "name": "img_0.png",  # an unknown top-level key
    }
    for meta in (_meta(), None):
        ann = Annotation.from_json(copy.deepcopy(data), meta)
        assert ann.to_json() == data
        assert stable(Annotation.from_json(ann.to_json(), meta).to_json()) == stable(data)
    ann = Annotation.from_json(data, _meta())
    assert ann.labels[0].confidence == pytest.approx(0.87)
    assert [t.name for t in ann.img_tags] == ["weather", "reviewed"]
    assert ann.description == "street"


def test_coordinates_are_rounded_to_two_decimals_and_integral_values_are_ints():
    rect = Rectangle(top=2.0, left=1.23456, bottom=10.999, right=12)
    assert rect.to_json()["points"]["exterior"] == [[1.23, 2], [12, 11]]
    assert isinstance(rect.to_json()["points"]["exterior"][0][1], int)
    text = stable(Label(rect, ObjClass("car", "rectangle")).to_json())
    assert stable(Label.from_json(json.loads(text)).to_json()) == text


def test_meta_json_round_trip_and_missing_project_type():
    data = {
        "classes": [{"title": "car", "shape": "rectangle", "color": "#F5A623", "geometry_config": {}, "id": 11,
                     "hotkey": "1", "description": "d"}],
        "tags": [{"name": "weather", "value_type": "oneof_string", "color": "#50E3C2", "values": ["a", "b"],
                  "id": 72, "hotkey": "w", "applicable_type": "imagesOnly", "classes": ["car"]},
                 {"name": "confidence", "value_type": "any_number", "color": "#9013FE", "applicable_type": "all",
                  "classes": [], "hotkey": ""}],
        "projectType": "images",
        "projectSettings": {"multiView": {"enabled": False}},
    }
    assert ProjectMeta.from_json(copy.deepcopy(data)).to_json() == data
    no_type = {k: v for k, v in data.items() if k != "projectType"}
    assert ProjectMeta.from_json(no_type).project_type == "images"
    assert ProjectMeta.from_json({**data, "projectType": "videos"}).project_type == "videos"


def test_obj_class_colors_are_deterministic_and_json_has_the_sdk_keys():
    a, b = ObjClass("car", "rectangle"), ObjClass("car", "rectangle")
    assert a.color == b.color and a.color.startswith("#") and len(a.color) == 7
    assert ObjClass("dog", "rectangle").color != a.color
    assert set(a.to_json()) == {"title", "shape", "color", "geometry_config", "hotkey", "description"}
    assert ObjClass.from_json({**a.to_json(), "id": 7}).id == 7
    with pytest.raises(InvalidArgumentError):
        ObjClass("car", "circle")
    with pytest.raises(InvalidArgumentError):
        ObjClass("car", "rectangle", color="red")


def test_tag_meta_json_keys():
    assert set(TagMeta("w", "oneof_string", ["a"]).to_json()) == {
        "name", "value_type", "color", "values", "applicable_type", "classes", "hotkey"}
    assert "values" not in CONFIDENCE_TAG.to_json()
    assert Tag("reviewed").to_json() == {"name": "reviewed"}
    assert Tag(CONFIDENCE_TAG, np.float32(0.93)).to_json() == {"name": "confidence", "value": 0.93}


@pytest.mark.parametrize(
    "meta, value",
    [
        (TagMeta("n", "any_number"), "x"),
        (TagMeta("n", "any_number"), True),
        (TagMeta("s", "any_string"), 3),
        (TagMeta("o", "oneof_string", ["a", "b"]), "c"),
        (TagMeta("z", "none"), 1),
    ],
)
def test_tag_values_must_fit_their_meta(meta, value):
    with pytest.raises(InvalidArgumentError):
        Tag(meta, value)


# ------------------------------------------------------------------------------------------------------ geometry


def test_rectangle_xyxy_area_bbox_and_mask_rule():
    r = Rectangle.from_xyxy(1.2, 2.0, 4.5, 5.0)
    assert r.to_xyxy() == (1.2, 2.0, 4.5, 5.0)
    assert (r.top, r.left, r.bottom, r.right) == (2.0, 1.2, 5.0, 4.5)
    assert r.area == pytest.approx(3.3 * 3.0)
    assert r.to_bbox() == r
    mask = r.to_mask(8, 8)
    expected = np.zeros((8, 8), bool)
    expected[2:5, 1:5] = True  # x in [floor(1.2), ceil(4.5)) = [1, 5), y in [2, 5)
    assert np.array_equal(mask, expected)
    clipped = Rectangle.from_xyxy(-3, -3, 100, 2).to_mask(4, 5)
    assert clipped.shape == (4, 5) and clipped[:2].all() and not clipped[2:].any()
    with pytest.raises(ValueError):
        Rectangle(top=5, left=0, bottom=1, right=3)
    with pytest.raises(ValueError):
        Rectangle.from_xyxy(0, 0, float("nan"), 1)


def test_bitmap_from_mask_crops_and_to_mask_pastes_back():
    full = np.zeros((20, 30), bool)
    full[5:9, 10:13] = True
    full[7, 20] = True
    bm = Bitmap.from_mask(full)
    assert bm.origin == (10, 5) and bm.data.shape == (4, 11)
    assert bm.area == 13
    assert bm.to_bbox() == Rectangle(top=5, left=10, bottom=9, right=21)
    assert np.array_equal(bm.to_mask(20, 30), full)
    assert np.array_equal(bm.to_bbox().to_mask(20, 30), _square(10, 5, 21, 9, 20, 30))  # the box covers the pixels
    with pytest.raises(ValueError):
        Bitmap.from_mask(np.zeros((4, 4), bool))
    with pytest.raises(ValueError):
        Bitmap(np.zeros((2, 2), bool))
    assert not bm.data.flags.writeable


def test_bitmap_to_mask_clips_at_the_image_edges():
    bm = Bitmap(np.ones((4, 4), bool), origin=(-2, 3))
    mask = bm.to_mask(5, 5)
    expected = np.zeros((5, 5), bool)
    expected[3:5, 0:2] = True
    assert np.array_equal(mask, expected)
    assert not Bitmap(np.ones((2, 2), bool), origin=(10, 10)).to_mask(5, 5).any()


@pytest.mark.parametrize("seed", range(8))
def test_bitmap_encoding_is_exact_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((int(rng.integers(1, 70)), int(rng.integers(1, 70)))) < rng.random()
    mask[rng.integers(0, mask.shape[0]), rng.integers(0, mask.shape[1])] = True
    assert np.array_equal(decode_bitmap(encode_bitmap(mask)), mask)
    bm = Bitmap(mask, origin=(int(rng.integers(0, 50)), int(rng.integers(0, 50))))
    assert Bitmap.from_json(bm.to_json()) == bm


def test_bitmap_encoding_is_the_sdks_palette_png():
    raw = zlib.decompress(base64.b64decode(encode_bitmap(RING)))
    img = Image.open(io.BytesIO(raw))
    assert img.format == "PNG" and img.mode == "P" and img.info.get("transparency") == 0
    assert img.getpalette()[:6] == [0, 0, 0, 255, 255, 255]
    assert np.array_equal(np.asarray(img), RING.astype(np.uint8))


def test_decodes_an_sdk_written_palette_bitmap():
    assert np.array_equal(decode_bitmap(SDK_RING), RING)


def _png(img: Image.Image, compress: bool = True) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = zlib.compress(buf.getvalue()) if compress else buf.getvalue()
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    "mode",
    ["RGBA", "LA", "L", "1", "RGB", "RGBA-uncompressed"],
)
def test_decodes_bitmaps_written_by_other_tools(mode):
    mask = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    if mode.startswith("RGBA"):
        arr = np.zeros((2, 3, 4), np.uint8)
        arr[..., :3] = 200  # colour everywhere: only the alpha channel says where the mask is
        arr[..., 3] = mask * 255
        img = Image.fromarray(arr, "RGBA")
    elif mode == "LA":
        arr = np.stack([np.full((2, 3), 99, np.uint8), mask.astype(np.uint8) * 255], axis=-1)
        img = Image.fromarray(arr, "LA")
    elif mode == "RGB":
        img = Image.fromarray(np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=-1), "RGB")
    else:
        img = Image.fromarray(mask.astype(np.uint8) * 255, "L").convert(mode)
    assert np.array_equal(decode_bitmap(_png(img, compress=not mode.endswith("uncompressed"))), mask)


@pytest.mark.parametrize("data", ["not base64 at all!!", base64.b64encode(zlib.compress(b"not a png")).decode()])
def test_a_bitmap_that_is_not_a_png_is_a_format_error(data):
    with pytest.raises(FormatError, match="bitmap"):
        decode_bitmap(data)


def test_polygon_with_hole_mask_area_and_bbox():
    poly = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(3, 3), (7, 3), (7, 7), (3, 7)]])
    mask = poly.to_mask(12, 12)
    assert mask[1, 1] and mask[9, 9] and not mask[5, 5] and not mask[11, 11]
    assert poly.area == pytest.approx(100 - 16)
    assert poly.to_bbox() == Rectangle(top=0, left=0, bottom=10, right=10)
    with pytest.raises(ValueError):
        Polygon([(0, 0), (1, 1)])


# ----------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda o: o.update(classTitle="bus"), "class 'bus' is not in the project meta"),
        (lambda o: o.update(geometryType="bitmap", bitmap={"data": SDK_RING, "origin": [0, 0]}),
         "is a rectangle class"),
        (lambda o: o.update(geometryType="ellipse"), "unknown geometryType 'ellipse'"),
        (lambda o: o.update(tags=[{"name": "mood", "value": "x"}]), "tag 'mood' is not in the project meta"),
        (lambda o: o.update(tags=[{"name": "confidence", "value": "high"}]), "any_number"),
        (lambda o: o["points"].update(exterior=[[1, 2]]), "2 exterior points"),
        (lambda o: o["points"].update(exterior=[[10, 2], [1, 5]]), "left <= right"),
        (lambda o: o.pop("points"), "missing key 'points'"),
    ],
)
def test_from_json_with_meta_rejects_what_does_not_fit(change, message):
    obj = _object("rectangle")
    change(obj)
    data = {"size": {"height": 50, "width": 60}, "objects": [obj], "tags": []}
    with pytest.raises(FormatError, match=message) as info:
        Annotation.from_json(data, _meta())
    assert "object 0" in str(info.value)


def test_any_shape_class_takes_every_geometry_and_an_image_tag_must_be_in_the_meta():
    objs = [{**_object(g), "classTitle": "thing"} for g in ("rectangle", "polygon", "bitmap")]
    ann = Annotation.from_json({"size": {"height": 50, "width": 60}, "objects": objs, "tags": []}, _meta())
    assert [lb.geometry.geometry_type for lb in ann.labels] == ["rectangle", "polygon", "bitmap"]
    with pytest.raises(FormatError, match="tag 'mood'"):
        Annotation.from_json({"size": {"height": 5, "width": 6}, "objects": [], "tags": [{"name": "mood"}]}, _meta())
    with pytest.raises(FormatError, match="size"):
        Annotation.from_json({"objects": []}, _meta())


def test_without_meta_classes_come_from_the_json():
    ann = Annotation.from_json({"size": {"height": 50, "width": 60}, "objects": [_object("polygon")]})
    assert ann.labels[0].obj_class == ObjClass("ring", "polygon")
    assert ann.required_meta().get_obj_class("ring").shape == "polygon"


def test_label_class_must_take_the_geometry():
    with pytest.raises(ValueError, match="rectangle class"):
        Label(Bitmap(RING), ObjClass("car", "rectangle"))
    assert Label(Bitmap(RING), ObjClass("x", "any_shape")).geometry == Bitmap(RING)


def test_annotation_is_immutable_and_add_labels_returns_a_new_one():
    ann = Annotation((10, 20))
    label = Label(Rectangle(0, 0, 5, 5), ObjClass("car", "rectangle"), [Tag(CONFIDENCE_TAG, 0.5)])
    more = ann.add_labels([label])
    assert ann.labels == () and more.labels == (label,)
    assert more.clone(description="x").description == "x"
    assert more.labels[0].confidence == 0.5 and Label(Rectangle(0, 0, 1, 1), label.obj_class).confidence is None
    with pytest.raises(AttributeError):
        ann.description = "y"  # type: ignore[misc]
    with pytest.raises(ValueError):
        Annotation((10.5, 20))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------- meta


def test_meta_merge_is_a_union_and_a_shape_conflict_is_a_format_error():
    a = ProjectMeta([ObjClass("car", "rectangle")], [CONFIDENCE_TAG])
    b = ProjectMeta([ObjClass("car", "rectangle", color="#000000"), ObjClass("dog", "bitmap")],
                    [TagMeta("w", "oneof_string", ["x"])])
    merged = a.merge(b)
    assert [c.name for c in merged.obj_classes] == ["car", "dog"]
    assert merged.get_obj_class("car").color == a.get_obj_class("car").color  # ours is kept
    assert [t.name for t in merged.tag_metas] == ["confidence", "w"]
    assert a.merge(a) is a
    with pytest.raises(FormatError, match="'car' is a rectangle"):
        a.merge(ProjectMeta([ObjClass("car", "bitmap")]))
    with pytest.raises(FormatError, match="confidence"):
        a.merge(ProjectMeta(tag_metas=[TagMeta("confidence", "any_string")]))
    assert ProjectMeta([ObjClass("car", "any_shape")]).merge(ProjectMeta([ObjClass("car", "bitmap")])).get_obj_class(
        "car").shape == "any_shape"
    oneof = ProjectMeta(tag_metas=[TagMeta("w", "oneof_string", ["x"])]).merge(
        ProjectMeta(tag_metas=[TagMeta("w", "oneof_string", ["y", "x"])]))
    assert oneof.get_tag_meta("w").possible_values == ("x", "y")


@pytest.mark.parametrize(
    "classes, name, shape, expected",
    [
        ([], "car", "rectangle", ("car", "rectangle")),
        ([("car", "rectangle")], "car", "rectangle", ("car", "rectangle")),
        ([("car", "rectangle")], "car", "bitmap", ("car_nn", "bitmap")),
        ([("car", "rectangle"), ("car_nn", "bitmap")], "car", "bitmap", ("car_nn", "bitmap")),
        ([("car", "rectangle"), ("car_nn", "polygon")], "car", "bitmap", ("car_nn_nn", "bitmap")),
        ([("car", "any_shape")], "car", "bitmap", ("car", "any_shape")),
    ],
)
def test_resolve_class(classes, name, shape, expected):
    meta = ProjectMeta([ObjClass(n, s) for n, s in classes])
    got = meta.resolve_class(name, shape)
    assert (got.name, got.shape) == expected


def test_meta_rejects_duplicate_names_and_add_obj_class_returns_a_new_meta():
    with pytest.raises(ValueError, match="two classes"):
        ProjectMeta([ObjClass("a", "rectangle"), ObjClass("a", "bitmap")])
    meta = ProjectMeta()
    assert meta.add_obj_class(ObjClass("a", "rectangle")).get_obj_class("a") is not None
    assert meta.get_obj_class("a") is None and meta.get_tag_meta("x") is None
    with pytest.raises(InvalidArgumentError):
        meta.add_obj_class(ObjClass("a", "rectangle")).add_obj_class(ObjClass("a", "rectangle"))


# ------------------------------------------------------------------------------------------------------------ IoU


@pytest.mark.parametrize(
    "a, b, iou",
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
        ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching edges
        ((0, 0, 10, 10), (5, 0, 15, 10), 1 / 3),
        ((0, 0, 100, 100), (0, 0, 100, 91), 0.91),  # above a 0.9 merge threshold
        ((0, 0, 100, 100), (0, 0, 100, 89), 0.89),  # below it
        ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),  # empty boxes
    ],
)
def test_box_iou(a, b, iou):
    assert box_iou(a, b) == pytest.approx(iou)
    assert box_iou_matrix(np.array([a]), np.array([b]))[0, 0] == pytest.approx(iou)
    assert geometry_iou(Rectangle.from_xyxy(*a), Rectangle.from_xyxy(*b), 200, 200) == pytest.approx(iou)


def test_box_iou_matrix_shape_and_values():
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], dtype=np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [50, 50, 60, 60]], dtype=np.float32)
    m = box_iou_matrix(a, b)
    assert m.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert m[i, j] == pytest.approx(box_iou(a[i], b[j]))
    assert box_iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)


def _square(x0, y0, x1, y1, h=120, w=120) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.mark.parametrize(
    "g1, g2, iou",
    [
        (Bitmap.from_mask(_square(0, 0, 100, 100)), Bitmap.from_mask(_square(0, 0, 100, 91)), 0.91),
        (Bitmap.from_mask(_square(0, 0, 100, 100)), Bitmap.from_mask(_square(0, 0, 100, 89)), 0.89),
        (Rectangle.from_xyxy(0, 0, 100, 100), Bitmap.from_mask(_square(0, 0, 100, 91)), 0.91),  # mixed
        (Bitmap.from_mask(_square(0, 0, 100, 89)), Rectangle.from_xyxy(0, 0, 100, 100), 0.89),  # mixed
        (Polygon([(0, 0), (99, 0), (99, 99), (0, 99)]), Bitmap.from_mask(_square(0, 0, 100, 100)), 1.0),
        (Bitmap.from_mask(_square(0, 0, 10, 10)), Bitmap.from_mask(_square(50, 50, 60, 60)), 0.0),
    ],
)
def test_geometry_iou_masks_and_mixed(g1, g2, iou):
    assert geometry_iou(g1, g2, 120, 120) == pytest.approx(iou)
    assert geometry_iou(g1, g2, 120, 120) == pytest.approx(mask_iou(g1.to_mask(120, 120), g2.to_mask(120, 120)))


def test_mask_iou_edge_cases():
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 0.0
    with pytest.raises(ValueError):
        mask_iou(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


# ---------------------------------------------------------------------------------------------------------- video


def _video() -> tuple[VideoAnnotation, ProjectMeta]:
    meta = ProjectMeta([ObjClass("car", "rectangle"), ObjClass("smoke", "bitmap")],
                       [TagMeta("scene", "any_string"), TagMeta("moving", "none")], project_type="videos")
    car = VideoObject(meta.get_obj_class("car"), [Tag(meta.get_tag_meta("scene"), "parked")])
    smoke = VideoObject(meta.get_obj_class("smoke"))
    ann = VideoAnnotation((24, 32), 10, [car, smoke], [], [VideoTag(meta.get_tag_meta("moving"), frame_range=(0, 4))])
    ann = ann.add_figures([VideoFigure(car, Rectangle.from_xyxy(1, 2, 10, 12), i) for i in (0, 2, 4)])
    ann = ann.add_figures([VideoFigure(smoke, Bitmap(RING, (3, 3)), 2)])
    return ann, meta


def test_video_annotation_json_round_trip():
    ann, meta = _video()
    data = ann.to_json()
    assert set(data) == {"size", "description", "key", "tags", "objects", "frames", "framesCount"}
    assert data["tags"][0]["frameRange"] == [0, 4] and len(data["key"]) == 32
    assert data["frames"][1]["figures"][1]["geometry"]["bitmap"]["origin"] == [3, 3]
    for m in (meta, None):
        back = VideoAnnotation.from_json(copy.deepcopy(data), m)
        assert back.to_json() == data
        assert stable(VideoAnnotation.from_json(back.to_json(), m).to_json()) == stable(data)
    assert [f.geometry.geometry_type for f in ann.figures_on_frame(2)] == ["rectangle", "bitmap"]
    assert ann.figures_on_frame(3) == []
    assert VideoAnnotation.from_json(data).objects[1].obj_class.shape == "bitmap"  # inferred without a meta


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["frames"][0]["figures"][0].update(objectKey="ffff"), "objectKey 'ffff'"),
        (lambda d: d["frames"][0].update(index=10), "outside 0..9"),
        (lambda d: d["objects"][0].update(classTitle="bus"), "class 'bus' is not in the project meta"),
        (lambda d: d["frames"][0]["figures"][0].update(geometryType="bitmap"), "is a rectangle class"),
        (lambda d: d["tags"][0].update(name="weather"), "tag 'weather' is not in the project meta"),
        (lambda d: d.pop("framesCount"), "framesCount"),
    ],
)
def test_video_from_json_rejects_what_does_not_fit(change, message):
    ann, meta = _video()
    data = ann.to_json()
    change(data)
    with pytest.raises(FormatError, match=message):
        VideoAnnotation.from_json(data, meta)


def test_video_add_objects_and_keys():
    ann, meta = _video()
    extra = VideoObject(meta.get_obj_class("car"))
    assert len(ann.add_objects([extra]).objects) == 3 and len(ann.objects) == 2
    assert len(extra.key) == 32 and int(extra.key, 16) >= 0
    with pytest.raises(ValueError):
        VideoAnnotation((2, 2), 5, [], [], ()).add_figures([VideoFigure(extra, Rectangle(0, 0, 1, 1), 0)])


# -------------------------------------------------------------------------------------------------------- drawing


def test_draw_annotation_changes_pixels_where_labels_are_only():
    img = np.full((60, 80, 3), 100, np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[30:50, 40:70] = True
    ann = Annotation((60, 80), [
        Label(Rectangle.from_xyxy(5, 5, 25, 25), ObjClass("car", "rectangle"), [Tag(CONFIDENCE_TAG, 0.9)]),
        Label(Bitmap.from_mask(mask), ObjClass("blob", "bitmap")),
    ])
    out = draw_annotation(img, ann)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.shares_memory(out, img) and (img == 100).all()
    assert (out[40, 55] != img[40, 55]).any()  # inside the mask
    assert (out[15, 5] != img[15, 5]).any()  # on the box outline
    assert (out[58, 2] == img[58, 2]).all()  # far from both
    assert np.array_equal(draw_annotation(img, Annotation((60, 80))), img)


def test_draw_boxes_with_masks_scores_and_colors():
    img = np.zeros((40, 40, 3), np.uint8)
    masks = np.zeros((2, 40, 40), bool)
    masks[0, 20:30, 20:30] = True
    out = draw_boxes(img, np.array([[2, 2, 12, 12], [20, 20, 30, 30]]), ["a", "b"], np.array([0.5, 0.75]),
                     masks=masks, colors=["#FF0000", (0, 255, 0)])
    assert out.shape == img.shape and out[25, 25, 0] > 0
    gray = draw_boxes(np.zeros((40, 40), np.uint8), np.zeros((0, 4)), [], None)
    assert gray.shape == (40, 40, 3)
    with pytest.raises(ValueError, match="class names"):
        draw_boxes(img, np.zeros((2, 4)), ["a"])


def test_public_names_are_pinned():
    assert sorted(A.__all__) == sorted([
        "CONFIDENCE_TAG", "GEOMETRY_TYPES", "SHAPES", "TAG_VALUE_TYPES", "Annotation", "Bitmap", "Geometry", "Graph", "Label",
        "ObjClass", "Polygon", "ProjectMeta", "Rectangle", "Tag", "TagMeta", "VideoAnnotation", "VideoFigure",
        "VideoFrame", "VideoObject", "VideoTag", "box_iou", "box_iou_matrix", "draw_annotation", "draw_boxes",
        "geometry_from_json", "geometry_iou", "mask_iou",
    ])


def test_records_pickle_for_ray_and_stay_read_only():
    import pickle

    ann = Annotation.from_json({"size": {"height": 50, "width": 60}, "tags": [{"name": "reviewed"}],
                                "objects": [_object(g) for g in ("rectangle", "polygon", "bitmap")]}, _meta())
    back = pickle.loads(pickle.dumps(ann))
    assert back == ann and back.to_json() == ann.to_json()
    assert not back.labels[2].geometry.data.flags.writeable
    video, meta = _video()
    assert pickle.loads(pickle.dumps(video)).to_json() == video.to_json()
    assert pickle.loads(pickle.dumps(meta)) == meta
    label = Label.from_json({**_object("rectangle"), "id": 3}, _meta())
    with pytest.raises(TypeError):
        label.extra["id"] = 4  # type: ignore[index]
    with pytest.raises(AttributeError):
        label.geometry.top = 1  # type: ignore[misc]
