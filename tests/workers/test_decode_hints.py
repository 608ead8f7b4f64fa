"""Reduced decoding (`settings["decode"] = "reduced"`) for the Ultralytics, ONNX and transformers adapters: each
says what its own resize keeps of an image (`decode_hint`), and a large JPEG decoded reduced by that hint gives
the model the same input, within a few grey levels, as the photo decoded whole."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ultralytics")

import yolo_models as ym  # noqa: E402

from workers.decode import decode_reduced, needed_scale  # noqa: E402
from workers.models.base import ModelSpec  # noqa: E402

INF = float("inf")
PHOTOS = [(1200, 1600), (1600, 1200), (1400, 1400)]  # landscape, portrait, square


def _photo(h: int, w: int, seed: int = 0) -> bytes:
    """A smooth photo-like JPEG (quality 90): random colours upscaled, blobs about 100 px wide."""
    import cv2
    from PIL import Image

    small = np.random.default_rng(seed).integers(0, 256, (h // 100 + 2, w // 100 + 2, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _decoded(hint, h: int, w: int):
    """(whole, reduced) decodes of the same photo; the reduced one really is smaller and never below the hint."""
    data = _photo(h, w)
    full, orig = decode_reduced(data, 10**9, None)
    reduced, orig_r = decode_reduced(data, 10**9, hint)
    assert orig == orig_r == (h, w) and full.shape[:2] == (h, w)
    assert reduced.shape[0] <= h // 2 and reduced.shape[1] <= w // 2
    scale = reduced.shape[0] / h
    assert scale >= needed_scale(hint, h, w) * 0.99
    return full, reduced


def _close(a: np.ndarray, b: np.ndarray, mean: float, peak: float) -> None:
    assert a.shape == b.shape
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    assert d.mean() <= mean and d.max() <= peak, (d.mean(), d.max())


# ---------------------------------------------------------------------------------------------------- Ultralytics


@pytest.fixture(scope="module")
def yolo_spec():
    from workers.models.ultralytics import UltralyticsAdapter

    def get(name: str) -> ModelSpec:
        path = ym.cached_pt(name)
        return UltralyticsAdapter.from_file(path, Path(path).read_bytes())[0]

    return get


def test_ultralytics_hints(yolo_spec):
    from workers.models.ultralytics import UltralyticsAdapter as U

    det = yolo_spec("yolo11n")
    assert det.arch_kwargs["imgsz"] == ym.IMGSZ == 160
    assert U.decode_hint(det, None) == ("contain", 160, 160)  # the letterbox of the file's own imgsz
    assert U.decode_hint(det, 320) == ("contain", 320, 320)
    assert U.decode_hint(det, 300) == ("contain", 320, 320)  # rounded up to the stride, as Ultralytics does
    assert U.decode_hint(det, (96, 128)) == ("cover", 96, 128)  # resized exactly while decoding
    assert U.decode_hint(yolo_spec("yolo11n-cls"), None) == ("fit", 160, INF)  # shorter side, then a centre crop


@pytest.mark.parametrize("hw", PHOTOS)
def test_ultralytics_letterbox_of_a_reduced_decode_is_the_letterbox_of_the_whole_photo(yolo_spec, hw):
    from workers.models import _yolo_ops as ops
    from workers.models.ultralytics import UltralyticsAdapter as U

    spec = yolo_spec("yolo11n")
    full, reduced = _decoded(U.decode_hint(spec, None), *hw)
    imgsz = ops.yolo_imgsz(None, spec.arch_kwargs["imgsz"], spec.arch_kwargs["stride"])
    a, b = ops.letterbox([full, reduced], imgsz, spec.arch_kwargs["stride"], auto=True)
    _close(a, b, mean=1.5, peak=12)  # measured: mean 0.68-0.73 grey levels, peak 5


def test_ultralytics_outputs_of_a_reduced_decode_are_in_the_photo_s_pixels(yolo_spec):
    from workers.models.ultralytics import UltralyticsAdapter as U

    spec = yolo_spec("yolo11n")
    adapter = U(spec, "cpu")
    adapter.load_payload(Path(ym.cached_pt("yolo11n")).read_bytes())
    full, reduced = _decoded(U.decode_hint(spec, None), 1200, 1600)
    [out] = adapter.run([reduced], [(1200, 1600)], {"conf": 0.25})[0]
    assert len(out.boxes) > 0 and out.boxes[:, 2].max() > reduced.shape[1]  # rescaled to 1600 x 1200
    assert (out.boxes[:, 2] <= 1600).all() and (out.boxes[:, 3] <= 1200).all()


# ----------------------------------------------------------------------------------------------------------- ONNX


def _onnx_spec(**kw) -> ModelSpec:
    return ModelSpec(framework="onnx", architecture=kw.get("layout", "yolo"), task_type="object_detection",
                     classes=["a"], arch_kwargs={"task": "detect", "stride": 32, **kw})


def test_onnx_hints():
    from workers.models.onnx import OnnxAdapter as O

    fixed = _onnx_spec(layout="yolo", imgsz=[640, 640], dynamic=False)
    assert O.decode_hint(fixed, None) == ("contain", 640, 640)
    assert O.decode_hint(fixed, 640) == ("contain", 640, 640)
    dynamic = _onnx_spec(layout="yolo", imgsz=[640, 640], dynamic=True)
    assert O.decode_hint(dynamic, 320) == ("contain", 320, 320)
    stretch = _onnx_spec(layout="boxes_labels_scores", imgsz=[480, 640], dynamic=False, resize="stretch")
    assert O.decode_hint(stretch, None) == ("cover", 480, 640)
    boxed = _onnx_spec(layout="boxes_labels_scores", imgsz=[480, 640], dynamic=False, resize="letterbox")
    assert O.decode_hint(boxed, None) == ("contain", 480, 640)
    assert O.decode_hint(stretch, (96, 128)) == ("cover", 96, 128)


def test_onnx_export_hint_is_its_letterbox():
    pytest.importorskip("onnxruntime")
    from workers.models.onnx import OnnxAdapter as O

    _, path = ym.cached_export("yolo11n")
    spec = O.from_file(path, Path(path).read_bytes())[0]
    assert O.decode_hint(spec, None) == ("contain", 160, 160)


# --------------------------------------------------------------------------------------------------- transformers


@pytest.fixture(scope="module")
def hf_specs(tmp_path_factory):
    pytest.importorskip("transformers")
    from hf_models import save_tiny

    from workers.models.hf import TransformersAdapter as A

    root = tmp_path_factory.mktemp("hf-hints")
    return {kind: (A.from_directory(save_tiny(kind, root / kind))[0], root / kind)
            for kind in ("detr", "rt_detr", "segformer")}


def test_transformers_hints(hf_specs):
    from workers.models.hf import TransformersAdapter as A

    detr, rt_detr = hf_specs["detr"][0], hf_specs["rt_detr"][0]
    assert A.decode_hint(detr, None) == ("fit", 64, 96)  # shortest / longest edge
    assert A.decode_hint(detr, 80) == ("fit", 80, 80)  # an int: the longer side becomes 80
    assert A.decode_hint(rt_detr, None) == ("cover", 64, 64)  # a fixed size
    assert A.decode_hint(rt_detr, 96) == ("cover", 96, 96)
    assert A.decode_hint(detr, (30, 40)) == ("cover", 30, 40)
    off = ModelSpec(**{**detr.__dict__, "arch_kwargs": {**detr.arch_kwargs, "processor_resizes": False}})
    assert A.decode_hint(off, None) is None  # a processor that does not resize: decoded whole


@pytest.mark.parametrize("kind", ["detr", "rt_detr", "segformer"])
def test_transformers_processor_input_of_a_reduced_decode_is_that_of_the_whole_photo(hf_specs, kind):
    import transformers

    from workers.models.hf import TransformersAdapter as A

    spec, path = hf_specs[kind]
    processor = transformers.AutoImageProcessor.from_pretrained(path, local_files_only=True)
    full, reduced = _decoded(A.decode_hint(spec, None), 1200, 1600)
    a, b = (processor(images=[x], return_tensors="np")["pixel_values"][0] for x in (full, reduced))
    # normalised pixels: a grey level is about 1 / (255 * 0.226) = 0.017
    _close(a, b, mean=0.02, peak=0.2)  # measured: mean 0.001-0.005, peak 0.035
