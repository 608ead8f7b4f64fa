"""`pipeline platform import | export | ls`, run in-process through `pipeline.app.cli.main`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.app.cli import main
from pipeline.platform import Platform

SLY_PROJECT = Path(__file__).resolve().parents[1] / "fixtures" / "sly_project"


@pytest.fixture
def data_dir(tmp_path) -> str:
    return str(tmp_path / "data")


def test_import_ls_export(data_dir, tmp_path, capsys):
    assert main(["--data-dir", data_dir, "platform", "import", str(SLY_PROJECT)]) == 0
    out = capsys.readouterr().out
    assert "imported 'sly_project' as project 1: 3 datasets, 4 images, 5 objects" in out

    assert main(["--data-dir", data_dir, "platform", "ls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "TYPE", "DATASETS", "ITEMS", "OBJECTS"]
    assert lines[1].split() == ["1", "sly_project", "images", "3", "4", "5"]

    assert main(["--data-dir", data_dir, "platform", "ls", "1"]) == 0
    out = capsys.readouterr().out
    assert "project 1 'sly_project' (images): 4 images, 5 objects" in out
    assert "\n1   ds0      2" in out and "\n2     child  1" in out and "\n3   ds1      1" in out  # nested: indented
    assert "square    rectangle  #F5A623" in out and "blob      bitmap" in out
    assert "weather     oneof_string" in out

    target = tmp_path / "export"
    assert main(["--data-dir", data_dir, "platform", "export", "1", str(target)]) == 0
    assert f"exported project 1 ('sly_project') to {target}" in capsys.readouterr().out
    assert json.loads((target / "meta.json").read_text())["projectType"] == "images"
    assert (target / "ds0" / "datasets" / "child" / "ann" / "img_2.png.json").is_file()

    assert main(["--data-dir", data_dir, "platform", "import", str(target)]) == 0
    assert "imported 'export' as project 2: 3 datasets, 4 images, 5 objects" in capsys.readouterr().out
    assert [p.name for p in Platform(data_dir).project.list()] == ["sly_project", "export"]


def test_import_of_a_taken_name_says_so(data_dir, capsys):
    main(["--data-dir", data_dir, "platform", "import", str(SLY_PROJECT)])
    assert main(["--data-dir", data_dir, "platform", "import", str(SLY_PROJECT)]) == 0
    assert "as project 2 (named 'sly_project (1)'" in capsys.readouterr().out


def test_ls_empty_and_errors(data_dir, tmp_path, capsys):
    assert main(["--data-dir", data_dir, "platform", "ls"]) == 0
    assert "no projects" in capsys.readouterr().out
    assert main(["--data-dir", data_dir, "platform", "ls", "7"]) == 2
    assert "error: project 7 does not exist" in capsys.readouterr().err
    assert main(["--data-dir", data_dir, "platform", "export", "7", str(tmp_path / "x")]) == 2
    broken = tmp_path / "broken"
    broken.mkdir()
    assert main(["--data-dir", data_dir, "platform", "import", str(broken)]) == 2  # not a project folder: bad input, as a missing folder is
    assert "meta.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data-dir", data_dir, "platform"])


def test_default_data_dir_from_the_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    assert main(["platform", "import", str(SLY_PROJECT)]) == 0
    assert (tmp_path / "home" / "platform.db").is_file()
    capsys.readouterr()
