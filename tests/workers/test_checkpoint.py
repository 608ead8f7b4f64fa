"""The checkpoint file: round trip, URIs, and every way a file can fail to be one."""

from __future__ import annotations

import os
import pickle
import subprocess

import pytest
import torch

from pipeline.exceptions import CheckpointError, NotFoundError
from workers.models import load_checkpoint, parse_checkpoint, save_checkpoint


def _linear_ckpt(path, **kw):
    model = torch.nn.Linear(3, 2)
    args = dict(framework="torchvision", architecture="fasterrcnn_mobilenet_v3_large_320_fpn",
                task_type="detection", classes=["a", "b"], img_size=[64, 96], arch_kwargs={"min_size": 64})
    args.update(kw)
    save_checkpoint(model, path, **args)
    return model


def test_round_trip_reads_everything_from_the_file(tmp_path):
    model = _linear_ckpt(tmp_path / "m.pth")
    ckpt = load_checkpoint(tmp_path / "m.pth")
    assert (ckpt.framework, ckpt.architecture, ckpt.task_type) == (
        "torchvision", "fasterrcnn_mobilenet_v3_large_320_fpn", "detection")
    assert ckpt.classes == ["a", "b"] and ckpt.img_size == (64, 96) and ckpt.arch_kwargs == {"min_size": 64}
    torch.testing.assert_close(ckpt.state_dict["weight"], model.weight.detach())
    assert len(ckpt.sha256) == 64


def test_half_precision_storage_loads_as_float32(tmp_path):
    model = _linear_ckpt(tmp_path / "h.pth", half=True)
    ckpt = load_checkpoint(tmp_path / "h.pth")
    assert ckpt.state_dict["weight"].dtype == torch.float32
    torch.testing.assert_close(ckpt.state_dict["weight"], model.weight.detach().half().float())


def test_file_uri_and_pyarrow_paths(tmp_path):
    _linear_ckpt(tmp_path / "u.pth")
    a = load_checkpoint(f"file://{tmp_path / 'u.pth'}")
    b = load_checkpoint(str(tmp_path / "u.pth"))
    assert a.sha256 == b.sha256


def test_missing_file_is_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "not a PyTorch checkpoint"),
        (b"definitely not a checkpoint", "not a PyTorch checkpoint"),
    ],
)
def test_garbage_is_refused(tmp_path, payload, message):
    (tmp_path / "x.pth").write_bytes(payload)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "x.pth")


@pytest.mark.parametrize("name, head, message", [
    ("photo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is not a model file: it is a PNG image"),
    ("photo.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF", "is not a model file: it is a JPEG image"),
    ("clip.mp4", b"\x00\x00\x00\x20ftypisom\x00\x00", "it is an MP4 / MOV video"),
    ("clip.mkv", b"\x1aE\xdf\xa3\x9fB\x86\x81", "it is a Matroska / WebM video"),
    ("model.onnx", b"<html>404 Not Found</html>", "model.onnx is not a valid ONNX model"),
])
def test_a_file_that_is_no_model_says_what_it_is(tmp_path, name, head, message):
    (tmp_path / name).write_bytes(head + bytes(64))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / name)


def test_a_plain_state_dict_is_not_a_pipeline_checkpoint(tmp_path):
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "sd.pth")
    with pytest.raises(CheckpointError, match="not a pipeline checkpoint"):
        load_checkpoint(tmp_path / "sd.pth")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"task_type": "keypoints"}, "unknown task_type"),
        ({"classes": []}, "classes must be a non-empty list"),
        ({"img_size": [0, 3]}, "img_size"),
    ],
)
def test_bad_fields_are_named(tmp_path, change, message):
    payload = {"format": "pipeline-checkpoint/1", "framework": "torchvision", "architecture": "x",
               "task_type": "detection", "classes": ["a"], "img_size": None, "arch_kwargs": {}, "state_dict": {}}
    payload.update(change)
    torch.save(payload, tmp_path / "f.pth")
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "f.pth")


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):  # unpickling this would create a file
        return (open, (self.target, "w"))


def test_a_pickle_that_would_run_code_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as f:
        torch.save({"format": "pipeline-checkpoint/1", "payload": _Evil(str(marker))}, f)
    # the same payload through plain pickle really would create the file: the test's premise holds
    with open(tmp_path / "evil2.pkl", "wb") as f:
        pickle.dump(_Evil(str(tmp_path / "control")), f)
    with open(tmp_path / "evil2.pkl", "rb") as f:
        pickle.load(f)
    assert (tmp_path / "control").exists()

    with pytest.raises(CheckpointError, match="refused"):
        parse_checkpoint((tmp_path / "evil.pth").read_bytes(), "evil.pth")
    assert not marker.exists()


class _Call:
    """Unpickles as `fn(*args)`."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


@pytest.mark.parametrize("make", [
    lambda path: _Call(os.system, f"touch {path}"),
    lambda path: _Call(subprocess.call, ["touch", str(path)]),
    lambda path: _Call(eval, f"open({str(path)!r}, 'w')"),
])
def test_every_kind_of_code_payload_is_refused_by_name(tmp_path, make):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as f:
        torch.save({"format": "pipeline-checkpoint/1", "payload": make(marker)}, f)
    with pytest.raises(CheckpointError, match=r"refused: .* would run code \(it calls [\w.]+\)") as info:
        parse_checkpoint((tmp_path / "evil.pth").read_bytes(), "evil.pth")
    assert "weights_only" not in str(info.value)  # never the advice to load it unsafely
    assert not marker.exists()
