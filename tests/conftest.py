"""Shared fixtures: one Ray instance per test session, small checkpoints, per-test platform data dirs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Tests never reach the network: a pretrained model must come from a pre-filled cache the test sets up. These are
# set before Ray starts, so every Ray worker inherits them.
os.environ.setdefault("PIPELINE_DEPLOY_TIMEOUT_S", "300")
os.environ["PIPELINE_OFFLINE"] = "1"
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="pipeline-test-torch-home-")
# The object-store tests talk to an S3 server on 127.0.0.1 (moto); the Ray workers that read its objects inherit
# these dummy credentials. No instance-metadata lookup (it would wait on a network that is not there).
os.environ.setdefault("AWS_ACCESS_KEY_ID", "pipeline-tests")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "pipeline-tests")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

TINY_CLASSES = ["a", "b", "c"]
# The project's tiny R-CNN (workers/models/_small_archs.py), random weights: a few ms per small image on a CPU,
# deterministic, and through exactly the same torchvision code paths as the big models.
TINY_KWARGS = {"min_size": 96, "max_size": 128}


@pytest.fixture(scope="session")
def ray_session():
    """The one Ray instance of the test session (2 CPUs, no dashboard): a local one of its own, even when a
    `ray start` cluster runs on the machine (ray.init would attach to it, and refuse num_cpus)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _tiny(tmp_path_factory, architecture: str, task_type: str, seed: int) -> Path:
    import torch

    from workers.models import save_checkpoint
    from workers.models._small_archs import SMALL_ARCHITECTURES

    torch.manual_seed(seed)
    model = SMALL_ARCHITECTURES[architecture](num_classes=len(TINY_CLASSES) + 1, **TINY_KWARGS)
    path = tmp_path_factory.mktemp("ckpt") / f"{architecture}.pth"
    save_checkpoint(model, path, framework="torchvision", architecture=architecture, task_type=task_type,
                    classes=TINY_CLASSES, arch_kwargs=TINY_KWARGS)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weights box detector (`fasterrcnn_tiny_fpn`) with classes a, b, c."""
    return _tiny(tmp_path_factory, "fasterrcnn_tiny_fpn", "detection", 0)


@pytest.fixture(scope="session")
def tiny_mask_checkpoint(tmp_path_factory) -> Path:
    """A random-weights instance-segmentation model (`maskrcnn_tiny_fpn`) with classes a, b, c."""
    return _tiny(tmp_path_factory, "maskrcnn_tiny_fpn", "instance_segmentation", 1)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "platform"


@pytest.fixture
def api(ray_session, data_dir):
    import pipeline

    return pipeline.Api(data_dir=data_dir)


@pytest.fixture(scope="session")
def tiny_deployment(ray_session, tiny_checkpoint, tmp_path_factory):
    """One CPU deployment of the tiny checkpoint shared by the session; connect to it from any Api."""
    import pipeline

    api = pipeline.Api(data_dir=tmp_path_factory.mktemp("deploy-home"))
    model = api.nn.deploy(str(tiny_checkpoint), device="cpu", replicas=1)
    yield model
    model.shutdown()


@pytest.fixture
def tiny_model(api, tiny_deployment):
    """The shared tiny deployment, bound to this test's platform."""
    return api.nn.connect(tiny_deployment.task_id)


@pytest.fixture(scope="session")
def direct_tiny(tiny_checkpoint):
    """The tiny checkpoint's model called directly in this process."""
    from helpers import DirectModel

    return DirectModel(tiny_checkpoint)


class _Server:
    """A local HTTP server for URL inputs: serves files from a root, 404s the rest, and sleeps on /slow/."""

    def __init__(self):
        import http.server
        import threading
        import time

        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's API
                if self.path.startswith("/slow/"):
                    time.sleep(server.slow_seconds)
                path = server.files.get(self.path)
                if self.path.startswith("/once/"):  # served the first time only, then 404
                    server.files.pop(self.path, None)
                if path is None:
                    self.send_error(404, "Not Found")
                    return
                data = Path(path).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.files: dict[str, str] = {}
        self.slow_seconds = 5.0
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str, root: Path, prefix: str = "/") -> str:
        route = f"{prefix}{name}"
        self.files[route] = str(Path(root) / name)
        return f"http://127.0.0.1:{self.httpd.server_port}{route}"

    def missing(self, name: str = "missing.jpg") -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{name}"


@pytest.fixture(scope="session")
def http_server():
    server = _Server()
    yield server
    server.httpd.shutdown()


def pytest_runtest_teardown(item, nextitem):
    """A test that imports Ultralytics itself (to build or run a YOLO model directly) gets its process-wide patches of
    `PIL.Image.open` and `torch.save` undone afterwards, as the adapter undoes them: the tests after it must see
    Pillow's own errors for a file that is not an image."""
    import sys

    if "ultralytics.utils.patches" in sys.modules:
        from workers.models._ultralytics_load import undo_patches

        undo_patches()
