"""Deployments: deploy / connect / list / reuse / shutdown, replicas that crash, and bad models."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torchvision
from helpers import assert_same_objects, write_images

from pipeline.exceptions import DeploymentError, ModelLoadError, NotFoundError
from workers.models import save_checkpoint


def test_deploy_reads_everything_from_the_checkpoint(tiny_model, tiny_checkpoint):
    info = tiny_model.info()
    assert info["framework"] == "torchvision"
    assert info["architecture"] == "fasterrcnn_tiny_fpn"
    assert info["task_type"] == "detection"
    assert info["classes"] == tiny_model.classes == ["a", "b", "c"]
    assert info["device"] == "cpu" and info["status"] == "running" and info["replicas"] == 1
    assert isinstance(tiny_model.task_id, int)


def test_the_deploying_handle_knows_each_replicas_node(ray_session, tiny_deployment):
    # What a prediction run places each batch's loading task next to (a soft node affinity): read from the
    # replicas once they answer, not from the record before they started.
    nodes = [node for _, node in tiny_deployment.replicas_and_nodes()]
    assert nodes == [ray_session.get_runtime_context().get_node_id()]


def test_list_shows_running_deployments(api, tiny_deployment):
    rows = {r["task_id"]: r for r in api.nn.list()}
    row = rows[tiny_deployment.task_id]
    assert {"task_id", "model", "framework", "task_type", "classes", "device", "replicas", "status"} <= set(row)


def test_two_replicas_connect_from_another_process_same_outputs(ray_session, api, tiny_checkpoint, direct_tiny,
                                                                 tmp_path):
    model = api.nn.deploy(str(tiny_checkpoint), device="cpu", replicas=2)
    try:
        assert model.info()["replicas"] == 2
        paths = write_images(tmp_path / "imgs", 3, size=(60, 80))
        address = ray_session.get_runtime_context().gcs_address
        script = textwrap.dedent(f"""
            import json, sys
            import pipeline
            api = pipeline.Api(data_dir={str(tmp_path / 'other')!r}, ray_address={address!r})
            model = api.nn.connect({model.task_id})
            preds = model.predict(input={[str(p) for p in paths]!r}, conf=0.0, max_det=20, progress=False)
            json.dump([p.to_json() for p in preds], sys.stdout)
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stderr[-3000:]
        from pipeline import Prediction

        preds = [Prediction.from_json(d) for d in json.loads(out.stdout.strip().splitlines()[-1])]
        from workers.decode import read_image_file

        direct = direct_tiny([read_image_file(str(p)) for p in paths], {"conf": 0.0, "max_det": 20})
        assert len(preds) == 3
        for p, d in zip(preds, direct):
            assert_same_objects(p, d, atol=0.05)
    finally:
        model.shutdown()


def test_a_killed_replica_comes_back_under_the_same_task_id(ray_session, api, tiny_checkpoint, tmp_path):
    import ray

    model = api.nn.deploy(str(tiny_checkpoint), device="cpu", replicas=1)
    try:
        paths = write_images(tmp_path / "imgs", 2, size=(48, 64))
        before = model.predict(input=[str(p) for p in paths], conf=0.0, max_det=5, progress=False)
        pid_before = ray.get(model._replicas()[0].ready.remote())["pid"]
        ray.kill(model._replicas()[0], no_restart=False)
        again = api.nn.connect(model.task_id)
        after = again.predict(input=[str(p) for p in paths], conf=0.0, max_det=5, progress=False)
        assert again.task_id == model.task_id
        assert [p.error for p in after] == [None, None]
        np.testing.assert_allclose(before[0].boxes, after[0].boxes, atol=1e-3)
        assert ray.get(again._replicas()[0].ready.remote())["pid"] != pid_before
    finally:
        model.shutdown()


def test_reuse_returns_the_running_deployment(api, tiny_deployment, tiny_checkpoint):
    same = api.nn.deploy(str(tiny_checkpoint), device="cpu", reuse=True)
    assert same.task_id == tiny_deployment.task_id
    other = api.nn.deploy(str(tiny_checkpoint), device="cpu", reuse=False)
    try:
        assert other.task_id != tiny_deployment.task_id
    finally:
        other.shutdown()


