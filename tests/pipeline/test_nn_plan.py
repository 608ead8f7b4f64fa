"""The pure placement decisions of deploy: device and replica resources."""

from __future__ import annotations

import pytest

from pipeline.deploy.planning import plan_replicas, resolve_device, spread_nodes
from pipeline.exceptions import DeploymentError, InvalidArgumentError


@pytest.mark.parametrize(
    "device, gpus, expected",
    [(None, 0, "cpu"), (None, 2, "cuda"), ("cpu", 4, "cpu"), ("cuda", 1, "cuda"), ("cuda:0", 1, "cuda"),
     ("GPU", 1, "cuda")],
)
def test_resolve_device(device, gpus, expected):
    assert resolve_device(device, gpus) == expected


@pytest.mark.parametrize("device, error", [("cuda", DeploymentError), ("tpu", InvalidArgumentError)])
def test_resolve_device_errors(device, error):
    with pytest.raises(error):
        resolve_device(device, 0)


@pytest.mark.parametrize(
    "device, replicas, gpr, gpus, node_cpus, n, resources, threads",
    [
        ("cuda", None, 1.0, 4, 16, 4, {"num_gpus": 1.0, "num_cpus": 1}, None),
        ("cuda", None, 0.5, 1, 16, 2, {"num_gpus": 0.5, "num_cpus": 1}, None),
        ("cuda", 2, 1.0, 4, 16, 2, {"num_gpus": 1.0, "num_cpus": 1}, None),
        ("cpu", None, 1.0, 0, 2, 1, {}, 2),  # Ray's default: placed on a free CPU, holds none while running
        ("cpu", 2, 1.0, 0, 2, 2, {}, 1),
        ("cpu", 2, 1.0, 0, 8, 2, {}, 4),
    ],
)
def test_plan_replicas(device, replicas, gpr, gpus, node_cpus, n, resources, threads):
    plan = plan_replicas(device, replicas, gpr, gpus, node_cpus)
    assert plan.replicas == n
    if device == "cpu":
        assert "num_cpus" not in plan.options and "num_gpus" not in plan.options
    for k, v in resources.items():
        assert plan.options[k] == v
    assert plan.options["max_restarts"] == -1
    assert plan.threads == threads


def test_plan_refuses_more_gpus_than_the_cluster_has():
    with pytest.raises(DeploymentError, match="need 3 GPUs"):
        plan_replicas("cuda", 3, 1.0, 2, 16)


@pytest.mark.parametrize("replicas", [0, -1, 1.5])
def test_plan_bad_replicas(replicas):
    with pytest.raises(InvalidArgumentError):
        plan_replicas("cpu", replicas, 1.0, 0, 2)


@pytest.mark.parametrize(
    "node_cpus, replicas, expected",
    [
        ({"a": 2, "b": 2}, 2, ["a", "b"]),
        ({"a": 1, "b": 4, "c": 2}, 4, ["b", "c", "a", "b"]),
        ({"head": 0, "w1": 1}, 2, ["w1", "w1"]),
        ({"head": 0}, 2, [None, None]),
    ],
)
def test_spread_nodes(node_cpus, replicas, expected):
    assert spread_nodes(node_cpus, replicas) == expected


# NaN passes `gpus_per_replica <= 0` (every comparison with NaN is False); infinity is no amount of GPUs (issue 19)
@pytest.mark.parametrize("device, gpus", [("cpu", 0), ("cuda", 2)])
@pytest.mark.parametrize("gpr", [float("nan"), float("inf"), -float("inf"), True])
def test_plan_refuses_a_gpus_per_replica_that_is_not_a_finite_number(device, gpus, gpr):
    with pytest.raises(InvalidArgumentError, match="gpus_per_replica must be a finite number > 0"):
        plan_replicas(device, None, gpr, gpus, 16)


@pytest.mark.parametrize("kwargs, key", [({"timeout": float("nan")}, "timeout"), ({"timeout": float("inf")}, "timeout"),
                                         ({"timeout": -5}, "timeout"), ({"gpus_per_replica": float("nan")},
                                                                         "gpus_per_replica"),
                                         ({"replicas": True}, "replicas")])
def test_deploy_refuses_bad_numbers_before_reading_the_model_or_starting_ray(tmp_path, kwargs, key):
    import pipeline

    api = pipeline.Api(data_dir=tmp_path)
    with pytest.raises(InvalidArgumentError, match=key):  # the checkpoint does not exist: it is never looked at
        api.nn.deploy(str(tmp_path / "missing.pth"), **kwargs)


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-3", "soon"])
def test_deploy_refuses_a_bad_deploy_timeout_in_the_environment_before_starting(tmp_path, monkeypatch, value):
    import pipeline

    monkeypatch.setenv("PIPELINE_DEPLOY_TIMEOUT_S", value)
    api = pipeline.Api(data_dir=tmp_path)
    with pytest.raises(InvalidArgumentError, match=r"\$PIPELINE_DEPLOY_TIMEOUT_S must be a .*number of seconds"):
        api.nn.deploy(str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("value, expected", [("", 7.0), ("  ", 7.0), ("2.5", 2.5), (" 30 ", 30.0)])
def test_env_seconds_reads_a_positive_finite_number_or_the_default(monkeypatch, value, expected):
    from pipeline.env import env_seconds

    monkeypatch.setenv("PIPELINE_SOME_TIMEOUT_S", value)
    assert env_seconds("PIPELINE_SOME_TIMEOUT_S", 7.0) == expected


@pytest.mark.parametrize("runtime", ["onnx", "tensorrt"])
def test_a_runtime_other_than_pytorch_is_refused_for_checkpoints_and_pretrained_names(tiny_checkpoint, runtime):
    """Only ONNX files run on ONNX Runtime / TensorRT: a checkpoint or a pretrained name given one is refused
    (it used to run with PyTorch on the CPU without a word)."""
    from pipeline.deploy.models import resolve_model

    with pytest.raises(InvalidArgumentError, match=rf"is a pipeline checkpoint, which runs with PyTorch; "
                                                   rf"runtime='{runtime}' runs ONNX files\. Export the model"):
        resolve_model(str(tiny_checkpoint), runtime=runtime)
    with pytest.raises(InvalidArgumentError, match="is a pretrained model, which runs with PyTorch"):
        resolve_model("torchvision/fasterrcnn_mobilenet_v3_large_320_fpn", runtime=runtime)
    assert resolve_model(str(tiny_checkpoint), runtime="pytorch")[0].framework == "torchvision"
