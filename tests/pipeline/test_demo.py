"""`pipeline demo` end to end (small), twice on one data dir."""

from __future__ import annotations

import json

import pytest

from pipeline.app.cli import main


@pytest.mark.slow
def test_demo_runs_twice_and_writes_pictures_and_the_project(ray_session, tmp_path, capsys):
    args = ["--data-dir", str(tmp_path / "home"), "demo", "--out", str(tmp_path / "out"), "--images", "6"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "relabeled 6 images" in first and "mean confidence" in first
    # it ends with how to look at the result: the viewer's command and the relabeled project's page
    assert first.rstrip().splitlines()[-1].endswith(
        f"`pipeline --data-dir {tmp_path / 'home'} serve`, then open http://127.0.0.1:8000/projects/1")
    assert len(list((tmp_path / "out" / "images").glob("*.png"))) == 6  # for configs/predict_directory.yaml
    pictures = sorted((tmp_path / "out" / "pictures").glob("*.png"))
    assert 1 <= len(pictures) <= 4
    meta = json.loads((tmp_path / "out" / "project" / "meta.json").read_text())
    assert {c["title"] for c in meta["classes"]} >= {"circle", "square", "triangle"}
    assert any(t["name"] == "confidence" for t in meta["tags"])
    anns = list((tmp_path / "out" / "project").rglob("ann/*.json"))
    assert len(anns) == 6
    _the_shapes_were_found(tmp_path / "out" / "project", 6)
    assert main(args) == 0  # a second run works too (a new project, the output folder refreshed)
    second = capsys.readouterr().out
    assert "created project 2" in second


def _the_shapes_were_found(project, n: int) -> None:
    """Every generated object (about half of them annotated beforehand) is in the relabeled project: the demo
    model's predictions filled in the rest, with confidence tags."""
    import numpy as np

    from pipeline.annotation import Annotation, ProjectMeta
    from pipeline.annotation.geometry import box_iou
    from pipeline.app.demo import SEED
    from pipeline.app.shapes import generate_sample

    meta = ProjectMeta.from_json(json.loads((project / "meta.json").read_text()))
    rng = np.random.default_rng(SEED)
    found = total = predicted = 0
    for i in range(n):  # the generation of pipeline.app.demo.build_shapes_project, draw for draw
        sample = generate_sample(rng, max_objects=4 if i < n * 2 // 3 else 6)
        for _ in sample.class_names:
            rng.random()
        [path] = project.rglob(f"ann/shapes_{i:04d}.png.json")
        ann = Annotation.from_json(json.loads(path.read_text()), meta)
        predicted += sum(lab.confidence is not None for lab in ann.labels)
        for box, cls in zip(sample.boxes, sample.class_names):
            total += 1
            found += any(lab.obj_class.name == cls and box_iou(box, lab.geometry.to_bbox().to_xyxy()) >= 0.5
                         for lab in ann.labels)
    assert predicted > 0
    assert found >= 0.8 * total, f"{found} of {total} shapes in the relabeled project"


@pytest.mark.parametrize("argv, words", [
    (["--images", "-3"], "--images must be a whole number of images, at least 1; got -3"),
    (["--images", "0"], "at least 1; got 0"),
    (["--out", "{file}"], "is a file; the demo writes a folder of pictures there"),
])
def test_bad_demo_arguments_exit_2_before_anything_is_made(tmp_path, capsys, argv, words):
    from pipeline.app.cli import main

    (tmp_path / "afile").write_text("x")
    argv = [a.replace("{file}", str(tmp_path / "afile")) for a in argv]
    assert main(["--data-dir", str(tmp_path / "platform"), "demo", *argv]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "platform").exists()  # no project was made
