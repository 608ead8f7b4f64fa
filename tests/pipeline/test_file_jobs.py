"""File jobs: a run without an upload resumes by its job id from the manifest its Parquet parts carry. SIGKILL
at several points, then the re-run: the rows equal one clean run's (none lost, none twice) and so does the COCO
file assembled from them."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import write_images

from pipeline.prediction import Item, Prediction
from pipeline.stages.upload.coco import CocoWriter
from pipeline.stages.upload.export import ParquetWriter, mask_to_rle, read_parts
from pipeline.stages.upload.location import Location

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(Path(__file__).with_name("file_job_script.py"))
S = {"conf": 0.0, "max_det": 3}
N = 60


def _keys(parquet_dir: Path) -> collections.Counter:
    """How many times each item is recorded in the parts' manifests."""
    if not parquet_dir.exists():
        return collections.Counter()
    return collections.Counter(r["key"] for r, _ in read_parts(Location(parquet_dir, "parts"), with_rows=False))


def _rows(parquet_dir: Path) -> list[dict]:
    return sorted(pq.read_table(parquet_dir).to_pylist(), key=lambda r: (r["source"], r["object_idx"] or 0))


def _start(config: Path, job_id: str, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([sys.executable, SCRIPT, "run", str(config), "--job-id", job_id], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)


def _kill_when(proc: subprocess.Popen, ready, log: Path) -> None:
    deadline = time.time() + 120
    while not ready():
        assert proc.poll() is None, f"the run ended before the kill point:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver dies wherever it is: predicting, between parts, in one
    proc.wait()


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_equals_one_clean_run(ray_session, tiny_deployment, tiny_model,
                                                                    tmp_path):
    imgs = tmp_path / "imgs"
    write_images(imgs, N, size=(40, 50))
    (imgs / "bad.jpg").write_bytes(b"not an image")
    clean = tmp_path / "clean"
    # batch_size=1: each image alone, so its objects do not depend on which images share its batch
    tiny_model.predict(input=imgs, settings=S, batch_size=1, progress=False,
                       output={"parquet": str(clean / "p.parquet"), "coco": str(clean / "c.json")})
    out = tmp_path / "out"
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps({
        "model": {"task_id": tiny_deployment.task_id}, "input": {"path": str(imgs)},
        "predict": {"batch_size": 1, "settings": S},
        "output": {"parquet": str(out / "p.parquet"), "coco": str(out / "c.json")},
        "ray": {"address": ray_session.get_runtime_context().gcs_address},
    }))
    parts = out / "p.parquet"
    kill_points = [
        lambda log: "file job crash-1" in log.read_text(),  # started, before (or at) its first part
        lambda log: sum(_keys(parts).values()) >= 10,
        lambda log: sum(_keys(parts).values()) >= done + 15,
    ]
    done = 0
    for i, point in enumerate(kill_points):
        log = tmp_path / f"run{i}.log"
        proc = _start(config, "crash-1", log)
        _kill_when(proc, lambda point=point, log=log: point(log), log)
        if done:  # what the killed runs recorded is skipped (nothing recorded: the job starts again)
            assert f"resuming, {done} item(s) already done are skipped" in log.read_text()
        done = sum(_keys(parts).values())
        assert max(_keys(parts).values(), default=1) == 1
    assert done < N + 1, "kill the job before it ends"
    log = tmp_path / "last.log"
    proc = _start(config, "crash-1", log)
    assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]
    assert f"resuming, {done} item(s) already done are skipped" in log.read_text()

    keys = _keys(parts)
    assert len(keys) == N + 1 and set(keys.values()) == {1}  # every item once
    assert _rows(parts) == _rows(clean / "p.parquet")  # none lost, none twice, the same values
    assert json.loads((out / "c.json").read_text()) == json.loads((clean / "c.json").read_text())


def test_a_finished_file_job_rerun_does_nothing_and_a_new_job_replaces_it(tiny_model, tmp_path, capsys):
    imgs = tmp_path / "imgs"
    write_images(imgs, 3, size=(40, 50))
    out = {"parquet": str(tmp_path / "p.parquet"), "coco": str(tmp_path / "c.json")}
    first = tiny_model.predict(input=imgs, settings=S, job_id="files-1", output=out, progress=False)
    coco = (tmp_path / "c.json").read_text()
    assert "re-run with job_id='files-1' to resume" in capsys.readouterr().err
    again = tiny_model.predict(input=imgs, settings=S, job_id="files-1", output=out, progress=False)
    assert again == [] and "resuming, 3 item(s) already done" in capsys.readouterr().err
    assert (tmp_path / "c.json").read_text() == coco  # assembled again from the same parts
    other = tiny_model.predict(input=imgs / "img_0000.jpg", settings=S, output=out, progress=False)
    assert "replaced" in capsys.readouterr().err
    assert pq.read_table(out["parquet"]).num_rows == len(other[0]) and len(first) == 3


