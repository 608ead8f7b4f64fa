"""Hugging Face transformers models through the whole pipeline (issue 14): deployed with `api.nn.deploy` as real
Ray replicas, predicted through the loading stage, the scheduler and the collector, uploaded and exported.

Each tiny random-weight model is built offline (tests/hf_models.py), saved with `save_pretrained`, deployed once
for the module, and compared with the same saved model called directly, one image at a time, through its own
processor and post-processing.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
import yaml
from helpers import RunsShell, write_images
from hf_models import CLASSES, Direct, assert_same, save_tiny
from test_merge import box_with_iou
from test_project_dir import check_sly_project

from pipeline.annotation import Annotation, Label, ObjClass, ProjectMeta, Rectangle
from pipeline.exceptions import CheckpointError, InvalidArgumentError, ModelLoadError
from workers.decode import read_image_file

KINDS = ("conditional_detr", "rt_detr", "mask2former", "segformer", "owlv2")
# square, landscape, portrait, and a second landscape image: the mixed batch holds two images of one size
SIZES = [(64, 64), (50, 80), (80, 50), (50, 80)]
PROMPTS = ["a", "b"]
S = {"conf": 0.0}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hf-models")
    return {kind: save_tiny(kind, root / kind) for kind in KINDS}


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> tuple[list[str], list[np.ndarray]]:
    """PNG files (lossless: the pipeline and the reference see the same pixels) and their pixels."""
    root = tmp_path_factory.mktemp("hf-images")
    paths = [str(write_images(root / str(i), 1, size=size, seed=20 + i, fmt="png")[0]) for i, size in enumerate(SIZES)]
    return paths, [read_image_file(p) for p in paths]


@pytest.fixture(scope="module")
def deployed(ray_session, hf_dirs, tmp_path_factory):
    """`deployed(kind)`: the module's one CPU deployment of that model (deployed on first use)."""
    import pipeline

    api = pipeline.Api(data_dir=tmp_path_factory.mktemp("hf-deploy"))
    models = {}

    def get(kind: str):
        if kind not in models:
            models[kind] = api.nn.deploy(hf_dirs[kind], device="cpu", replicas=1)
        return models[kind]

    yield get
    for model in models.values():
        model.shutdown()


def _names(kind: str, pred) -> list[str]:
    names = PROMPTS if kind == "owlv2" else CLASSES
    return [names[i] for i in pred.class_ids]


# ---------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("kind", KINDS)
def test_pipeline_predictions_equal_the_model_through_its_own_processor(kind, deployed, hf_dirs, image_files):
    """Square, landscape and portrait images one per batch, then all four in one mixed-size batch: boxes within
    1 px, scores 1e-3, the same labels (named as the model or the prompts name them), masks IoU >= 0.98."""
    model = deployed(kind)
    paths, arrays = image_files
    direct = Direct(hf_dirs[kind], kind)
    prompts = PROMPTS if kind == "owlv2" else None
    refs = [direct(a, prompts=prompts) for a in arrays]
    extra = {"classes": PROMPTS} if prompts else {}
    one_by_one = model.predict(input=paths[:3], batch_size=1, settings=S, progress=False, **extra)
    mixed = model.predict(input=paths, batch_size=4, settings=S, progress=False, **extra)
    for preds, expected in ((one_by_one, refs[:3]), (mixed, refs)):
        assert len(preds) == len(expected)
        for pred, ref, size in zip(preds, expected, SIZES):
            assert pred.error is None, pred.error
            assert len(pred) > 0  # random weights still find objects to compare
            assert_same(pred, ref)
            assert pred.classes == _names(kind, pred)
            if pred.masks is not None:
                assert pred.masks.shape[1:] == size
            assert (pred.boxes[:, 2] <= size[1]).all() and (pred.boxes[:, 3] <= size[0]).all()


def test_an_int_img_size_is_the_processor_s_own_size(deployed, hf_dirs, image_files):
    """RT-DETR's processor resizes to a fixed square: img_size=96 is {"height": 96, "width": 96}."""
    paths, arrays = image_files
    [pred] = deployed("rt_detr").predict(input=paths[1], img_size=96, settings=S, progress=False)
    assert_same(pred, Direct(hf_dirs["rt_detr"], "rt_detr")(arrays[1], size={"height": 96, "width": 96}))


# ---------------------------------------------------------------------------------------------------- prompts


