"""Argument rules of predict(): each mistake is a ValueError raised before any work starts."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.exceptions import InvalidArgumentError
from pipeline.stages import args as _args

IMG = np.zeros((8, 8, 3), np.uint8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "nothing to predict"),
        ({"input": IMG, "project_id": 1}, "exactly one source"),
        ({"project_id": 1, "dataset_id": 2}, "exactly one source"),
        ({"image_ids": [1], "video_id": 2}, "exactly one source"),
        ({"project_id": 0}, "project_id must be a positive int"),
        ({"project_id": "1"}, "project_id must be a positive int"),
        ({"image_ids": []}, "image_ids is empty"),
        ({"image_ids": [1, -2]}, "image_ids must be a positive int"),
        ({"input": IMG, "batch_size": 0}, "batch_size must be a positive int"),
        ({"input": IMG, "batch_size": -4}, "batch_size must be a positive int"),
        ({"input": IMG, "batch_size": 2.5}, "batch_size must be a positive int"),
        ({"input": IMG, "img_size": 0}, "img_size"),
        ({"input": IMG, "img_size": (10,)}, "img_size"),
        ({"input": IMG, "img_size": (10, -1)}, "img_size"),
        ({"input": IMG, "img_size": "big"}, "img_size"),
        ({"input": IMG, "classes": ["zebra"]}, r"unknown class name\(s\) \['zebra'\]"),
        ({"input": IMG, "classes": [1]}, "list of class names"),
        ({"input": IMG, "upload": "merge"}, "unknown upload mode 'merge'"),
        ({"input": IMG, "upload": "append"}, "upload='append' needs platform items"),
        ({"input": "x.jpg", "upload": "iou_merge"}, "upload='iou_merge' needs platform items"),
        ({"input": IMG, "upload": "replace"}, "needs platform items"),
        ({"project_id": 1, "upload": "iou_merge", "settings": {"iou_merge_threshold": 0}}, r"iou_merge_threshold"),
        ({"project_id": 1, "upload": "iou_merge", "settings": {"iou_merge_threshold": 1.5}}, r"iou_merge_threshold"),
        ({"input": IMG, "conf": 2}, r"settings\['conf'\] must be in"),
        ({"input": IMG, "conf": 0.3, "settings": {"conf": 0.5}}, "conf given twice"),
        ({"input": IMG, "max_det": 0}, "max_det"),
        ({"input": IMG, "image_id": 1}, "exactly one source"),
        ({"image_id": 1, "image_ids": [2]}, "either image_id or image_ids"),
        ({"input": IMG, "upload_mode": "x"}, "unknown upload mode"),
        ({"input": IMG, "batchsize": 4}, "did you mean 'batch_size'"),
        ({"input": IMG, "job_id": "abc"}, "job_id resumes an upload"),
        ({"input": IMG, "output": {"csv": "x"}}, "output must be a dict with keys"),
        ({"input": IMG, "output": {"yolo_images": "link"}}, "output must be a dict with keys"),
        ({"input": IMG, "job_id": "abc", "output": {"coco": None}}, "job_id resumes an upload or a file output"),
        ({"input": IMG, "recursive": "yes"}, "recursive must be True or False"),
        ({"input": IMG, "settings": [1]}, "settings must be a dict"),
        ({"input": IMG, "settings": {"max_pixels": "abc"}}, r"settings\['max_pixels'\] must be a positive int"),
        ({"input": IMG, "settings": {"url_timeout": -1}}, r"settings\['url_timeout'\] must be in"),
        ({"input": IMG, "classes": []}, "classes is empty"),
        ({"input": IMG, "classes": ["a", ""]}, "classes must be non-empty names"),
        ({"input": ""}, "input is an empty path"),
        ({"image_ids": [1, 1, 2], "upload": "append"}, "image_ids lists 1 more than once"),
        ({"input": ["a.jpg", "./a.jpg"], "upload": "create"}, "a.jpg more than once"),
    ],
)
def test_argument_errors(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message) as info:
        _args.normalize(kwargs, model_classes=["a", "b", "c"])
    assert isinstance(info.value, ValueError)


def test_aliases_and_defaults():
    a = _args.normalize({"image_id": 5, "upload_mode": "append", "conf": 0.4, "iou": 0.6}, ["a"])
    assert a.image_ids == [5] and a.upload == "append" and a.settings == {"conf": 0.4, "iou": 0.6}
    b = _args.normalize({"input": IMG, "img_size": 320}, ["a"])
    assert b.img_size == 320 and b.batch_size is None and b.upload is None  # an int: the model fits the image into it
    assert _args.normalize({"input": IMG, "img_size": [240, 320]}, ["a"]).img_size == (240, 320)
    # NumPy integers are integers; a repeated item is fine without an upload
    c = _args.normalize({"image_ids": [np.int64(3), np.int64(3)], "batch_size": np.int32(2),
                         "img_size": (np.int64(64), 96), "conf": np.float32(0.5)}, ["a"])
    assert c.image_ids == [3, 3] and c.batch_size == 2 and c.img_size == (64, 96)
    assert type(c.batch_size) is int and all(type(i) is int for i in c.image_ids)


def test_job_id_goes_with_an_upload_or_an_output():
    a = _args.normalize({"input": IMG, "job_id": "files-1", "output": {"parquet": "p", "coco": None}}, ["a"])
    assert a.job_id == "files-1" and a.output == {"parquet": "p"} and a.upload is None
    b = _args.normalize({"input": "s3://bucket/imgs/", "output": {"yolo": "s3://bucket/ds", "yolo_images": "copy"}},
                        ["a"])
    assert b.output == {"yolo": "s3://bucket/ds", "yolo_images": "copy"}
    assert _args.describe_input("s3://bucket/imgs/") == "an object-store URI"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input": IMG}, "text-prompted"),
        ({"input": IMG, "classes": []}, "classes is empty"),
        ({"input": IMG, "classes": ["red car", " "]}, "non-empty names"),
        ({"input": IMG, "classes": ["a", "a"]}, "more than once"),
        ({"input": IMG, "classes": [3]}, "list of class names"),
        ({"input": IMG, "settings": {"prompts": [""]}}, "non-empty names"),
        ({"input": IMG, "classes": ["a"], "settings": {"prompts": ["b"]}}, "given twice"),
    ],
)
def test_prompt_errors(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        _args.normalize(kwargs, model_classes=[], open_vocabulary=True)


def test_classes_of_an_open_vocabulary_model_are_its_prompts_not_a_filter():
    a = _args.normalize({"input": IMG, "classes": ["red car", "zebra"]}, model_classes=[], open_vocabulary=True)
    assert a.prompts == ["red car", "zebra"] and a.settings["prompts"] == ["red car", "zebra"]
    assert a.class_filter is None and a.class_names([]) == ["red car", "zebra"]
    b = _args.normalize({"input": IMG, "settings": {"prompts": ["cat"]}}, model_classes=[], open_vocabulary=True)
    assert b.prompts == ["cat"] and b.classes == ["cat"]
    # a closed-vocabulary model: classes filter its own, which name the objects
    c = _args.normalize({"input": IMG, "classes": ["b"]}, model_classes=["a", "b"])
    assert c.prompts is None and c.class_filter == ["b"] and c.class_names(["a", "b"]) == ["a", "b"]
    assert "prompts" not in c.settings


def test_errors_come_before_any_work(tiny_model, api, tmp_path):
    """Through the real model: a bad call starts nothing on the platform or the replicas."""
    before = api.project.list()
    with pytest.raises(ValueError, match="unknown class"):
        tiny_model.predict(input=IMG, classes=["zebra"], upload="create")
    with pytest.raises(ValueError, match="needs platform items"):
        tiny_model.predict(input=IMG, upload="append")
    assert api.project.list() == before
    from pipeline.exceptions import NotFoundError

    with pytest.raises(NotFoundError, match="999"):
        tiny_model.predict(image_ids=[999])


# --- NaN and infinity (issue 19): every number of the API ----------------------------------------------------
NAN, INF = float("nan"), float("inf")
VIDEO = "clip.mp4"  # video_params is checked on its own before the source: the file need not exist here


@pytest.mark.parametrize(
    "kwargs, message",
    [
        # an adapter's own settings, and numbers inside a setting's list or dict: no range check knows them
        ({"input": IMG, "settings": {"mask_threshold": NAN}}, r"settings\['mask_threshold'\] must be a finite"),
        ({"input": IMG, "settings": {"mask_threshold": np.float32(INF)}}, r"settings\['mask_threshold'\]"),
        ({"input": IMG, "settings": {"anchors": [0.5, NAN]}}, r"settings\['anchors'\] must hold finite numbers"),
        ({"input": IMG, "settings": {"per_class": {"a": -INF}}}, r"settings\['per_class'\] must hold finite"),
        # the pipeline's own settings
        ({"input": IMG, "settings": {"conf": NAN}}, r"settings\['conf'\] must be a finite number"),
        ({"input": IMG, "iou": INF}, r"settings\['iou'\] must be a finite number"),
        ({"project_id": 1, "upload": "iou_merge", "settings": {"iou_merge_threshold": NAN}}, "iou_merge_threshold"),
        ({"input": IMG, "settings": {"url_timeout": INF}}, r"settings\['url_timeout'\]"),
        ({"input": IMG, "settings": {"max_pixels": INF}}, r"settings\['max_pixels'\]"),
        ({"input": IMG, "settings": {"max_det": NAN}}, r"settings\['max_det'\]"),
        # the other numbers: ints only, so a float (NaN or not) is refused by type
        ({"input": IMG, "img_size": NAN}, "img_size"),
        ({"input": IMG, "img_size": (INF, 64)}, "img_size"),
        ({"input": IMG, "settings": {"img_size": NAN}}, "img_size"),
        ({"input": IMG, "batch_size": NAN}, "batch_size"),
        ({"input": IMG, "max_in_flight": INF}, "max_in_flight"),
        ({"input": VIDEO, "video_params": {"stride": NAN}}, r"video_params\['stride'\]"),
        ({"input": VIDEO, "video_params": {"start_frame": INF}}, r"video_params\['start_frame'\]"),
        ({"input": VIDEO, "video_params": {"end_frame": NAN}}, r"video_params\['end_frame'\]"),
        ({"input": VIDEO, "video_params": {"num_frames": INF}}, r"video_params\['num_frames'\]"),
        ({"input": VIDEO, "video_params": {"duration": NAN}}, r"video_params\['duration'\]"),
        ({"input": VIDEO, "video_params": {"duration": INF}}, r"video_params\['duration'\]"),
        ({"input": VIDEO, "video_params": {"duration": np.float64(-INF)}}, r"video_params\['duration'\]"),
    ],
)
def test_nan_and_infinity_are_refused_with_the_key_named(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        _args.normalize(kwargs, model_classes=["a", "b", "c"],
                        model_settings=["conf", "iou", "max_det", "img_size", "mask_threshold", "anchors", "per_class"])


def test_finite_numbers_in_settings_still_pass():
    args = _args.normalize({"input": IMG, "settings": {"mask_threshold": 0.5, "anchors": [0.5, 1, 2]}},
                           model_settings=["conf", "mask_threshold", "anchors"])
    assert args.settings == {"mask_threshold": 0.5, "anchors": [0.5, 1, 2]}
