"""The `onnx` adapter: Ultralytics' ONNX exports against Ultralytics' own predict (on the export and on the `.pt` at
the same square input) and against ONNX Runtime called directly; box/label/score models with a sidecar; files that
must be refused."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yolo_models as ym

pytest.importorskip("onnxruntime")
pytest.importorskip("ultralytics")

from yolo_models import assert_same_boxes, mask_ious, match  # noqa: E402

from pipeline.exceptions import CheckpointError, ModelLoadError  # noqa: E402
from workers.models.onnx import OnnxAdapter  # noqa: E402


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


def export(folder: Path, name: str, **kwargs) -> tuple[str, str]:
    """(.pt, .onnx) of the bundled YAML `name` exported at imgsz 160 (once per session and kwargs, shared with the
    other test modules)."""
    return ym.cached_export(name, **kwargs)


def adapter(path: str, **options) -> OnnxAdapter:
    spec, payload = OnnxAdapter.from_file(path, Path(path).read_bytes(), **options)
    a = OnnxAdapter(spec, "cpu")
    a.load_payload(payload)
    return a


def run(a: OnnxAdapter, images, settings=None):
    return a.run(images, [im.shape[:2] for im in images], settings)[0]


def predict(path: str, img: np.ndarray, **kwargs):
    from ultralytics import YOLO

    return YOLO(path, task=kwargs.pop("task", None)).predict(np.ascontiguousarray(img[..., ::-1]), verbose=False, **kwargs)[0]


def assert_close_to_pt(out, res) -> None:
    """The export against the `.pt` at the same square input: boxes within 1 px, scores within 1e-2 relative."""
    assert len(out.boxes) == len(res.boxes) >= 5
    order = match(out, res.boxes)
    np.testing.assert_allclose(out.boxes, res.boxes.xyxy.numpy()[order], atol=1.0)
    np.testing.assert_allclose(out.scores, res.boxes.conf.numpy()[order], rtol=1e-2)
    np.testing.assert_array_equal(out.class_ids, res.boxes.cls.numpy().astype(np.int64)[order])


# ------------------------------------------------------------------------------------------------ YOLO exports


@pytest.mark.parametrize("name,kwargs", [("yolo11n", {}), ("yolo11n-seg", {}), ("yolo11n-pose", {}),
                                         ("yolo26n", {"nms": False})])
def test_export_parity_with_ultralytics(onnx_dir, name, kwargs):
    pt, onnx_path = export(onnx_dir, name, **kwargs)
    a = adapter(onnx_path)
    assert a.spec.architecture == ("yolo_end2end" if kwargs.get("nms") is False else "yolo")
    imgs = ym.images()
    task = a.spec.arch_kwargs["task"]
    for img, out in zip(imgs, run(a, imgs)):
        res = predict(onnx_path, img, task=task)
        order = assert_same_boxes(out, res)
        assert_close_to_pt(out, predict(pt, img, rect=False, nms=kwargs.get("nms")))  # the .pt, square input
        if task == "segment":
            from ultralytics.utils import ops

            ref = ops.scale_masks(res.masks.data[order][None].float(), img.shape[:2])[0] > 0.5
            assert mask_ious(out.masks, ref.numpy()).min() >= 0.98
        if task == "pose":
            np.testing.assert_allclose(out.keypoints, res.keypoints.data.numpy()[order], atol=1.0)
            assert a.spec.arch_kwargs["kpt_names"][0] == [f"kp{j}" for j in range(17)]


def test_obb_export_parity(onnx_dir):
    """An oriented-box export: rotated NMS on its raw output (4 + classes + angle channels), against Ultralytics'
    predictor on the export and on the .pt at the same square input."""
    pt, onnx_path = export(onnx_dir, "yolo11n-obb")
    a = adapter(onnx_path)
    assert (a.spec.task_type, a.spec.architecture) == ("oriented_detection", "yolo")
    for img, out in zip(ym.images(), run(a, ym.images())):
        assert_same_boxes(out, predict(onnx_path, img, task="obb"), min_boxes=10)
        ref = predict(pt, img, rect=False)
        order = match(out, ref)
        np.testing.assert_allclose(out.obb[:, :4], ref.obb.xywhr.numpy()[order][:, :4], atol=1.0)


def test_a_semantic_export_is_refused_naming_the_pt(onnx_dir):
    """Ultralytics bakes the argmax into a semantic model's ONNX export: a class map without probabilities."""
    _, onnx_path = export(onnx_dir, "yolo26n-sem")
    with pytest.raises(ModelLoadError, match=r"semantic-segmentation export: it outputs a class map without "
                                             r"probabilities.*Deploy the model's \.pt"):
        adapter(onnx_path)