def test_prompts_are_the_classes_and_an_upload_creates_them(deployed, hf_dirs, image_files, api, tmp_path):
    model = api.nn.connect(deployed("owlv2").task_id)  # this test's platform receives the upload
    closed = deployed("rt_detr")
    assert model.classes == [] and model.open_vocabulary and model.info()["open_vocabulary"] is True
    listed = {d["task_id"]: d for d in api.nn.list()}
    assert listed[model.task_id]["classes"] == [] and listed[model.task_id]["open_vocabulary"] is True
    assert listed[closed.task_id]["open_vocabulary"] is False and listed[closed.task_id]["classes"] == CLASSES
    paths, arrays = image_files
    direct = Direct(hf_dirs["owlv2"], "owlv2")
    [both] = model.predict(input=paths[2], classes=["a", "b"], settings=S, progress=False)
    [only_b] = model.predict(input=paths[2], classes=["b"], settings=S, progress=False)
    assert_same(both, direct(arrays[2], prompts=["a", "b"]))
    assert_same(only_b, direct(arrays[2], prompts=["b"]))
    assert set(both.classes) == {"a", "b"} and set(only_b.classes) == {"b"}
    # OWLv2 scores each prompt on its own: every box "b" won among ["a", "b"] is there, same score, with ["b"]
    for box, score in zip(both.boxes[np.array(both.classes) == "b"], both.scores[np.array(both.classes) == "b"]):
        i = int(np.argmin(np.abs(only_b.boxes - box).max(1)))
        assert np.abs(only_b.boxes[i] - box).max() < 1e-3 and abs(only_b.scores[i] - score) < 1e-5

    prompts = ["red car", "person"]
    coco = tmp_path / "coco.json"
    preds = model.predict(input=paths[:3], classes=prompts, upload="create", settings=S, progress=False,
                          output={"coco": str(coco), "yolo": str(tmp_path / "yolo")})
    assert {c for p in preds for c in p.classes} == set(prompts)
    project_id = preds[0].target.project_id
    meta = api.project.get_meta(project_id)
    assert {c.name: c.shape for c in meta.obj_classes} == {"red car": "rectangle", "person": "rectangle"}
    for p in preds:
        labels = api.annotation.get(p.target.image_id).labels
        assert [lab.obj_class.name for lab in labels] == p.classes
    assert [c["name"] for c in json.loads(coco.read_text())["categories"]] == prompts
    assert yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())["names"] == dict(enumerate(prompts))
    out = tmp_path / "export"
    api.project.export_dir(project_id, out)
    assert check_sly_project(out) == []


def test_iou_merge_treats_prompts_like_any_class(deployed, api, tmp_path):
    """Relabeling twice with the same prompts adds nothing the second time (each prediction meets its own
    earlier upload, same class, IoU 1); other prompts add their objects, and their classes to the meta."""
    model = api.nn.connect(deployed("owlv2").task_id)
    project = api.project.create("prompted")
    ds = api.dataset.create(project.id, "ds")
    infos = [api.image.upload(ds.id, p.name, p) for p in write_images(tmp_path / "src", 2, (64, 64), 8, "png")]
    settings = {"conf": 0.0, "max_det": 4}
    first = model.predict(project_id=project.id, classes=["red car", "person"], upload="iou_merge",
                          settings=settings, progress=False)
    counts = [len(api.annotation.get(i.id).labels) for i in infos]
    assert counts == [len(p) for p in first] and min(counts) > 0
    model.predict(project_id=project.id, classes=["red car", "person"], upload="iou_merge", settings=settings,
                  progress=False)
    assert [len(api.annotation.get(i.id).labels) for i in infos] == counts
    third = model.predict(project_id=project.id, classes=["bicycle"], upload="iou_merge", settings=settings,
                          progress=False)
    assert [len(api.annotation.get(i.id).labels) for i in infos] == [c + len(p) for c, p in zip(counts, third)]
    names = {c.name for c in api.project.get_meta(project.id).obj_classes}
    assert "bicycle" in names and names <= {"red car", "person", "bicycle"}


def test_a_yaml_pipeline_takes_the_prompts_as_classes(deployed, image_files, tmp_path, capsys):
    import pipeline
    from pipeline.app import cli

    owl = deployed("owlv2")
    config = tmp_path / "prompted.yaml"
    config.write_text(f"model: {{task_id: {owl.task_id}}}\ninput: {{path: {image_files[0][0]}}}\n"
                      "predict:\n  classes: [red car, person]\n  settings: {conf: 0.0}\nupload: {mode: create}\n")
    home = tmp_path / "home"
    assert cli.main(["--data-dir", str(home), "run", str(config)]) == 0, capsys.readouterr().err
    api = pipeline.Api(data_dir=home)
    [project] = api.project.list()
    assert {c.name for c in api.project.get_meta(project.id).obj_classes} <= {"red car", "person"}
    config.write_text(config.read_text().replace("[red car, person]", "['red car', '']"))
    assert cli.main(["--data-dir", str(home), "run", str(config)]) == 2
    assert "non-empty names" in capsys.readouterr().err
    assert len(api.project.list()) == 1


