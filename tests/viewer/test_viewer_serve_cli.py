"""`pipeline serve` and `Api.serve`: what they hand uvicorn (its run is replaced: the tests check the app and the
address it would serve), and their refusals as exit codes."""

from __future__ import annotations

import pytest


@pytest.fixture
def served(monkeypatch):
    import uvicorn

    configs = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: configs.append(self.config))
    return configs


def _client(config, host: str):
    from fastapi.testclient import TestClient

    return TestClient(config.app, base_url=f"http://{host}:{config.port}")


def test_pipeline_serve_serves_the_data_dir_given_either_way(viewer_data, served, capsys):
    from pipeline.app.cli import main

    data_dir = str(viewer_data["data_dir"])
    assert main(["--data-dir", data_dir, "serve", "--port", "8123"]) == 0
    assert main(["serve", "--data-dir", data_dir]) == 0
    err = capsys.readouterr().err
    assert "open http://127.0.0.1:8123/\n" in err and "open http://127.0.0.1:8000/\n" in err
    assert [(c.host, c.port) for c in served] == [("127.0.0.1", 8123), ("127.0.0.1", 8000)]
    with _client(served[0], "127.0.0.1") as c:
        names = [p["name"] for p in c.get("/api/projects").json()["projects"]]
    assert names == ["shapes", "clips"]


def test_pipeline_serve_on_another_host_needs_the_token(viewer_data, served, capsys):
    from pipeline.app.cli import main

    token = "a-token-of-the-user-1234"
    assert main(["--data-dir", str(viewer_data["data_dir"]), "serve", "--host", "0.0.0.0", "--token", token]) == 0
    from pipeline.viewer.server import viewer_url

    assert f"open {viewer_url('0.0.0.0', 8000, token)}\n" in capsys.readouterr().err  # this machine's name
    with _client(served[0], "192.168.1.5") as c:
        assert c.get("/api/runs").status_code == 401
        assert c.get("/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200


@pytest.mark.parametrize("extra, words", [
    (["--port", "70000"], "port must be an integer 0..65535"),
    (["--token", "short"], "the token must be 16 to 256 characters"),
])
def test_pipeline_serve_refuses_bad_arguments_with_exit_2(viewer_data, served, capsys, extra, words):
    from pipeline.app.cli import main

    assert main(["--data-dir", str(viewer_data["data_dir"]), "serve", *extra]) == 2
    assert words in capsys.readouterr().err and served == []


def test_pipeline_serve_of_a_dir_without_a_platform_says_how_to_fill_it(tmp_path, served, capsys):
    from pipeline.app.cli import main

    assert main(["serve", "--data-dir", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "no platform database" in err and "pipeline demo" in err and served == []
    assert not (tmp_path / "nothing").exists()  # looking created nothing


def test_api_serve_serves_its_own_platform(viewer_data, served):
    import io

    import pipeline

    api = pipeline.Api(data_dir=viewer_data["data_dir"])
    out = io.StringIO()
    api.serve(port=9001, out=out)
    assert "open http://127.0.0.1:9001/\n" in out.getvalue()
    with _client(served[0], "127.0.0.1") as c:
        assert c.get(f"/api/projects/{viewer_data['project']}").json()["name"] == "shapes"