def test_rtdetr_export_parity(onnx_dir):
    """Ultralytics' RT-DETR export (metadata head RTDETRDecoder): layout rtdetr, equal to `RTDETR(export)`'s
    predictor and within 1 px of the .pt."""
    from ultralytics import RTDETR

    pt, onnx_path = export(onnx_dir, "rtdetr-l")
    a = adapter(onnx_path)
    assert (a.spec.architecture, a.spec.task_type, a.spec.arch_kwargs["resize"]) == ("rtdetr", "detection", "stretch")
    for img, out in zip(ym.images(), run(a, ym.images())):
        assert_same_boxes(out, RTDETR(onnx_path).predict(np.ascontiguousarray(img[..., ::-1]), verbose=False)[0],
                          min_boxes=20)
        assert_close_to_pt(out, predict(pt, img))


def test_classify_export_parity(onnx_dir):
    pt, onnx_path = export(onnx_dir, "yolo11n-cls")
    a = adapter(onnx_path)
    for img, out in zip(ym.images(), run(a, ym.images())):
        res = predict(onnx_path, img, task="classify")
        np.testing.assert_allclose(out.probs, res.probs.data.numpy(), atol=1e-4)
        np.testing.assert_allclose(out.probs, predict(pt, img).probs.data.numpy(), rtol=1e-2, atol=1e-4)


def test_dynamic_export_letterboxes_each_image_minimally(onnx_dir):
    """A dynamic-shape export gets Ultralytics' per-image rectangle, at the export's imgsz (Ultralytics' own predict
    would fall back to 640 for it unless imgsz is given)."""
    pt, onnx_path = export(onnx_dir, "yolo11n", dynamic=True)
    a = adapter(onnx_path)
    assert a.spec.arch_kwargs["dynamic"]
    for img, out in zip(ym.images(), run(a, ym.images())):
        assert_same_boxes(out, predict(onnx_path, img, task="detect", imgsz=ym.IMGSZ))
        assert_same_boxes(out, predict(pt, img))


def test_raw_outputs_equal_onnxruntime_called_directly(onnx_dir):
    import onnxruntime as ort
    from ultralytics.data.augment import LetterBox

    _, onnx_path = export(onnx_dir, "yolo11n-seg")
    a = adapter(onnx_path)
    imgs = ym.images()
    groups = a.predict(imgs, a.settings_with_defaults({}))
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    for _, idx, outs, _shape in groups:
        for j, i in enumerate(idx):
            x = LetterBox(ym.IMGSZ, auto=False)(image=imgs[i]).transpose(2, 0, 1)[None].astype(np.float32) / 255
            for ours_, direct in zip(outs, session.run(None, {"images": x})):
                np.testing.assert_allclose(ours_[j], direct[0], atol=1e-5)


def test_fixed_input_refuses_another_img_size(onnx_dir):
    from pipeline.exceptions import InvalidArgumentError

    _, onnx_path = export(onnx_dir, "yolo11n")
    a = adapter(onnx_path)
    with pytest.raises(InvalidArgumentError, match="fixed"):
        run(a, ym.images()[:1], {"img_size": 320})
    # and before any work, in the driver (with the other settings' values)
    with pytest.raises(InvalidArgumentError, match=r"fixed \(160, 160\) input; img_size must be None or that size"):
        OnnxAdapter.validate_settings(a.spec, {"img_size": 320})
    with pytest.raises(InvalidArgumentError, match=r"setting 'conf' must be a number in \[0, 1\]; got 1.5"):
        OnnxAdapter.validate_settings(a.spec, {"conf": 1.5})
    OnnxAdapter.validate_settings(a.spec, {"img_size": 160, "conf": 0.5, "classes": ["dog"]})