# ---------------------------------------------------------------------------------------------------- uploads


def test_relabel_a_platform_project_with_iou_merge_and_export_it(deployed, api, tmp_path):
    model = api.nn.connect(deployed("conditional_detr").task_id)
    project = api.project.create("relabel")
    ds = api.dataset.create(project.id, "ds")
    infos = [api.image.upload(ds.id, p.name, p) for p in write_images(tmp_path / "src", 3, (96, 128), 3, "png")]
    settings = {"conf": 0.0, "max_det": 6}
    first = model.predict(project_id=project.id, settings=settings, progress=False)  # what the model finds
    p = first[0]
    sides = np.minimum(p.boxes[:, 2] - p.boxes[:, 0], p.boxes[:, 3] - p.boxes[:, 1])
    i0, i1 = [int(i) for i in np.flatnonzero(sides >= 4)[:2]]  # boxes big enough for 2-decimal coordinates
    # a reviewer's labels on image 0: the object of prediction i0 at IoU 0.91 (>= 0.9: the prediction is
    # dropped), the object of prediction i1 at IoU 0.89 (kept)
    cls = {n: ObjClass(n, "rectangle") for n in (p.classes[i0], p.classes[i1])}
    api.project.merge_meta(project.id, ProjectMeta(obj_classes=tuple(cls.values())))
    e0 = Label(Rectangle.from_xyxy(*box_with_iou(*p.boxes[i0], 0.91)), cls[p.classes[i0]])
    e1 = Label(Rectangle.from_xyxy(*box_with_iou(*p.boxes[i1], 0.89)), cls[p.classes[i1]])
    api.annotation.set(infos[0].id, Annotation((96, 128), (e0, e1)))

    again = model.predict(project_id=project.id, upload="iou_merge", settings=settings, progress=False)
    np.testing.assert_allclose(again[0].boxes, p.boxes, atol=1e-3)
    labels = api.annotation.get(infos[0].id).labels
    assert [lab.to_json() for lab in labels[:2]] == [e0.to_json(), e1.to_json()]
    kept = [i for i in range(len(p)) if i != i0]
    np.testing.assert_allclose([lab.geometry.to_xyxy() for lab in labels[2:]], p.boxes[kept], atol=0.01)
    assert [lab.obj_class.name for lab in labels[2:]] == [p.classes[i] for i in kept]
    for info, pred in zip(infos[1:], again[1:]):
        assert [lab.obj_class.name for lab in api.annotation.get(info.id).labels] == pred.classes
    out = tmp_path / "export"
    api.project.export_dir(project.id, out)
    assert check_sly_project(out) == []
    exported = json.loads((out / "ds" / "ann" / f"{infos[0].name}.json").read_text())
    assert len(exported["objects"]) == len(labels) and {c["title"] for c in json.loads(
        (out / "meta.json").read_text())["classes"]} == set(CLASSES) & {lab.obj_class.name for lab in labels}


# ---------------------------------------------------------------------------------------------------- sources


