"""A full disk during an upload (issue 19): the platform's data dir on a small tmpfs that the blobs (create) or the
annotations (append) fill. The run stops with a `DiskFullError` naming the data dir; the database is intact; no
referenced blob is missing or half written; once space is freed, the same job id resumes and the project ends up
equal to a clean run's.

Mounting a tmpfs needs root (as in the project's containers); elsewhere these tests are skipped, saying why.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from helpers import write_images

import pipeline
from pipeline.exceptions import DiskFullError, UploadError

S = {"conf": 0.0, "max_det": 3}
N_CREATE = 12
S_MANY = {"conf": 0.0, "max_det": 100}  # ~25 KB of annotation JSON per image: a few images fill what is left


class SmallDisk:
    """A tmpfs of `size` mounted at `path` for one test."""

    def __init__(self, path: Path):
        self.path = path

    def mount(self, size: str) -> None:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.path)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs to fill ({r.stderr.strip() or r.returncode}); needs root")

    def grow(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True, capture_output=True)

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int) -> Path:
        """Write a file that takes all the free space but `leave` bytes; returns it (delete it to free the space)."""
        filler = self.path / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:  # ENOSPC: full
            pass
        finally:
            os.close(fd)
        os.truncate(filler, max(0, filler.stat().st_size - leave))
        return filler


@pytest.fixture
def disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill needs root")
    path = tmp_path / "disk"
    path.mkdir()
    d = SmallDisk(path)
    yield d
    subprocess.run(["umount", "-l", str(path)], capture_output=True)  # lazy: the test's connections may be open


def _snapshot(api, project_id: int) -> dict:
    """dataset / image name -> (content hash, sorted (class, rounded box)): what a project holds."""
    out = {}
    for ds in api.dataset.list(project_id):
        for info in api.image.list(ds.id):
            labels = api.annotation.get(info.id).labels
            objects = sorted((lab.obj_class.name, tuple(round(v, 2) for v in lab.geometry.to_xyxy())) for lab in labels)
            out[f"{ds.name}/{info.name}"] = (info.hash, objects)
    return out


def _assert_intact(api, project_id: int) -> None:
    """SQLite's integrity check passes, and every image the project references is a whole blob: there, with the
    content its hash names; no partial copy is left in the blob directory."""
    db = api.platform.store.db_path
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    for ds in api.dataset.list(project_id):
        for info in api.image.list(ds.id):
            data = Path(info.path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == info.hash, info.name
    assert list(api.platform.store.blobs_dir.glob(".incoming-*")) == []


def _assert_says_the_disk_is_full(message: str, disk: SmallDisk) -> None:
    """Which disk (the data dir), that it is full, and what to do: free space, then resume the job by its id."""
    for words in (f"the disk holding the platform data dir {disk.path / 'platform'} is full", "Free space",
                  "job_id"):
        assert words in message, message


def _target_project(api) -> int:
    [project] = [p for p in api.project.list() if p.name == "src"]
    return project.id


@pytest.mark.slow
def test_create_stops_when_the_blobs_fill_the_disk_then_resumes(tiny_deployment, disk, tmp_path):
    src = tmp_path / "src"
    # noise PNGs of 300 KB on a disk of 1 MB: a blob copy is what finds it full, while SQLite still has room;
    # each item failing on its own ("cannot store the image") would run on through every item left
    write_images(src, N_CREATE, size=(320, 320), seed=3, fmt="png")
    disk.mount("1m")
    api = pipeline.Api(data_dir=disk.path / "platform")
    model = api.nn.connect(tiny_deployment.task_id)

    with pytest.raises(DiskFullError) as info:
        model.predict(input=str(src), upload="create", job_id="fills-the-disk", batch_size=4, settings=S,
                      progress=False)
    message = str(info.value)
    assert isinstance(info.value, UploadError)
    _assert_says_the_disk_is_full(message, disk)
    assert "cannot be read" not in message and "cannot store the image" not in message
    project_id = _target_project(api)
    _assert_intact(api, project_id)
    stored = len(_snapshot(api, project_id))
    assert stored < N_CREATE

    disk.grow("32m")  # space freed: the same job resumes after what it committed
    rest = model.predict(input=str(src), upload="create", job_id="fills-the-disk", batch_size=4, settings=S,
                         progress=False)
    assert len(rest) == N_CREATE - stored and all(p.error is None for p in rest)
    _assert_intact(api, project_id)

    clean = pipeline.Api(data_dir=tmp_path / "clean")
    clean.nn.connect(tiny_deployment.task_id).predict(input=str(src), upload="create", batch_size=4, settings=S,
                                                      progress=False)
    assert _snapshot(api, project_id) == _snapshot(clean, _target_project(clean))
    assert [p.name for p in api.project.list()] == ["src"]  # resumed into its own project, not a new one


def _project_with_images(api, paths) -> int:
    project = api.project.create("full")
    ds = api.dataset.create(project.id, "ds")
    for p in paths:
        api.image.upload(ds.id, p.name, p)
    return project.id


@pytest.mark.slow
def test_append_into_a_project_whose_disk_is_full_stops_then_resumes(tiny_deployment, disk, tmp_path):
    paths = write_images(tmp_path / "src", 12, size=(96, 128), seed=4)
    disk.mount("4m")
    api = pipeline.Api(data_dir=disk.path / "platform")
    project_id = _project_with_images(api, paths)
    model = api.nn.connect(tiny_deployment.task_id)
    model.predict(input=paths[0], settings=S, progress=False)  # the model is warm: the disk is what fails
    filler = disk.fill(leave=48 << 10)  # room for the job's records and an image or two of annotations

    with pytest.raises(DiskFullError) as info:
        model.predict(project_id=project_id, upload="append", job_id="full-append", batch_size=2, settings=S_MANY,
                      progress=False)
    _assert_says_the_disk_is_full(str(info.value), disk)
    _assert_intact(api, project_id)

    filler.unlink()
    model.predict(project_id=project_id, upload="append", job_id="full-append", batch_size=2, settings=S_MANY,
                  progress=False)
    _assert_intact(api, project_id)

    clean = pipeline.Api(data_dir=tmp_path / "clean")
    clean_id = _project_with_images(clean, paths)
    clean.nn.connect(tiny_deployment.task_id).predict(project_id=clean_id, upload="append", batch_size=2,
                                                      settings=S_MANY, progress=False)
    expected = _snapshot(clean, clean_id)
    assert sum(len(objects) for _, objects in expected.values()) > 12 * 20  # the annotations did fill the disk
    assert _snapshot(api, project_id) == expected  # every image's objects exactly once


def test_a_blob_that_fills_the_disk_is_a_disk_full_error_not_a_bad_file(disk, tmp_path):
    """The platform's own writers of blobs: `image.upload` and a project folder's import. A full disk is said as
    such (before: a raw OSError, and "cannot be read" for the import's file), and nothing is left half written."""
    [big] = write_images(tmp_path / "src", 1, size=(400, 400), seed=5, fmt="png")  # 470 KB
    folder = tmp_path / "folder"
    (folder / "ds" / "img").mkdir(parents=True)
    (folder / "meta.json").write_text('{"classes": [], "tags": [], "projectType": "images"}')
    (folder / "ds" / "img" / big.name).write_bytes(big.read_bytes())
    disk.mount("256k")
    api = pipeline.Api(data_dir=disk.path / "platform")
    project = api.project.create("p")
    ds = api.dataset.create(project.id, "ds")

    with pytest.raises(DiskFullError) as info:
        api.image.upload(ds.id, big.name, big)
    _assert_says_the_disk_is_full(str(info.value), disk)
    with pytest.raises(DiskFullError) as info:
        api.project.import_dir(folder)
    assert "cannot be read" not in str(info.value)
    _assert_says_the_disk_is_full(str(info.value), disk)
    assert [p.name for p in api.project.list()] == ["p"] and api.image.list(ds.id) == []
    _assert_intact(api, project.id)


@pytest.mark.slow
def test_output_files_on_a_full_disk_stop_the_file_job_then_it_resumes(tiny_model, disk, tmp_path, monkeypatch):
    """A file job (no upload) whose Parquet parts and COCO file fill their disk: a `DiskFullError` naming the
    output and the job id (before: a raw OSError as the upload's failure); the same job id then resumes and the
    COCO file equals a clean run's."""
    import json

    import pipeline.stages.upload.export as export
    from pipeline.stages.upload.export import read_parts
    from pipeline.stages.upload.location import Location

    monkeypatch.setattr(export, "PARQUET_FLUSH_S", 0.0)  # a part per group of predictions
    imgs = tmp_path / "imgs"
    write_images(imgs, 12, size=(64, 64), seed=3)
    disk.mount("4m")
    out = {"parquet": str(disk.path / "parts"), "coco": str(disk.path / "c.json")}
    filler = disk.fill(leave=48 * 1024)
    with pytest.raises(DiskFullError) as info:
        tiny_model.predict(input=imgs, settings=S_MANY, batch_size=1, job_id="full-1", output=out, progress=False)
    message = str(info.value)
    assert "the disk holding the output" in message and "is full" in message, message
    assert "job_id='full-1'" in message, message
    done = sum(1 for _ in read_parts(Location(disk.path / "parts", "parts"), with_rows=False))
    assert done < 12

    filler.unlink()
    rest = tiny_model.predict(input=imgs, settings=S_MANY, batch_size=1, job_id="full-1", output=out, progress=False)
    assert len(rest) == 12 - done and all(p.error is None for p in rest)
    clean = tmp_path / "clean.json"
    tiny_model.predict(input=imgs, settings=S_MANY, batch_size=1, output={"coco": str(clean)}, progress=False)
    assert json.loads((disk.path / "c.json").read_text()) == json.loads(clean.read_text())
