"""Fixtures of the viewer tests: a filled platform (module-scoped: the tests only read it) and API clients."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def viewer_data(tmp_path_factory):
    from viewer_data import build

    tmp = tmp_path_factory.mktemp("viewer")
    return build(tmp / "platform", tmp)


@pytest.fixture(scope="module")
def client(viewer_data):
    """A TestClient on the viewer without a token (loopback Host: the base URL is 127.0.0.1)."""
    from fastapi.testclient import TestClient

    from pipeline.viewer import create_app

    with TestClient(create_app(viewer_data["data_dir"]), base_url="http://127.0.0.1:8000",
                    raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def fresh_data(tmp_path):
    """A platform of its own, for tests that damage files."""
    from viewer_data import build

    return build(tmp_path / "platform", tmp_path)
