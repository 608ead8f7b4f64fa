"""cluster.yaml passes Ray's own cluster-launcher validation, and installs and starts what docs/cluster.md says."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_ray_validates_it(raw):
    # What `ray up` does before it touches AWS: fill in the provider's defaults, then check the schema.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(raw)
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_a_cpu_head_and_autoscaling_gpu_workers(raw):
    assert raw["provider"]["type"] == "aws"
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items() if name != raw["head_node_type"]]
    assert workers and all(w["resources"]["GPU"] >= 1 for w in workers)
    assert all(w["min_workers"] < w["max_workers"] for w in workers)  # it scales
    assert sum(w["min_workers"] for w in workers) >= 1  # a job always finds a GPU to deploy on
    assert not raw.get("docker")  # docker is off


def test_it_installs_the_project_and_starts_ray_with_the_dashboard(raw):
    setup = "\n".join(raw["setup_commands"])
    assert "pip install" in setup and "-e /home/ubuntu/cv-pipeline" in setup
    assert raw["file_mounts"]["/home/ubuntu/cv-pipeline"] == "."
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--head" in head_start and "--include-dashboard=true" in head_start and "--dashboard-port=8265" in head_start
    assert "--address=$RAY_HEAD_IP:6379" in " ".join(raw["worker_start_ray_commands"])


def test_the_shared_data_dir_matches_the_relabel_example(raw):
    from pipeline.app.config import load_config

    cfg = load_config(ROOT / "configs" / "relabel_project.yaml")
    home = cfg.ray.runtime_env["env_vars"]["PIPELINE_HOME"]
    assert home.startswith("/mnt/shared/") and home in "\n".join(raw["setup_commands"])
