"""The upload job's log as the viewer's runs page shows it: every run of a job (its start, each resume) with its
state and totals, and every failed item with its error, all written by the upload stage itself."""

from __future__ import annotations

import time

import pytest
from helpers import write_images

from pipeline.exceptions import RunError
from pipeline.stages.upload import ImageTarget

S = {"conf": 0.0, "max_det": 3}


@pytest.fixture
def runs_api(data_dir):
    """GET a runs API path of the viewer over the test's platform (a fresh app each call: nothing cached)."""
    from fastapi.testclient import TestClient

    from pipeline.viewer import create_app

    def get(path: str) -> dict:
        with TestClient(create_app(data_dir), base_url="http://127.0.0.1:8000") as client:
            r = client.get(path)
        assert r.status_code == 200, (path, r.text)
        return r.json()

    return get


def test_a_run_with_bad_items_shows_each_with_its_error(tiny_model, api, tmp_path, runs_api):
    root = tmp_path / "in"
    write_images(root, 4, size=(40, 50))
    (root / "text.jpg").write_text("this is not a JPEG")  # fails in loading, before the model and the upload
    bad_name = write_images(tmp_path / "tmp", 1, seed=3)[0].rename(root / "a\\b.jpg")  # the platform refuses it
    started = time.time()
    preds = tiny_model.predict(input=root, upload="create", job_id="bad-items", settings=S, progress=False)
    failed = {p.key: p.error for p in preds if p.error is not None}
    assert len(failed) == 2 and "not an image" in failed[f"file:{root / 'text.jpg'}"]
    assert "upload failed" in failed[f"file:{bad_name}"]

    run = runs_api("/api/runs/bad-items")
    assert (run["mode"], run["state"], run["message"]) == ("create", "done", "")
    assert (run["items_done"], run["items_failed"], run["items_skipped"], run["items_total"]) == (4, 2, 0, 6)
    [only] = run["runs"]
    assert only["run"] == 1 and started <= only["started_at"] <= only["ended_at"] <= time.time()
    errors = runs_api("/api/runs/bad-items/errors")["errors"]
    assert {e["item_key"]: e["error"] for e in errors} == failed  # the prediction's own error, word for word
    assert [r["id"] for r in runs_api("/api/runs")["runs"]] == ["bad-items"]


def test_a_stopped_run_and_its_resume_each_get_a_row(tiny_model, api, tmp_path, runs_api):
    root = tmp_path / "many"
    write_images(root, 60, size=(40, 50))
    session = tiny_model.predict_detached(input=root, upload="create", job_id="stop-resume", batch_size=1,
                                          settings=S)
    assert len(session) == 60
    session.next(timeout=120)
    session.stop()
    assert session.wait(60)
    run = runs_api("/api/runs/stop-resume")
    assert run["state"] == "stopped" and run["runs"][0]["ended_at"] is not None
    done_first = run["items_done"]
    assert 0 < done_first < 60 and run["items_total"] == 60

    rest = tiny_model.predict(input=root, upload="create", job_id="stop-resume", settings=S, progress=False)
    assert len(rest) == 60 - done_first
    run = runs_api("/api/runs/stop-resume")
    assert [r["state"] for r in run["runs"]] == ["stopped", "done"] and run["state"] == "done"
    second = run["runs"][1]
    assert (second["items_skipped"], second["items_total"]) == (done_first, 60 - done_first)
    assert (run["items_done"], run["items_failed"], run["items_skipped"], run["items_total"]) == (
        60, 0, done_first, 60)


def test_a_failed_run_shows_failed_with_its_error(tiny_model, api, tmp_path, runs_api, monkeypatch):
    root = tmp_path / "crash"
    write_images(root, 20, size=(40, 50))
    real_write = ImageTarget.write
    calls = {"n": 0}

    def crash_on_second_group(self, preds):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash: the disk went away")
        return real_write(self, preds)

    monkeypatch.setattr(ImageTarget, "write", crash_on_second_group)
    with pytest.raises(RunError, match="simulated crash"):
        tiny_model.predict(input=root, upload="create", job_id="crashes", batch_size=1, settings=S, progress=False)
    run = runs_api("/api/runs/crashes")
    assert run["state"] == "failed" and "simulated crash: the disk went away" in run["message"]
    assert run["ended_at"] is not None and 0 < run["items_done"] < 20
