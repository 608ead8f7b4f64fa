"""Object-store inputs and outputs against a real S3 server (moto's, started here on 127.0.0.1): a prefix is
walked like a local directory and predicts the same; objects are read by the loading tasks; Parquet and COCO go
back to the bucket; bad stores, buckets and credentials fail before any work, a missing object is its item's
error."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import write_images

S = {"conf": 0.0, "max_det": 5}


class S3:
    def __init__(self, port: int):
        import pyarrow.fs as pafs

        self.port = port
        self.query = f"endpoint_override=127.0.0.1:{port}&scheme=http"
        self.fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                                    allow_bucket_creation=True)

    def uri(self, path: str) -> str:
        return f"s3://{path}?{self.query}"

    def put(self, key: str, data: bytes) -> None:
        with self.fs.open_output_stream(key) as f:
            f.write(data)

    def auth(self, on: bool) -> None:
        """moto checks every request's credentials (none are known to it: all are refused), or none."""
        import requests

        requests.post(f"http://127.0.0.1:{self.port}/moto-api/reset-auth", data=b"0" if on else b"inf", timeout=10)


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    store = S3(server.get_host_and_port()[1])
    store.fs.create_dir("data")
    yield store
    server.stop()


@pytest.fixture(scope="module")
def tree(s3, tmp_path_factory):
    """The same files on a local disk and under s3://data/imgs/: nested prefixes, hidden files and folders, a
    text file, a file that is no image."""
    root = tmp_path_factory.mktemp("tree") / "imgs"
    write_images(root, 2, size=(40, 56), seed=1)
    write_images(root / "sub", 2, size=(48, 40), seed=2)
    write_images(root / "sub" / "deeper", 1, size=(36, 36), seed=3, fmt="png")
    write_images(root / "zz", 1, size=(40, 40), seed=4)
    write_images(root / ".hidden", 1, size=(40, 40), seed=5)
    (root / ".dot.jpg").write_bytes((root / "img_0000.jpg").read_bytes())
    (root / "notes.txt").write_text("not an image")
    (root / "bad.jpg").write_bytes(b"not an image either")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        s3.put(f"data/imgs/{path.relative_to(root).as_posix()}", path.read_bytes())
    return root


def _same(local, remote):
    assert [(p.name, p.dataset, p.error is None) for p in remote] == [(p.name, p.dataset, p.error is None)
                                                                       for p in local]
    for a, b in zip(local, remote):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        assert a.classes == b.classes and a.orig_size == b.orig_size


@pytest.mark.slow
def test_a_prefix_predicts_like_the_same_folder_on_disk(tiny_model, s3, tree):
    runs = {}
    for recursive in (False, True):
        local = tiny_model.predict(input=tree, recursive=recursive, settings=S, progress=False)
        remote = tiny_model.predict(input=s3.uri("data/imgs/"), recursive=recursive, settings=S, progress=False)
        _same(local, remote)
        runs[recursive] = remote
    assert [p.name for p in runs[False]] == ["bad.jpg", "img_0000.jpg", "img_0001.jpg"]  # hidden, .txt skipped
    assert [("/".join(p.dataset), p.name) for p in remote] == [  # a folder's files, then its folders, by name
        ("", "bad.jpg"), ("", "img_0000.jpg"), ("", "img_0001.jpg"), ("sub", "img_0000.jpg"),
        ("sub", "img_0001.jpg"), ("sub/deeper", "img_0000.png"), ("zz", "img_0000.jpg")]
    [bad] = [p for p in remote if p.error]
    assert bad.name == "bad.jpg" and "not an image" in bad.error
    good = remote[1]
    assert good.source == "s3://data/imgs/img_0000.jpg" and good.image_path is None
    np.testing.assert_array_equal(good.load_image(), local[1].load_image())  # read through pyarrow, in the driver


@pytest.mark.slow
def test_single_objects_and_lists_and_a_missing_object_is_its_items_error(tiny_model, s3, tree):
    # batch_size=1: a batch's images are padded to its largest (torchvision), so batches must match too
    local = tiny_model.predict(input=[tree / "img_0001.jpg", tree / "sub" / "img_0000.jpg"], settings=S,
                               batch_size=1, progress=False)
    listed = [s3.uri("data/imgs/img_0001.jpg"), s3.uri("data/imgs/missing.jpg"), s3.uri("data/imgs/sub/img_0000.jpg")]
    remote = tiny_model.predict(input=listed, settings=S, batch_size=1, progress=False)
    assert "object not found" in remote[1].error and "s3://data/imgs/missing.jpg" in remote[1].error
    _same(local, [remote[0], remote[2]])
    [one] = tiny_model.predict(input=s3.uri("data/imgs/img_0001.jpg"), settings=S, progress=False)
    _same(local[:1], [one])