def _strip_metadata(src: str, dst: Path) -> Path:
    import onnx

    model = onnx.load(src)
    del model.metadata_props[:]
    onnx.save(model, str(dst))
    return dst


def test_sidecar_for_an_export_without_metadata(onnx_dir, tmp_path):
    from workers.models.convert import convert

    _, onnx_path = export(onnx_dir, "yolo11n")
    bare = _strip_metadata(onnx_path, tmp_path / "bare.onnx")
    with pytest.raises(CheckpointError, match=r"bare\.onnx has no Ultralytics metadata and no sidecar.*pipeline convert"):
        OnnxAdapter.from_file(str(bare), bare.read_bytes())
    with pytest.raises(CheckpointError, match="9 channels"):  # 3 classes listed, the output has 4 + 5
        convert(str(bare), classes=["a", "b", "c"], layout="yolo")
    side = convert(str(bare), classes=ym.CLASSES, layout="yolo")
    assert Path(side["path"]) == Path(f"{bare}.json") and side["img_size"] == [160, 160]
    imgs = ym.images()
    for a, b in zip(run(adapter(str(bare)), imgs), run(adapter(onnx_path), imgs)):
        np.testing.assert_array_equal(a.boxes, b.boxes)
    Path(f"{bare}.json").write_text(json.dumps(dict(side, layout="yolo_end2end")))
    with pytest.raises(CheckpointError, match=r"bare\.onnx\.json contradicts .*yolo_end2end"):
        OnnxAdapter.from_file(str(bare), bare.read_bytes())


# ---------------------------------------------------------------------------------- boxes / labels / scores


BOXES = np.array([[10, 20, 50, 60], [0, 0, 120, 100], [30, 30, 40, 90], [5, 5, 6, 6], [60, 10, 100, 40]], np.float32)
LABELS = np.array([1, 3, 2, 0, 2], np.int64)  # 0: the background (label_offset 1)
SCORES = np.array([0.9, 0.3, 0.6, 0.95, 0.1], np.float32)


