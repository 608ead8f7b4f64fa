"""Jobs that survive a crash (SIGKILL mid-run, then resume by job id) and jobs that run side by side."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import write_images

SCRIPT = str(Path(__file__).with_name("upload_job_script.py"))
S = {"conf": 0.0, "max_det": 3}
N = 40


@pytest.fixture
def project(api, tmp_path):
    project = api.project.create("jobs")
    ds = api.dataset.create(project.id, "ds")
    infos = [api.image.upload(ds.id, p.name, p) for p in write_images(tmp_path / "src", N, size=(40, 50))]
    return project, infos


def _start(ray_session, tiny_deployment, data_dir, project_id, mode, job_id):
    address = ray_session.get_runtime_context().gcs_address
    return subprocess.Popen(
        [sys.executable, SCRIPT, address, str(tiny_deployment.task_id), str(data_dir), str(project_id), mode, job_id],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def _done_items(data_dir, job_id) -> int:
    try:
        with sqlite3.connect(Path(data_dir) / "platform.db", timeout=30) as conn:
            row = conn.execute("SELECT COUNT(*) FROM upload_job_items WHERE job_id = ?", (job_id,)).fetchone()
            return row[0]
    except sqlite3.OperationalError:  # the job tables are not there yet
        return 0


def _expected(tiny_model, infos):
    """What each image must hold: its predicted objects, exactly once (boxes rounded as stored)."""
    preds = tiny_model.predict(image_ids=[i.id for i in infos], settings=S, progress=False)
    return {p.image_id: sorted(tuple(round(float(v), 2) for v in b) for b in p.boxes) for p in preds}


def _boxes(api, image_id):
    return sorted(tuple(round(v, 2) for v in lab.geometry.to_xyxy()) for lab in api.annotation.get(image_id).labels)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["append", "iou_merge"])
def test_sigkill_midway_then_resume_loses_and_duplicates_nothing(ray_session, tiny_deployment, tiny_model, api,
                                                                   data_dir, project, mode):
    project, infos = project
    job_id = f"crash-{mode}"
    proc = _start(ray_session, tiny_deployment, data_dir, project.id, mode, job_id)
    deadline = time.time() + 240
    while _done_items(data_dir, job_id) < 5:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the job made no progress"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-run, between two uploads or inside one
    proc.wait()
    done_at_kill = _done_items(data_dir, job_id)
    assert 5 <= done_at_kill < N, "kill the job midway"

    resumed = tiny_model.predict(project_id=project.id, upload=mode, job_id=job_id, batch_size=4, settings=S,
                                 progress=False)
    assert len(resumed) == N - done_at_kill  # the items already done are skipped
    assert _done_items(data_dir, job_id) == N
    expected = _expected(tiny_model, infos)
    for info in infos:
        assert _boxes(api, info.id) == expected[info.id], f"image {info.id}"


@pytest.mark.slow
def test_two_jobs_appending_to_one_project_at_once_lose_nothing(ray_session, tiny_deployment, tiny_model, api,
                                                                 data_dir, project):
    project, infos = project
    procs = [_start(ray_session, tiny_deployment, data_dir, project.id, "append", f"side-{i}") for i in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        assert f"DONE {N}" in out and "ERROR" not in out
    expected = _expected(tiny_model, infos)
    for info in infos:
        assert _boxes(api, info.id) == sorted(expected[info.id] * 2), f"image {info.id}"


def test_a_database_that_stays_locked_ends_the_run_at_the_first_failure(tiny_model, api, project, monkeypatch):
    """The first group whose write fails (here: the database stayed locked) ends the run with `UploadError`; the
    groups still queued are not tried (each would wait out the lock again) and no item is reported failed; the
    job then resumes and finishes. (A group's write fails as a whole: its transaction is rolled back.)"""
    from pipeline.exceptions import PipelineError, UploadError
    from pipeline.stages.upload.target import Target

    project_obj, infos = project
    real, calls = Target.write, []

    def write(self, preds):
        calls.append(len(preds))
        if len(calls) >= 2:
            time.sleep(0.5)  # the lock's wait, shortened
            raise PipelineError("the platform database stayed locked by another writer for 30 s (database is locked)")
        return real(self, preds)

    monkeypatch.setattr(Target, "write", write)
    session = tiny_model.predict_detached(project_id=project_obj.id, upload="append", job_id="locked", settings=S,
                                          batch_size=1, progress=False)
    got = []
    with pytest.raises(UploadError, match="stayed locked"):
        for p in session:
            got.append(p)
    assert all(p.error is None and p.target is not None for p in got)  # only what was written reached the reader
    assert session.status()["failed"] == 0 and len(calls) == 2  # nothing was tried after the failure
    monkeypatch.setattr(Target, "write", real)
    rest = tiny_model.predict(project_id=project_obj.id, upload="append", job_id="locked", settings=S, progress=False)
    assert sorted(p.image_id for p in got + rest) == sorted(i.id for i in infos)
