"""`pipeline demo` end to end (small), twice on one data dir."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main


@pytest.mark.slow
def test_demo_runs_twice_and_writes_pictures_and_the_project(ray_session, tmp_path, capsys):
    args = ["--data-dir", str(tmp_path / "home"), "demo", "--out", str(tmp_path / "out"), "--images", "6"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "relabeled 6 images" in first and "mean confidence" in first
    assert len(list((tmp_path / "out" / "images").glob("*.png"))) == 6  # for configs/predict_directory.yaml
    pictures = sorted((tmp_path / "out" / "pictures").glob("*.png"))
    assert 1 <= len(pictures) <= 4
    meta = json.loads((tmp_path / "out" / "project" / "meta.json").read_text())
    assert {c["title"] for c in meta["classes"]} >= {"circle", "square", "triangle"}
    assert any(t["name"] == "confidence" for t in meta["tags"])
    anns = list((tmp_path / "out" / "project").rglob("ann/*.json"))
    assert len(anns) == 6
    assert main(args) == 0  # a second run works too (a new project, the output folder refreshed)
    second = capsys.readouterr().out
    assert "created project 2" in second