def test_connect_to_unknown_or_stopped_task_id(api, tiny_checkpoint):
    with pytest.raises(NotFoundError, match="no running deployment with task id 99999"):
        api.nn.connect(99999)
    with pytest.raises(ValueError, match="task_id must be an integer"):
        api.nn.connect("abc")
    model = api.nn.deploy(str(tiny_checkpoint), device="cpu")
    tid = model.task_id
    model.shutdown()
    with pytest.raises(NotFoundError, match=f"task id {tid}"):
        api.nn.connect(tid)


def test_cuda_without_gpus_is_a_clear_error(api, tiny_checkpoint):
    with pytest.raises(DeploymentError, match="has no GPUs"):
        api.nn.deploy(str(tiny_checkpoint), device="cuda")


def _save(tmp_path, name, model, **kw):
    args = dict(framework="torchvision", architecture="fasterrcnn_tiny_fpn", task_type="detection",
                classes=["a", "b", "c"])
    args.update(kw)
    path = tmp_path / name
    save_checkpoint(model, path, **args)
    return str(path)


@pytest.mark.parametrize(
    "kind, error, message",
    [
        ("missing", NotFoundError, "does not exist"),
        ("unknown_framework", ModelLoadError, "unknown framework 'tensorflow'"),
        ("unknown_arch", ModelLoadError, "unknown torchvision architecture 'resnet9000'"),
        ("wrong_task", ModelLoadError, "is a detection model"),
        ("bad_kwargs", ModelLoadError, "unknown arch_kwargs"),
        ("state_dict_mismatch", ModelLoadError, "does not fit architecture"),
    ],
)
def test_bad_models_are_refused_with_their_problem(api, tmp_path, kind, error, message):
    small = torch.nn.Linear(2, 2)
    path = {
        "missing": lambda: str(tmp_path / "nope.pth"),
        "unknown_framework": lambda: _save(tmp_path, "f.pth", small, framework="tensorflow"),
        "unknown_arch": lambda: _save(tmp_path, "a.pth", small, architecture="resnet9000"),
        "wrong_task": lambda: _save(tmp_path, "t.pth", small, architecture="fasterrcnn_resnet50_fpn",
                                    task_type="semantic_segmentation"),
        "state_dict_mismatch": lambda: _save(tmp_path, "s.pth", small),
        "bad_kwargs": lambda: _save(tmp_path, "k.pth", small, arch_kwargs={"wings": 2}),
    }[kind]()
    with pytest.raises(error, match=message):
        api.nn.deploy(path, device="cpu")
    assert all(r["model"] != path for r in api.nn.list())  # nothing left running


def test_pretrained_by_name_from_a_prefilled_cache(api, tmp_path):
    import os

    from workers.models.torchvision import weights_cache_path

    name = "ssdlite320_mobilenet_v3_large"
    weights = torchvision.models.get_model_weights(name).DEFAULT
    path = weights_cache_path(weights.url)
    assert path.startswith(os.environ["TORCH_HOME"])
    torch.manual_seed(1)
    m = torchvision.models.get_model(name, weights=None, weights_backbone=None,
                                     num_classes=len(weights.meta["categories"]))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(m.state_dict(), path)
    model = api.nn.deploy(f"torchvision/{name}", device="cpu")
    try:
        assert model.classes == weights.meta["categories"][1:]
        img = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
        [pred] = model.predict(input=img, conf=0.0, max_det=10, progress=False)
        assert pred.error is None and len(pred) == 10
        m.eval()
        m.score_thresh, m.detections_per_img = 0.0, 10  # what conf=0.0, max_det=10 set on the replica's copy
        with torch.inference_mode():
            direct = m([torch.from_numpy(img).permute(2, 0, 1).float() / 255])[0]
        np.testing.assert_allclose(pred.boxes, direct["boxes"][:10].numpy(), atol=0.05)
    finally:
        model.shutdown()


def test_pretrained_without_weights_says_where_to_put_them(api):
    with pytest.raises(ModelLoadError, match="put the file at .*hub/checkpoints"):
        api.nn.deploy("torchvision/fcos_resnet50_fpn", device="cpu")


def test_unknown_pretrained_name(api):
    with pytest.raises(ModelLoadError, match="unknown torchvision model 'nope'"):
        api.nn.deploy("torchvision/nope")
