"""Predictions exported without the platform: Parquet (streamed in parts) and COCO."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import write_images

from pipeline.prediction import Item, Prediction
from pipeline.stages.upload.export import ParquetWriter, mask_to_rle, rle_to_mask

S = {"conf": 0.0, "max_det": 4}


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (32, 17)])
def test_rle_round_trip(shape):
    rng = np.random.default_rng(sum(shape))
    for density in (0.0, 0.3, 1.0):
        mask = rng.random(shape) < density
        rle = mask_to_rle(mask)
        assert sum(rle["counts"]) == mask.size
        np.testing.assert_array_equal(rle_to_mask(rle), mask)


def test_parquet_and_coco_from_predict(tiny_model, tmp_path):
    paths = write_images(tmp_path / "imgs", 3, size=(40, 60))
    (tmp_path / "imgs" / "bad.jpg").write_text("nope")
    out = {"parquet": str(tmp_path / "out.parquet"), "coco": str(tmp_path / "coco.json")}
    preds = tiny_model.predict(input=tmp_path / "imgs", output=out, settings=S, progress=False)
    table = pq.read_table(out["parquet"]).to_pylist()
    objects = [r for r in table if r["error"] is None]
    errors = [r for r in table if r["error"] is not None]
    assert len(objects) == sum(len(p) for p in preds if p.error is None)
    assert [r["name"] for r in errors] == ["bad.jpg"]
    first = [r for r in objects if r["name"] == paths[0].name]
    p0 = next(p for p in preds if p.name == paths[0].name)
    np.testing.assert_allclose([[r["x1"], r["y1"], r["x2"], r["y2"]] for r in first], p0.boxes, atol=1e-4)
    assert [r["class"] for r in first] == p0.classes
    coco = json.loads((tmp_path / "coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["a", "b", "c"]
    assert len(coco["images"]) == 3 and len(coco["annotations"]) == len(objects)
    ann = coco["annotations"][0]
    x, y, w, h = ann["bbox"]
    np.testing.assert_allclose([x, y, x + w, y + h], p0.boxes[0], atol=0.01)


def test_parquet_parts_written_so_far_survive(tmp_path, monkeypatch):
    import pipeline.stages.upload.export as export

    monkeypatch.setattr(export, "PARQUET_ROWS_PER_PART", 2)
    w = ParquetWriter(tmp_path / "p.parquet", job_id="j")
    p = Prediction(boxes=[[0, 0, 1, 1], [1, 1, 2, 2]], scores=[0.5, 0.6], class_ids=[0, 1], classes=["a", "b"],
                   orig_size=(4, 4), item=Item(index=0, key="x", name="x.png"))
    w.add([p])
    w.add([p])  # no close(): as if the process died here
    assert pq.read_table(tmp_path / "p.parquet").num_rows == 4


def test_parquet_rows_reach_disk_while_the_run_goes_on(tiny_model, tmp_path, monkeypatch):
    """Without an upload too, rows are on disk within PARQUET_FLUSH_S of being predicted, before the run ends."""
    import time

    from helpers import write_images

    import pipeline.stages.upload.export as export

    monkeypatch.setattr(export, "PARQUET_FLUSH_S", 0.0)  # every group of predictions is its own part
    root = tmp_path / "many"
    write_images(root, 150, size=(40, 50))
    out = tmp_path / "rows.parquet"
    with tiny_model.predict_detached(input=root, batch_size=1, settings={"conf": 0.0},
                                     output={"parquet": str(out)}) as session:
        seen = [session.next(timeout=120) for _ in range(20)]
        deadline = time.time() + 30
        while not list(out.glob("part-*.parquet")) and time.time() < deadline:
            time.sleep(0.1)
        assert not session.is_done()
        names = {r["name"] for r in pq.read_table(out).to_pylist()}
    assert {p.name for p in seen if len(p)} & names  # the first items' rows were written mid-run


def test_prediction_json_round_trip_with_masks():
    masks = np.zeros((2, 10, 12), bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 7:, :2] = True
    p = Prediction(boxes=[[3, 2, 9, 5], [0, 7, 2, 10]], scores=[0.9, 0.4], class_ids=[1, 0], classes=["b", "a"],
                   masks=masks, orig_size=(10, 12),
                   item=Item(index=0, key="file:x.jpg", name="x.jpg", source="x.jpg", image_path="x.jpg"))
    q = Prediction.from_json(json.loads(json.dumps(p.to_json())))
    np.testing.assert_array_equal(q.masks, masks)
    np.testing.assert_allclose(q.boxes, p.boxes)
    assert q.classes == p.classes and q.image_path == "x.jpg" and q.orig_size == (10, 12)
    ann = p.to_annotation()
    assert [lab.obj_class.name for lab in ann.labels] == ["b", "a"]
    assert [lab.confidence for lab in ann.labels] == [pytest.approx(0.9), pytest.approx(0.4)]


def test_prediction_shapes_are_checked():
    with pytest.raises(ValueError, match="disagree"):
        Prediction(boxes=[[0, 0, 1, 1]], scores=[0.5, 0.4], class_ids=[0], classes=["a"])
    with pytest.raises(ValueError, match="masks must be"):
        Prediction(boxes=[[0, 0, 1, 1]], scores=[0.5], class_ids=[0], classes=["a"], masks=np.zeros((2, 3, 3)))


def test_draw_shows_the_objects(tiny_model, tmp_path):
    [path] = write_images(tmp_path, 1, size=(60, 80))
    [p] = tiny_model.predict(input=path, settings=S, progress=False)
    img = p.load_image()
    drawn = p.draw()
    assert drawn.shape == img.shape and drawn.dtype == np.uint8
    assert (drawn != img).any()


def test_parquet_resumes_with_its_job_and_a_new_run_replaces_it(tiny_model, api, tmp_path, capsys):
    project = api.project.create("exp")
    ds = api.dataset.create(project.id, "ds")
    files = write_images(tmp_path / "src", 4, size=(40, 60))
    infos = [api.image.upload(ds.id, p.name, p) for p in files[:2]]
    out = str(tmp_path / "rows.parquet")
    first = tiny_model.predict(project_id=project.id, upload="append", job_id="exp-job", settings=S,
                               output={"parquet": out}, progress=False)
    infos += [api.image.upload(ds.id, p.name, p) for p in files[2:]]  # the project grew
    rest = tiny_model.predict(project_id=project.id, upload="append", job_id="exp-job", settings=S,
                              output={"parquet": out}, progress=False)
    assert len(rest) == 2  # resumed: the first two were done
    rows = pq.read_table(out).to_pylist()
    assert sorted({r["image_id"] for r in rows}) == [i.id for i in infos]
    assert len(rows) == sum(len(p) for p in first + rest)
    with pytest.raises(ValueError, match="output.coco cannot resume"):
        tiny_model.predict(project_id=project.id, upload="append", job_id="exp-job",
                           output={"coco": str(tmp_path / "c.json")})
    again = tiny_model.predict(image_ids=[infos[0].id], settings=S, output={"parquet": out}, progress=False)
    assert "replaced" in capsys.readouterr().err
    assert pq.read_table(out).num_rows == len(again[0])


def test_parquet_path_that_is_a_file_is_an_argument_error(tiny_model, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        tiny_model.predict(input=np.zeros((8, 8, 3), np.uint8), output={"parquet": str(tmp_path / "afile")})


@pytest.mark.parametrize("path", ["/proc/x.parquet", "/proc/self/x/y.parquet"])
def test_an_output_folder_that_cannot_be_created_is_refused_before_any_work(path):
    """/proc passes `os.access(W_OK)` for root, and refuses only when a folder is made there: the check makes one."""
    from pipeline.stages.upload.outputs import check_output

    with pytest.raises(ValueError, match=rf"output parquet {path}: cannot write there"):
        check_output({"parquet": path})


def test_coco_path_that_is_a_directory_is_an_argument_error(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="is a directory; the COCO output is one JSON file"):
        tiny_model.predict(input=np.zeros((8, 8, 3), np.uint8), output={"coco": str(tmp_path)})
    assert not list(tmp_path.glob(".coco-*"))