def bls_model(path: Path, h: int = 100, w: int = 120, domain: str = "", external: str | None = None) -> Path:
    """An ONNX detector whose outputs are fixed boxes (input pixels, xyxy), labels and scores."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(BOXES, "B"), numpy_helper.from_array(LABELS, "L"),
             numpy_helper.from_array(SCORES, "S0"), numpy_helper.from_array(np.zeros(1, np.float32), "zero")]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["m0"]),
        helper.make_node("Add", ["S0", "m0"], ["scores"], domain=domain),
        helper.make_node("Identity", ["B"], ["boxes"]),
        helper.make_node("Identity", ["L"], ["labels"]),
    ]
    graph = helper.make_graph(
        nodes, "bls", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [5, 4]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, [5]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [5])], inits)
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=external, size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def test_boxes_labels_scores_decode(tmp_path):
    path = bls_model(tmp_path / "det.onnx")
    side = {"classes": ["person", "car", "dog"], "layout": "boxes_labels_scores", "label_offset": 1}
    (tmp_path / "det.onnx.json").write_text(json.dumps(side))
    a = adapter(str(path))
    img = np.zeros((200, 360, 3), np.uint8)  # stretched to 100 x 120: x * 3, y * 2
    (out,) = run(a, [img], {"conf": 0.25})
    # kept: score >= 0.25 and not background, best first: [0] 0.9 (label 1), [2] 0.6 (label 2), [1] 0.3 (label 3)
    np.testing.assert_allclose(out.scores, [0.9, 0.6, 0.3])
    np.testing.assert_array_equal(out.class_ids, [0, 1, 2])
    np.testing.assert_allclose(out.boxes, BOXES[[0, 2, 1]] * [3, 2, 3, 2])
    (out,) = run(a, [img], {"conf": 0.05, "classes": ["dog"], "max_det": 1})
    np.testing.assert_array_equal(out.class_ids, [2])
    np.testing.assert_allclose(out.boxes, [BOXES[1] * [3, 2, 3, 2]])


def test_external_data_inside_the_folder_is_packed(tmp_path):
    path = bls_model(tmp_path / "ext.onnx", external="ext.bin")
    (tmp_path / "ext.onnx.json").write_text(json.dumps({"classes": ["a", "b", "c"], "layout": "boxes_labels_scores"}))
    import onnx
    from onnx import numpy_helper

    spec, payload = OnnxAdapter.from_file(str(path), path.read_bytes())
    packed = onnx.load_model_from_string(payload)  # the tensors travel inside the payload
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in packed.graph.initializer)
    np.testing.assert_array_equal(numpy_helper.to_array(packed.graph.initializer[0]), BOXES)
    shutil.move(tmp_path / "ext.bin", tmp_path / "gone.bin")  # the replica never reads the folder
    a = OnnxAdapter(spec, "cpu")
    a.load_payload(payload)
    (out,) = run(a, [np.zeros((100, 120, 3), np.uint8)])
    # label_offset 0 and 3 classes: label 3 is not a class, the box scored 0.1 is under conf
    np.testing.assert_allclose(out.scores, [0.95, 0.9, 0.6])
    np.testing.assert_array_equal(out.class_ids, [0, 1, 2])


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_external_data_escaping_the_folder_is_refused(tmp_path, how):
    import onnx

    folder = tmp_path / "model"
    folder.mkdir()
    path = bls_model(folder / "ext.onnx", external="ext.bin")
    outside = tmp_path / "secret.bin"
    shutil.move(folder / "ext.bin", outside)
    location = {"dotdot": "../secret.bin", "absolute": str(outside), "symlink": "link.bin"}[how]
    if how == "symlink":
        (folder / "link.bin").symlink_to(outside)
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    path.write_bytes(model.SerializeToString())
    (folder / "ext.onnx.json").write_text(json.dumps({"classes": ["a"], "layout": "boxes_labels_scores"}))
    with pytest.raises(CheckpointError, match="outside the model's folder"):
        OnnxAdapter.from_file(str(path), path.read_bytes())


def test_custom_op_domain_is_refused(tmp_path):
    path = bls_model(tmp_path / "custom.onnx", domain="com.example.evil")
    with pytest.raises(CheckpointError, match=r"com\.example\.evil.*never loaded"):
        OnnxAdapter.from_file(str(path), path.read_bytes())


# --------------------------------------------------------------------------------------------- bad input


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x08\xff\xff\xff\xff garbage")
    with pytest.raises(CheckpointError, match=r"junk\.onnx is not an ONNX model"):
        OnnxAdapter.from_file(str(path), path.read_bytes())


def test_sniff(tmp_path, onnx_dir):
    _, onnx_path = export(onnx_dir, "yolo11n")
    assert OnnxAdapter.sniff(onnx_path, Path(onnx_path).read_bytes()[:64])
    assert not OnnxAdapter.sniff(str(tmp_path / "x.pt"), b"PK\x03\x04")


def test_tensorrt_runtime_without_its_provider_says_what_to_install(tmp_path):
    import onnxruntime as ort

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has TensorRT")
    path = bls_model(tmp_path / "det.onnx")
    side = {"classes": ["a", "b", "c"], "layout": "boxes_labels_scores"}
    spec, payload = OnnxAdapter.from_file(str(path), path.read_bytes(), runtime="tensorrt",
                                          trt_cache_dir=str(tmp_path / "trt"), sidecar=side)
    assert spec.arch_kwargs["trt_cache_dir"] == str(tmp_path / "trt")
    with pytest.raises(ModelLoadError, match=r"TensorRT provider.*onnx-gpu"):
        OnnxAdapter(spec, "cuda:0").load_payload(payload)


def test_missing_onnxruntime_names_the_extra(tmp_path, monkeypatch):
    path = bls_model(tmp_path / "det.onnx")
    spec, payload = OnnxAdapter.from_file(str(path), path.read_bytes(),
                                          sidecar={"classes": ["a", "b", "c"], "layout": "boxes_labels_scores"})
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelLoadError, match=r"cv-pipeline\[onnx\]"):
        OnnxAdapter(spec, "cpu").load_payload(payload)
