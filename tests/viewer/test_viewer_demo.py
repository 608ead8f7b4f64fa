"""The viewer on the demo's own relabeled project, in a real browser: `pipeline demo` relabels a generated shapes
project (half its objects annotated beforehand) with the demo model; its image page must draw every object of the
stored annotation, the predicted ones (a `confidence` tag) dashed, hide the predictions below the confidence
slider, and hide a class its legend toggles off."""

from __future__ import annotations

import pytest
from test_viewer_browser import (  # noqa: F401 - fixtures
    _shown,
    _wait,
    _wait_images_loaded,
    browser,
    page,
    serve_viewer,
)

import pipeline
from pipeline.app.cli import main


@pytest.fixture(scope="module")
def demo_home(ray_session, tmp_path_factory):
    home = tmp_path_factory.mktemp("demo-viewer")
    assert main(["--data-dir", str(home / "home"), "demo", "--out", str(home / "out"), "--images", "6"]) == 0
    return home / "home"


@pytest.fixture(scope="module")
def demo_url(demo_home):
    yield from serve_viewer(demo_home)


def _an_image_with_both(api: pipeline.Api) -> tuple[int, list]:
    """An image of the relabeled project with existing and predicted objects of two classes or more."""
    (project,) = api.project.list()
    for info in api.image.iterate(project_id=project.id):
        labels = api.annotation.get(info.id).labels
        predicted = [lab for lab in labels if lab.confidence is not None]
        if predicted and len(predicted) < len(labels) and len({lab.obj_class.name for lab in labels}) > 1:
            return info.id, labels
    pytest.fail("no image of the demo project has both existing and predicted objects")


def test_the_demo_project_s_image_page(page, demo_url, demo_home):  # noqa: F811 - fixtures
    image_id, labels = _an_image_with_both(pipeline.Api(data_dir=demo_home))
    page.goto(f"{demo_url}/images/{image_id}")
    _wait(page, "n => document.querySelectorAll('#canvas g.obj').length === n", len(labels))
    _wait_images_loaded(page, "#picture")
    predicted = sorted(lab.confidence for lab in labels if lab.confidence is not None)
    assert len(_shown(page, "#canvas g.obj")) == len(labels)
    assert page.locator("#canvas g.obj.predicted").count() == len(predicted)

    # the slider just above the lowest prediction's confidence hides that one and nothing existing
    threshold = predicted[0] + 0.0005
    page.locator("#confidence").fill(f"{threshold:.4f}")
    shown = _shown(page, "#canvas g.obj")
    assert len(shown) == len(labels) - sum(1 for c in predicted if c < threshold)
    assert all(float(o["conf"]) >= threshold for o in shown if o["conf"])
    page.locator("#confidence").fill("0")

    # a class toggled off in the legend: its objects hidden, every other one still drawn
    name = labels[0].obj_class.name
    page.locator(f"#legend input[data-class='{name}']").uncheck()
    shown = _shown(page, "#canvas g.obj")
    assert name not in {o["cls"] for o in shown}
    assert len(shown) == sum(1 for lab in labels if lab.obj_class.name != name)
