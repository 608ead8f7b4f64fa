"""The `transformers` adapter (no Ray): tiny random-weight models saved with `save_pretrained`, deployed through
the adapter, give what the model gives when called directly through its own processor and post-processing; and
the safe-loading rules refuse what must not load."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from helpers import RunsShell
from hf_models import CLASSES, Direct, assert_same, save_tiny

from pipeline.exceptions import CheckpointError, InvalidArgumentError, ModelLoadError

KINDS = ["detr", "conditional_detr", "rt_detr", "mask2former", "segformer", "owlv2", "grounding_dino"]
PROMPTED = ("owlv2", "grounding_dino")
# square, landscape, portrait
SIZES = [(64, 64), (50, 80), (80, 50)]
PROMPTS = ["a", "b"]


def _image(seed: int, size) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hf")
    return {kind: save_tiny(kind, root / kind) for kind in KINDS}


@pytest.fixture(scope="session")
def adapters(hf_dirs):
    from workers.models import get_adapter

    cache = {}

    def get(kind: str):
        if kind not in cache:
            cls = get_adapter("transformers")
            spec, payload = cls.from_directory(hf_dirs[kind])
            adapter = cls(spec, "cpu")
            adapter.load_payload(payload)
            cache[kind] = adapter
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def directs(hf_dirs):
    cache = {}

    def get(kind: str) -> Direct:
        if kind not in cache:
            cache[kind] = Direct(hf_dirs[kind], kind)
        return cache[kind]

    return get


def _settings(kind: str, **extra) -> dict:
    settings = {"conf": 0.0, "max_det": 100, **extra}
    if kind in PROMPTED:
        settings.setdefault("prompts", PROMPTS)
    return settings


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_equal_the_model_through_its_own_processor(kind, adapters, directs):
    """Square, landscape and portrait images one by one, then all of them in one mixed-size batch."""
    adapter, direct = adapters(kind), directs(kind)
    images = [_image(i, s) for i, s in enumerate(SIZES)] + [_image(9, SIZES[1])]
    prompts = PROMPTS if kind in PROMPTED else None
    refs = [direct(img, prompts=prompts) for img in images]
    for img, ref in zip(images, refs):
        [out] = adapter.run([img], [img.shape[:2]], _settings(kind))[0]
        assert len(out.class_ids) > 0  # random weights: each image must still yield objects to compare
        assert_same(out, ref)
        if out.masks is not None:
            assert out.masks.shape[1:] == img.shape[:2] and out.masks.dtype == bool
        assert (out.boxes[:, 2] <= img.shape[1]).all() and (out.boxes[:, 3] <= img.shape[0]).all()
    batch, _ = adapter.run(images, [img.shape[:2] for img in images], _settings(kind))
    for out, ref in zip(batch, refs):
        assert_same(out, ref)


@pytest.mark.parametrize("kind, img_size, size", [
    ("rt_detr", 96, {"height": 96, "width": 96}),                       # fixed-size processor: n x n
    ("conditional_detr", 40, {"shortest_edge": 40, "longest_edge": 40}),  # longer side n, aspect kept
    ("conditional_detr", (32, 48), {"height": 32, "width": 48}),          # (h, w): exact
    ("owlv2", 32, {"height": 32, "width": 32}),                           # other ViT size: interpolated
])
def test_img_size_is_the_processor_s_own_size_argument(kind, img_size, size, adapters, directs):
    adapter, direct = adapters(kind), directs(kind)
    img = _image(3, SIZES[1])
    [out] = adapter.run([img], [img.shape[:2]], _settings(kind, img_size=img_size))[0]
    ref = direct(img, size=size, prompts=PROMPTS if kind == "owlv2" else None)
    assert_same(out, ref)
    [default] = adapter.run([img], [img.shape[:2]], _settings(kind))[0]
    assert not np.array_equal(default.scores, out.scores)  # the size did change what the model saw


@pytest.mark.parametrize("img_size", [50, (64, 80), 0, (64,), "64"])
def test_sizes_a_model_cannot_take_are_refused_before_work(adapters, img_size):
    """RT-DETR's fused feature maps need sides that are multiples of 32: a clear error with the size to use,
    before any image is read (the driver calls validate_settings), instead of a tensor-shape error per item."""
    adapter = adapters("rt_detr")
    with pytest.raises(InvalidArgumentError, match="multiples of 32|img_size must be"):
        adapter.validate_settings(adapter.spec, {"img_size": img_size})
    adapter.validate_settings(adapter.spec, {"img_size": (64, 96)})


def test_a_task_recorded_by_convert_is_the_default(hf_dirs, tmp_path):
    from workers.models.hf import TransformersAdapter as A
    from workers.models.hf import convert

    out = convert(hf_dirs["mask2former"], tmp_path / "m2f.safetensors", task="panoptic_segmentation")
    spec, _ = A.from_file(out, open(out, "rb").read())
    assert spec.arch_kwargs["mode"] == "panoptic" and spec.task_type == "instance_segmentation"
    with pytest.raises(InvalidArgumentError, match="cannot do"):
        convert(hf_dirs["rt_detr"], tmp_path / "x.safetensors", task="semantic_segmentation")
    with pytest.raises(InvalidArgumentError, match="--classes"):
        convert(hf_dirs["rt_detr"], tmp_path / "x.safetensors", classes="a,b")
    assert not (tmp_path / "x.safetensors").exists()


def test_conf_and_max_det(adapters):
    adapter = adapters("conditional_detr")
    img = _image(0, SIZES[1])
    [everything] = adapter.run([img], [img.shape[:2]], _settings("conditional_detr"))[0]
    conf = float(np.median(everything.scores))
    [out] = adapter.run([img], [img.shape[:2]], {"conf": conf, "max_det": 5})[0]
    assert 0 < len(out.scores) <= 5 and (out.scores >= conf).all()
    assert (np.diff(out.scores) <= 0).all()  # highest first
    np.testing.assert_allclose(out.scores, everything.scores[:len(out.scores)], atol=1e-6)


@pytest.mark.parametrize("kind", ["segformer", "mask2former", "conditional_detr"])
def test_nothing_above_conf_is_an_empty_output(adapters, kind):
    adapter = adapters(kind)
    img = _image(0, SIZES[2])
    [out] = adapter.run([img], [img.shape[:2]], {"conf": 1.0})[0]
    assert out.boxes.shape == (0, 4) and out.scores.shape == (0,) and out.class_ids.shape == (0,)
    if kind != "conditional_detr":
        assert out.masks.shape == (0, *SIZES[2])


def test_prompts_are_the_classes(adapters, directs):
    """prompts=["a", "b"] and prompts=["b"]: class ids index the prompts; every box the first run gives to "b"
    comes back, with the same score, as class 0 of the second run."""
    adapter, direct = adapters("owlv2"), directs("owlv2")
    img = _image(5, SIZES[2])
    [both] = adapter.run([img], [img.shape[:2]], {"conf": 0.0, "prompts": ["a", "b"]})[0]
    [only_b] = adapter.run([img], [img.shape[:2]], {"conf": 0.0, "prompts": ["b"]})[0]
    assert_same(only_b, direct(img, prompts=["b"]))
    assert set(both.class_ids.tolist()) == {0, 1} and set(only_b.class_ids.tolist()) == {0}
    for box, score in zip(both.boxes[both.class_ids == 1], both.scores[both.class_ids == 1]):
        i = int(np.argmin(np.abs(only_b.boxes - box).max(1)))
        assert np.abs(only_b.boxes[i] - box).max() < 1e-3 and abs(only_b.scores[i] - score) < 1e-5


def test_grounding_dino_classes_index_the_prompts(adapters, directs):
    """Grounding DINO reads all prompts as one text, so other prompts change every score: each run equals the
    direct call with the same prompts, and its class ids index them."""
    adapter, direct = adapters("grounding_dino"), directs("grounding_dino")
    img = _image(6, SIZES[0])
    seen = set()
    for prompts in (["a", "red car", "b"], ["b"]):
        [out] = adapter.run([img], [SIZES[0]], {"conf": 0.0, "prompts": prompts})[0]
        assert_same(out, direct(img, prompts=prompts))
        assert set(out.class_ids.tolist()) <= set(range(len(prompts)))
        seen |= {prompts[c] for c in out.class_ids}
    assert {"red car", "b"} <= seen  # a multi-token prompt is a class like the others


@pytest.mark.parametrize("prompts, message", [
    (None, "text-prompted model"), ([], "text-prompted model"), ("a", "text-prompted model"),
    (["a", " "], "non-empty strings"), ([""], "non-empty strings"),
])
def test_bad_prompts_are_refused_before_any_work(adapters, prompts, message):
    adapter = adapters("owlv2")
    with pytest.raises(InvalidArgumentError, match=message):
        adapter.validate_settings(adapter.spec, {"prompts": prompts})
    with pytest.raises(InvalidArgumentError, match=message):
        adapter.run([_image(0, SIZES[0])], [SIZES[0]], {"prompts": prompts})


@pytest.mark.parametrize("kind", PROMPTED)
def test_prompts_longer_than_the_text_encoder_reads_are_refused(adapters, kind):
    adapter = adapters(kind)
    with pytest.raises(InvalidArgumentError, match="prompts too long"):
        adapter.run([_image(0, SIZES[0])], [SIZES[0]], {"prompts": ["a b c " * 12, "b"]})
    with pytest.raises(InvalidArgumentError, match="prompts too long"):  # what predict() asks a replica first
        adapter.check_loaded_settings({"prompts": ["a b c " * 12, "b"]})
    adapter.check_loaded_settings({"prompts": ["a b c", "b"]})


def test_prompts_on_a_closed_vocabulary_model_are_refused(adapters):
    adapter = adapters("rt_detr")
    with pytest.raises(InvalidArgumentError, match="fixed classes"):
        adapter.validate_settings(adapter.spec, {"prompts": ["a"]})


def test_spec_comes_from_the_files(hf_dirs):
    from workers.models.hf import TransformersAdapter as A

    rt, _ = A.from_directory(hf_dirs["rt_detr"])
    assert (rt.framework, rt.architecture, rt.task_type) == ("transformers", "RTDetrForObjectDetection", "detection")
    assert rt.classes == CLASSES and rt.img_size == 64 and rt.source == "file"  # the processor's 64 x 64
    m2f, _ = A.from_directory(hf_dirs["mask2former"])
    assert m2f.task_type == "instance_segmentation" and m2f.img_size is None  # shortest/longest edge
    seg, _ = A.from_directory(hf_dirs["segformer"])
    assert seg.task_type == "semantic_segmentation"
    owl, _ = A.from_directory(hf_dirs["owlv2"])
    assert A.is_open_vocabulary(owl) and owl.classes == [] and not A.is_open_vocabulary(rt)
    sem, _ = A.from_directory(hf_dirs["mask2former"], task="semantic_segmentation")
    assert sem.task_type == "semantic_segmentation" and sem.arch_kwargs["mode"] == "semantic"
    with pytest.raises(InvalidArgumentError, match="cannot do"):
        A.from_directory(hf_dirs["rt_detr"], task="semantic_segmentation")


def test_mask2former_as_panoptic_and_semantic(hf_dirs, directs):
    """The universal head post-processed the other two ways equals the library's panoptic / semantic
    post-processing: non-overlapping segments, one mask per present class."""
    import torch

    from workers.models.hf import TransformersAdapter as A

    img, size = _image(2, SIZES[1]), SIZES[1]
    direct = directs("mask2former")
    with torch.inference_mode():
        raw = direct.model(**direct.processor(images=[img], return_tensors="pt"))
    # random masks are fragments: keep every segment however little of it survives the overlaps
    thresholds = {"mask_threshold": 0.0, "overlap_mask_area_threshold": 0.0}
    pan = direct.processor.post_process_panoptic_segmentation(raw, threshold=0.0, target_sizes=[size],
                                                              label_ids_to_fuse=set(), **thresholds)[0]
    sem = direct.processor.post_process_semantic_segmentation(raw, target_sizes=[size])[0].numpy()
    for task in ("panoptic_segmentation", "semantic_segmentation"):
        spec, payload = A.from_directory(hf_dirs["mask2former"], task=task)
        adapter = A(spec, "cpu")
        adapter.load_payload(payload)
        [out] = adapter.run([img], [size], {"conf": 0.0, **thresholds})[0]
        assert len(out.masks) > 0 and out.masks.sum(0).max() == 1  # no pixel in two segments
        if task == "semantic_segmentation":
            assert_same(out, {"label_map": sem})
        else:
            seg, info = pan["segmentation"].numpy(), pan["segments_info"]
            assert_same(out, {"masks": np.stack([seg == s["id"] for s in info]),
                               "scores": np.array([s["score"] for s in info], np.float32),
                               "labels": np.array([s["label_id"] for s in info])})


# ---------------------------------------------------------------------------------------------------------------
# packing, convert, sniff, the Hugging Face cache


def test_convert_writes_one_self_describing_file(hf_dirs, tmp_path, adapters):
    from workers.models.hf import TransformersAdapter as A
    from workers.models.hf import convert
    from workers.models.hf_pack import pack_directory

    out = tmp_path / "owl.safetensors"
    assert convert(hf_dirs["owlv2"], out) == str(out)
    data = out.read_bytes()
    assert A.sniff(str(out), data[:50]) and A.sniff(str(out), b"") and A.sniff(hf_dirs["owlv2"], b"")
    assert data == pack_directory(hf_dirs["owlv2"])  # deterministic: same directory, same identity
    spec, payload = A.from_file(str(out), data)
    assert spec.identity == hashlib.sha256(data).hexdigest() and payload == data and spec.name == str(out)
    adapter = A(spec, "cpu")
    adapter.load_payload(payload)
    img = _image(1, SIZES[0])
    settings = {"conf": 0.0, "prompts": PROMPTS}
    [a] = adapter.run([img], [SIZES[0]], settings)[0]
    [b] = adapters("owlv2").run([img], [SIZES[0]], settings)[0]
    np.testing.assert_array_equal(a.boxes, b.boxes)


def test_sniff_leaves_other_files_alone(tmp_path, tiny_checkpoint):
    from workers.models.hf import TransformersAdapter as A

    assert not A.sniff(str(tiny_checkpoint), tiny_checkpoint.read_bytes()[:64])
    (tmp_path / "x.bin").write_bytes(b"\x00" * 64)
    assert not A.sniff(str(tmp_path / "x.bin"), b"\x00" * 64)
    (tmp_path / "d").mkdir()
    assert not A.sniff(str(tmp_path / "d"), b"")
    (tmp_path / "d" / "config.json").write_text('{"names": ["a"]}')  # another tool's config.json
    assert not A.sniff(str(tmp_path / "d"), b"")
    (tmp_path / "d" / "model.safetensors").write_bytes(b"")  # weights without a config: ours, to say so
    assert A.sniff(str(tmp_path / "d"), b"")


def test_a_pytorch_model_bin_is_read_weights_only(hf_dirs, tmp_path, adapters):
    """Plain weights in pytorch_model.bin load (and give the same outputs as the safetensors file)."""
    import safetensors.torch
    import torch

    from workers.models.hf import TransformersAdapter as A

    d = tmp_path / "bin"
    shutil.copytree(hf_dirs["rt_detr"], d)
    torch.save(safetensors.torch.load_file(d / "model.safetensors"), d / "pytorch_model.bin")
    os.unlink(d / "model.safetensors")
    spec, payload = A.from_directory(str(d))
    adapter = A(spec, "cpu")
    adapter.load_payload(payload)
    img = _image(4, SIZES[1])
    [a] = adapter.run([img], [img.shape[:2]], {"conf": 0.0})[0]
    [b] = adapters("rt_detr").run([img], [img.shape[:2]], {"conf": 0.0})[0]
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-5)


def test_a_pickle_that_would_run_code_runs_nothing(hf_dirs, tmp_path):
    import torch

    from workers.models.hf_pack import pack_directory

    d, marker = tmp_path / "evil", tmp_path / "ran"
    d.mkdir()
    shutil.copy(os.path.join(hf_dirs["rt_detr"], "config.json"), d)
    torch.save({"w": RunsShell(str(marker))}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"would run code \(it calls posix\.system\)") as err:
        pack_directory(d)
    assert not marker.exists()
    assert "weights_only" not in str(err.value)  # torch's advice to load it unsafely is not passed on


def _edited(src: str, dst, **changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_auto_map_is_refused(hf_dirs, tmp_path):
    from workers.models.hf_pack import pack_directory

    d = _edited(hf_dirs["rt_detr"], tmp_path / "m", auto_map={"AutoModel": "modeling_evil.Evil"})
    (d / "modeling_evil.py").write_text("raise SystemExit('ran')\n")
    with pytest.raises(CheckpointError, match="trust_remote_code"):
        pack_directory(d)


def test_a_backbone_from_the_hub_is_refused(hf_dirs, tmp_path):
    from workers.models.hf_pack import pack_directory

    d = _edited(hf_dirs["conditional_detr"], tmp_path / "m", backbone="microsoft/resnet-50", backbone_config=None,
                use_timm_backbone=False, use_pretrained_backbone=True)
    with pytest.raises(CheckpointError, match="Hugging Face Hub"):
        pack_directory(d)


@pytest.mark.parametrize("kwargs", [
    {"backbone_kwargs": {"out_indices": [1, 2, 3, 4], "in_chans": 3}},   # saved by transformers 4.38 to 4.x
    {},                                                                   # saved before 4.38: no backbone_kwargs
    {"backbone_kwargs": None},
], ids=["4.38+", "older", "null-kwargs"])
def test_a_timm_backbone_config_saved_by_transformers_4_loads_without_downloading(kwargs, hf_dirs, tmp_path,
                                                                                  adapters, monkeypatch):
    """`facebook/detr-resnet-50` and the DETRs fine-tuned from it carry the transformers 4 form of a timm backbone
    (`backbone` by timm name, `use_timm_backbone` and `use_pretrained_backbone` true, no `backbone_config`). It
    loads (transformers 5 alone would ask the Hub whether "test_resnet" is a repository, and an offline deployment
    would refuse it), timm builds the backbone without pretrained weights (its weights are the file's), and the
    outputs equal those of the same weights saved in the transformers 5 form."""
    import timm

    from workers.models.hf import TransformersAdapter as A

    d = _edited(hf_dirs["detr"], tmp_path / "legacy", backbone="test_resnet", backbone_config=None,
                use_timm_backbone=True, use_pretrained_backbone=True, **kwargs)
    built = []
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: built.append(k.get("pretrained")) or real(*a, **k))
    spec, payload = A.from_directory(str(d))
    adapter = A(spec, "cpu")
    adapter.load_payload(payload)
    assert built == [False]
    for i, size in enumerate(SIZES):
        img = _image(i, size)
        [out] = adapter.run([img], [size], _settings("detr"))[0]
        [ref] = adapters("detr").run([img], [size], _settings("detr"))[0]
        np.testing.assert_array_equal(out.boxes, ref.boxes)
        np.testing.assert_array_equal(out.scores, ref.scores)


def test_a_timm_backbone_from_the_hub_is_refused(hf_dirs, tmp_path):
    from workers.models.hf_pack import pack_directory

    d = _edited(hf_dirs["detr"], tmp_path / "m", backbone="hf-hub:timm/resnet50.a1_in1k", backbone_config=None,
                use_timm_backbone=True)
    with pytest.raises(CheckpointError, match="Hugging Face Hub"):
        pack_directory(d)


def test_incomplete_or_unknown_models_are_clear_errors(hf_dirs, tmp_path):
    from workers.models.hf import TransformersAdapter as A
    from workers.models.hf_pack import pack_directory

    no_config = tmp_path / "no_config"
    shutil.copytree(hf_dirs["rt_detr"], no_config)
    os.unlink(no_config / "config.json")
    with pytest.raises(CheckpointError, match="no config.json"):
        pack_directory(no_config)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(hf_dirs["rt_detr"], no_weights)
    os.unlink(no_weights / "model.safetensors")
    with pytest.raises(CheckpointError, match="has no weights"):
        pack_directory(no_weights)
    unknown = _edited(hf_dirs["rt_detr"], tmp_path / "unknown", model_type="no_such_model")
    with pytest.raises(ModelLoadError, match="unknown model_type 'no_such_model'"):
        A.from_directory(str(unknown))
    unmapped = _edited(hf_dirs["segformer"], tmp_path / "cls", architectures=["SegformerForImageClassification"])
    with pytest.raises(ModelLoadError, match="does not map"):
        A.from_directory(str(unmapped))
    no_class = _edited(hf_dirs["rt_detr"], tmp_path / "no_class", architectures=["MyOwnRTDetrForObjectDetection"])
    with pytest.raises(ModelLoadError, match="no model class 'MyOwnRTDetrForObjectDetection'"):
        A.from_directory(str(no_class))
    no_proc = tmp_path / "no_proc"
    shutil.copytree(hf_dirs["rt_detr"], no_proc)
    os.unlink(no_proc / "preprocessor_config.json")
    with pytest.raises(CheckpointError, match="preprocessor_config.json"):
        A.from_directory(str(no_proc))


def test_weights_that_do_not_cover_the_model_are_refused(hf_dirs, tmp_path):
    """A part the file lacks would be randomly initialised: the replica refuses to build it."""
    import safetensors.torch

    from workers.models.hf import TransformersAdapter as A

    d = tmp_path / "partial"
    shutil.copytree(hf_dirs["rt_detr"], d)
    tensors = safetensors.torch.load_file(d / "model.safetensors")
    safetensors.torch.save_file({k: v for k, v in tensors.items() if "backbone" not in k}, d / "model.safetensors",
                                metadata={"format": "pt"})
    spec, payload = A.from_directory(str(d))
    with pytest.raises(ModelLoadError, match="would be random"):
        A(spec, "cpu").load_payload(payload)


def test_hub_names_resolve_from_the_local_cache_only(hf_dirs, tmp_path, monkeypatch):
    """`hf/<repo>` is read from the Hugging Face cache layout; a model not in it is a clear error, no download."""
    from huggingface_hub import constants

    from workers.models.hf import TransformersAdapter as A
    from workers.models.hf_pack import resolve_hub_name

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="hf download someone/detector"):
        resolve_hub_name("hf/someone/detector")
    repo = tmp_path / "models--someone--detector"
    shutil.copytree(hf_dirs["rt_detr"], repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert resolve_hub_name("hf/someone/detector") == str(repo / "snapshots" / ("0" * 40))
    spec, _ = A.from_hub("hf/someone/detector")
    assert spec.name == "hf/someone/detector" and spec.source == "file" and spec.classes == CLASSES
    with pytest.raises(ModelLoadError, match="not a Hugging Face model name"):
        resolve_hub_name("hf/../etc")


def test_without_transformers_the_error_names_the_extra(monkeypatch):
    import sys

    from workers.models.hf_pack import import_transformers

    monkeypatch.setitem(sys.modules, "transformers", None)  # what an environment without the package gives
    with pytest.raises(ModelLoadError, match=r"pip install 'cv-pipeline\[transformers\]'"):
        import_transformers()