def test_a_job_id_given_again_on_another_input_is_refused_and_its_parts_kept(tiny_model, tmp_path):
    """Resuming skips by item key: on another input it would skip nothing, and its COCO would hold the earlier
    input's images too. Refused before any work; the job's parts stay as they were."""
    imgs = tmp_path / "imgs"
    write_images(imgs, 3, size=(40, 50))
    out = {"parquet": str(tmp_path / "p.parquet"), "coco": str(tmp_path / "c.json")}
    tiny_model.predict(input=imgs / "img_0000.jpg", settings=S, job_id="mix", output=out, progress=False)
    before = sorted(p.name for p in (tmp_path / "p.parquet").iterdir())
    with pytest.raises(ValueError, match=r"job 'mix' was started on another input \(where='.*img_0000\.jpg'\); "
                                         r"this run's is where='.*img_0001\.jpg'.*give a new job_id"):
        tiny_model.predict(input=imgs / "img_0001.jpg", settings=S, job_id="mix", output=out, progress=False)
    assert sorted(p.name for p in (tmp_path / "p.parquet").iterdir()) == before
    # the same input (written another way) resumes
    again = tiny_model.predict(input=str(imgs / "." / "img_0000.jpg"), settings=S, job_id="mix", output=out,
                               progress=False)
    assert again == []


def test_a_relative_path_matches_its_job_by_the_files_it_names(tiny_model, tmp_path, monkeypatch):
    """The same folder given relative or absolute is the same input; the same relative path from another
    folder is not."""
    for name in ("a", "b"):
        write_images(tmp_path / name / "imgs", 2, size=(40, 50), seed=ord(name))
    out = {"parquet": str(tmp_path / "p.parquet")}
    monkeypatch.chdir(tmp_path / "a")
    tiny_model.predict(input="imgs", settings=S, job_id="rel", output=out, progress=False)
    assert tiny_model.predict(input=str(tmp_path / "a" / "imgs"), settings=S, job_id="rel", output=out,
                              progress=False) == []  # absolute: the same files, resumed (all done)
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(ValueError, match="was started on another input"):
        tiny_model.predict(input="imgs", settings=S, job_id="rel", output=out, progress=False)


def test_a_coco_only_job_keeps_its_parts_until_it_is_done(tiny_model, tmp_path, monkeypatch):
    import pipeline.stages.upload.export as export

    monkeypatch.setattr(export, "PARQUET_FLUSH_S", 0.0)  # a part per group of predictions
    imgs = tmp_path / "imgs"
    write_images(imgs, 30, size=(40, 50))
    out = {"coco": str(tmp_path / "c.json")}
    with tiny_model.predict_detached(input=imgs, settings=S, batch_size=1, job_id="coco-1", output=out) as session:
        seen = [session.next(timeout=60) for _ in range(3)]
    staged = tmp_path / ".c.json.parts"  # stopped: its working parts stay for the resumed run
    done = sum(1 for _ in read_parts(Location(staged, "parts"), with_rows=False))
    assert len(seen) == 3 and 3 <= done < 30
    rest = tiny_model.predict(input=imgs, settings=S, batch_size=1, job_id="coco-1", output=out, progress=False)
    assert len(rest) == 30 - done
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "imgs"]  # done: the working parts are gone
    full = tiny_model.predict(input=imgs, settings=S, batch_size=1, output={"coco": str(tmp_path / "d.json")},
                              progress=False)
    assert len(full) == 30
    assert json.loads((tmp_path / "c.json").read_text()) == json.loads((tmp_path / "d.json").read_text())


def test_coco_from_parts_has_the_masks_rle_and_input_order(tmp_path):
    masks = np.zeros((2, 10, 12), bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 7:, :2] = True

    def pred(index: int, error: str | None = None) -> Prediction:
        item = Item(index=index, key=f"k{index}", name=f"{index}.png", dataset=("d",))
        if error:
            return Prediction.empty(item, error=error)
        return Prediction(boxes=[[3, 2, 9, 5], [0, 7, 2, 10]], scores=[0.9, 0.4], class_ids=[1, 0],
                          classes=["b", "a"], masks=masks, orig_size=(10, 12), item=item)

    parts = ParquetWriter(tmp_path / "p.parquet", job_id="j")
    coco = CocoWriter(tmp_path / "c.json", ["a", "b"], parts)
    for batch in ([pred(2)], [pred(0), pred(1, "broken")]):  # completion order is not input order
        parts.add(batch)
        parts.flush()
    coco.close()
    doc = json.loads((tmp_path / "c.json").read_text())
    assert [i["file_name"] for i in doc["images"]] == ["d/0.png", "d/2.png"]
    assert [a["segmentation"] for a in doc["annotations"][:2]] == [mask_to_rle(m) for m in masks]
    assert [a["area"] for a in doc["annotations"][:2]] == [18, 6] and doc["annotations"][0]["category_id"] == 2


def test_a_part_that_was_being_written_is_ignored_and_cleaned(tmp_path):
    w = ParquetWriter(tmp_path / "p.parquet", job_id="j")
    w.add([Prediction.empty(Item(index=0, key="k0", name="a.png"), orig_size=(4, 4))])
    w.flush()
    (tmp_path / "p.parquet" / ".part-00001.parquet.0a1b2c3d.tmp").write_bytes(b"PAR1 half a part")
    assert pq.read_table(tmp_path / "p.parquet").num_rows == 0  # readers skip hidden files
    again = ParquetWriter(tmp_path / "p.parquet", job_id="j")
    assert again.resumed and again.done_keys == {"k0"}
    assert sorted(p.name for p in (tmp_path / "p.parquet").iterdir()) == ["part-00000.parquet"]