def test_hub_names_and_converted_files_deploy(deployed, hf_dirs, image_files, api, tmp_path, monkeypatch):
    """`hf/<owner>/<repo>` from the local cache, and the file `pipeline convert` writes, are the same bytes as
    the directory: the same identity (reuse finds the running deployment), the same predictions."""
    from huggingface_hub import constants

    from pipeline.app import cli

    seg = deployed("segformer")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelLoadError, match="hf download someone/segmenter"):
        api.nn.deploy("hf/someone/segmenter", device="cpu")
    repo = tmp_path / "hub" / "models--someone--segmenter"
    shutil.copytree(hf_dirs["segformer"], repo / "snapshots" / ("1" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    hub = api.nn.deploy("hf/someone/segmenter", device="cpu")
    try:
        assert hub.task_id != seg.task_id and hub.spec.identity == seg.spec.identity
        assert hub.spec.name == "hf/someone/segmenter" and hub.classes == CLASSES
        [a] = hub.predict(input=image_files[0][1], settings=S, progress=False)
        [b] = seg.predict(input=image_files[0][1], settings=S, progress=False)
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_array_equal(a.scores, b.scores)
    finally:
        hub.shutdown()
    packed = tmp_path / "segformer.safetensors"
    assert cli.main(["convert", hf_dirs["segformer"], str(packed)]) == 0
    assert api.nn.deploy(str(packed), device="cpu", reuse=True).task_id == seg.task_id


# ---------------------------------------------------------------------------------------------------- bad input


def _copy(src: str, dst, drop=(), **config):
    shutil.copytree(src, dst)
    for name in drop:
        os.unlink(dst / name)
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        cfg.update(config)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _pickle_dir(hf_dirs, tmp_path):
    import torch

    d = _copy(hf_dirs["rt_detr"], tmp_path / "evil", drop=["model.safetensors"])
    torch.save({"w": RunsShell(str(tmp_path / "ran"))}, d / "pytorch_model.bin")
    return d


BAD_MODELS = {
    # case: (make the model, error class, words in the message)
    "no config": (lambda h, t: _copy(h["rt_detr"], t / "m", drop=["config.json"]), CheckpointError,
                  "no config.json"),
    "no weights": (lambda h, t: _copy(h["rt_detr"], t / "m", drop=["model.safetensors"]), CheckpointError,
                   "has no weights"),
    "no processor": (lambda h, t: _copy(h["rt_detr"], t / "m", drop=["preprocessor_config.json"]), CheckpointError,
                     "preprocessor_config.json"),
    "unknown model_type": (lambda h, t: _copy(h["rt_detr"], t / "m", model_type="no_such_model"), ModelLoadError,
                           "unknown model_type 'no_such_model'"),
    "a task we do not map": (lambda h, t: _copy(h["segformer"], t / "m",
                                                architectures=["SegformerForImageClassification"]),
                             ModelLoadError, "does not map"),
    "auto_map": (lambda h, t: _copy(h["rt_detr"], t / "m", auto_map={"AutoModel": "modeling_evil.Evil"}),
                 CheckpointError, "trust_remote_code"),
    "pickle that runs code": (_pickle_dir, CheckpointError, "would run code"),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_bad_models_are_refused_by_deploy_before_any_replica(case, deployed, hf_dirs, api, tmp_path):
    make, error, words = BAD_MODELS[case]
    deployed("rt_detr")  # the registry is up: a replica started by mistake would be listed
    before = {d["task_id"] for d in api.nn.list()}
    path = make(hf_dirs, tmp_path)
    (path / "modeling_evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    with pytest.raises(error, match=words):
        api.nn.deploy(str(path), device="cpu")
    assert {d["task_id"] for d in api.nn.list()} == before
    assert not (tmp_path / "ran").exists()  # nothing from the directory ran


def test_without_the_extra_deploy_names_it_before_any_replica(hf_dirs, api, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # what an environment without the package gives
    with pytest.raises(ModelLoadError, match=r"pip install 'cv-pipeline\[transformers\]'"):
        api.nn.deploy(hf_dirs["rt_detr"], device="cpu")


BAD_PREDICTS = {
    # case: (model, predict arguments, words in the message)
    "prompt model without classes": ("owlv2", {}, "text-prompted"),
    "an empty prompt": ("owlv2", {"classes": ["red car", ""]}, "non-empty names"),
    "a blank prompt": ("owlv2", {"classes": ["  "]}, "non-empty names"),
    "a prompt twice": ("owlv2", {"classes": ["a", "a"]}, "more than once"),
    "prompts twice, differently": ("owlv2", {"classes": ["a"], "settings": {"prompts": ["b"]}}, "given twice"),
    "a prompt longer than its text encoder reads": ("owlv2", {"classes": ["a b c " * 12, "b"]},
                                                    r"prompts too long for .* \(at most 16 tokens each\)"),
    "a class the model lacks": ("rt_detr", {"classes": ["red car"]}, r"unknown class name\(s\) \['red car'\]"),
    "prompts to a closed model": ("rt_detr", {"settings": {"prompts": ["a"]}}, "fixed classes"),
    "a size RT-DETR cannot take": ("rt_detr", {"img_size": 50}, "multiples of 32"),
    "an exact size RT-DETR cannot take": ("rt_detr", {"img_size": (64, 80)}, "multiples of 32"),
}


@pytest.mark.parametrize("case", list(BAD_PREDICTS))
def test_bad_predict_arguments_are_refused_before_any_work(case, deployed, image_files, api):
    kind, kwargs, words = BAD_PREDICTS[case]
    model = api.nn.connect(deployed(kind).task_id)
    with pytest.raises(InvalidArgumentError, match=words):
        model.predict(input=image_files[0][:2], upload="create", progress=False, **kwargs)
    assert api.project.list() == []  # nothing was created: the run never started