@pytest.mark.slow
def test_parquet_and_coco_are_written_to_the_bucket_and_read_back(tiny_model, s3, tree, tmp_path):
    kw = {"input": tree, "recursive": True, "settings": S, "progress": False}
    tiny_model.predict(**kw, output={"parquet": str(tmp_path / "p.parquet"), "coco": str(tmp_path / "c.json")})
    kw["input"] = s3.uri("data/imgs/")
    tiny_model.predict(**kw, output={"parquet": s3.uri("data/out/p.parquet"), "coco": s3.uri("data/out/c.json")})
    local = pq.read_table(tmp_path / "p.parquet").drop_columns(["source"]).to_pylist()
    remote = pq.read_table("data/out/p.parquet", filesystem=s3.fs).drop_columns(["source"]).to_pylist()
    assert remote == local and len(remote) > 5
    with s3.fs.open_input_stream("data/out/c.json") as f:
        assert json.loads(f.read()) == json.loads((tmp_path / "c.json").read_text())
    import pyarrow.fs as pafs

    listed = sorted(i.base_name for i in s3.fs.get_file_info(pafs.FileSelector("data/out")))
    assert listed == ["c.json", "p.parquet"]  # no working folder left behind


def test_upload_create_of_a_prefix_stores_its_images_and_folders(tiny_model, api, s3, tree):
    preds = tiny_model.predict(input=s3.uri("data/imgs/"), recursive=True, upload="create", settings=S,
                               progress=False)
    project = api.project.get(preds[1].target.project_id)
    assert project.name == "imgs"
    stored = {(api.dataset.get(i.dataset_id).name, i.name): i for i in api.image.iterate(project_id=project.id)}
    assert sorted(stored) == sorted(((p.dataset or ("ds0",))[-1], p.name) for p in preds if p.error is None)
    np.testing.assert_array_equal(api.image.download(stored[("deeper", "img_0000.png")].id),
                                  np.asarray(__import__("PIL.Image").Image.open(tree / "sub/deeper/img_0000.png")))


def _refused(tiny_model, monkeypatch, match, **kwargs):
    """The call fails before any work: no session is ever created."""
    import pipeline.stages.session as session

    def no_session(*a, **k):
        raise AssertionError("a session was started")

    monkeypatch.setattr(session, "PredictionSession", no_session)
    with pytest.raises(ValueError, match=match):
        tiny_model.predict(settings=S, progress=False, **kwargs)


def test_bad_stores_buckets_prefixes_and_videos_fail_before_any_work(tiny_model, s3, tree, monkeypatch):
    _refused(tiny_model, monkeypatch, "Unrecognized filesystem type", input="nosuchfs://bucket/x/")
    _refused(tiny_model, monkeypatch, "bucket 'nobucket' does not exist", input=s3.uri("nobucket/imgs/"))
    _refused(tiny_model, monkeypatch, "bucket 'nobucket' does not exist",
             input=[s3.uri("data/imgs/img_0000.jpg"), s3.uri("nobucket/a.jpg")])
    _refused(tiny_model, monkeypatch, "no object or prefix", input=s3.uri("data/nothing/"))
    s3.put("data/clips/a.mp4", b"\x00" * 64)
    _refused(tiny_model, monkeypatch, "videos are not read from object stores", input=s3.uri("data/clips/a.mp4"))
    _refused(tiny_model, monkeypatch, r"password is refused, .*AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, \.\.\.\)$",
             input="s3://key:secret@data/imgs/")  # and no unrelated hint after it
    _refused(tiny_model, monkeypatch, "output parquet .*bucket 'nobucket' does not exist", input=tree,
             output={"parquet": s3.uri("nobucket/p.parquet")})


def test_refused_credentials_fail_before_any_work(tiny_model, s3, monkeypatch):
    s3.auth(True)
    try:
        _refused(tiny_model, monkeypatch, "access refused by the store", input=s3.uri("data/imgs/"))
        _refused(tiny_model, monkeypatch, "access refused by the store", input=s3.uri("data/imgs/img_0000.jpg"))
    finally:
        s3.auth(False)


def test_an_object_that_vanishes_after_the_listing_is_its_items_error(s3, tree):
    """The loading task of an object deleted between the listing and its loading reports it for that item."""
    from pipeline.stages.loading.images import load_request
    from pipeline.stages.source.objects import object_plan
    from workers.decode import ItemError, load_one
    from workers.messages import DecodeOptions

    s3.put("data/vanish/a.jpg", (tree / "img_0000.jpg").read_bytes())
    s3.put("data/vanish/b.jpg", (tree / "img_0001.jpg").read_bytes())
    items = list(object_plan(s3.uri("data/vanish/"), recursive=False).iter_items())
    s3.fs.delete_file("data/vanish/a.jpg")
    with pytest.raises(ItemError, match=r"^object not found \(deleted since it was listed\?\): s3://data/vanish/a.jpg$"):
        load_one(load_request(items[0]), DecodeOptions(url_timeout=5.0))
    pixels, orig = load_one(load_request(items[1]), DecodeOptions(url_timeout=5.0))
    assert pixels.shape == (40, 56, 3) and orig == (40, 56)
