"""The viewer in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright; no browser download)
against the app served by uvicorn on 127.0.0.1. Asserts what is drawn, that the confidence slider and the class
legend hide objects, and takes the screenshots the README shows: into a temporary folder by default, into
docs/images/ (viewer_grid.png, viewer_image.png) with `PIPELINE_UPDATE_SCREENSHOTS=1`, so a test run never changes
the tree unless asked to:

    PIPELINE_UPDATE_SCREENSHOTS=1 .venv/bin/python -m pytest tests/viewer/test_viewer_browser.py

Never skipped: without Chromium or Playwright the test fails and says how to install them (.ci/run installs
Chromium).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--num-raster-threads=1", "--force-color-profile=srgb", "--disable-partial-raster",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
UPDATE_SCREENSHOTS = "PIPELINE_UPDATE_SCREENSHOTS"
VIEWPORT = {"width": 1280, "height": 860}


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where the screenshots go: docs/images/ when $PIPELINE_UPDATE_SCREENSHOTS is 1, else a temporary folder."""
    if os.environ.get(UPDATE_SCREENSHOTS) == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        return DOCS_IMAGES
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"the viewer's browser test needs Chromium at {CHROMIUM}: install it with "
                    "`apt-get install chromium` (as root; .ci/run does it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the viewer's browser test needs Playwright: pip install -e '.[dev]' (it drives the system "
                    "Chromium; no browser download)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def serve_viewer(data_dir):
    """The viewer of `data_dir` served by uvicorn on an ephemeral port of 127.0.0.1, in a thread of this process:
    yields its base URL, stops it after."""
    import uvicorn

    from pipeline.viewer import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(data_dir), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def base_url(viewer_data):
    yield from serve_viewer(viewer_data["data_dir"])


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    # a console error is a failed request or a Content-Security-Policy violation of the viewer's own code
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield pg
    context.close()
    assert not errors, f"errors on the page: {errors}"


def _shown(page, selector: str) -> list[dict]:
    """The drawn objects matching `selector` that are displayed, with their class and confidence."""
    return page.eval_on_selector_all(
        selector, "gs => gs.filter(g => getComputedStyle(g).display !== 'none')"
                  ".map(g => ({cls: g.dataset.class, conf: g.dataset.confidence}))")


def _wait(page, predicate: str, arg=None, timeout: float = 15.0) -> None:
    """Poll a JS predicate with `page.evaluate` (Playwright's `wait_for_function` evaluates strings inside the page,
    which the viewer's Content-Security-Policy forbids, and rightly so)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate, arg):
        assert time.monotonic() < deadline, f"timed out waiting for: {predicate}"
        time.sleep(0.05)


def _wait_images_loaded(page, selector: str) -> None:
    _wait(page, "sel => [...document.querySelectorAll(sel)].every(i => i.complete && i.naturalWidth > 0)", selector)


def _screenshot(page, path: Path, **options) -> None:
    """A screenshot of a settled page: every <img> decoded, then shots until two in a row are the same (an image
    drawn at its final quality), so the committed screenshots change only when the page does."""
    page.evaluate("() => Promise.all([...document.images].map(i => i.decode().catch(() => null)))")
    last = page.screenshot(**options)
    for _ in range(20):
        time.sleep(0.1)
        shot = page.screenshot(**options)
        if shot == last:
            break
        last = shot
    else:
        pytest.fail(f"the page kept changing; no stable screenshot for {path.name}")
    path.write_bytes(shot)
    assert len(shot) > 10_000


def test_image_page_draws_objects_and_hides_them(page, base_url, viewer_data, shots):
    page.goto(f"{base_url}/images/{viewer_data['images']['scene']}")
    _wait(page, "() => document.querySelectorAll('#canvas g.obj').length === 6")
    _wait_images_loaded(page, "#picture")
    assert len(_shown(page, "#canvas g.obj")) == 6
    assert page.locator("#canvas g.obj.predicted").count() == 3  # the three with a confidence tag, dashed
    assert page.locator("#canvas g.obj.predicted rect[stroke-dasharray]").count() == 3
    assert page.locator("#canvas g.obj:not(.predicted) [stroke-dasharray]").count() == 0
    assert page.locator("#canvas g.obj image").count() == 2  # the two bitmaps, as masks
    # the overlay lies on the picture: the predicted circle's box (x 38..133 of 320 px) lands where it should
    pic = page.locator("#picture").bounding_box()
    box = page.locator("#canvas g.obj[data-index='3'] rect").bounding_box()
    scale = pic["width"] / 320
    assert abs(box["x"] - (pic["x"] + 38 * scale)) < 3 and abs(box["width"] - 95 * scale) < 3
    _screenshot(page, shots / "viewer_image.png", full_page=True)

    page.locator("#confidence").fill("0.5")
    shown = _shown(page, "#canvas g.obj")
    assert len(shown) == 4
    assert sorted(float(o["conf"]) for o in shown if o["conf"]) == [0.92]  # 0.35 and 0.15 hidden
    assert page.locator("#objects tbody tr.hidden").count() == 2
    assert "4 of 6 objects shown" in page.locator("#shown").inner_text()

    page.locator("#legend input[data-class='circle']").uncheck()
    assert sorted(o["cls"] for o in _shown(page, "#canvas g.obj")) == ["square", "triangle"]
    page.locator("#legend input[data-class='circle']").check()
    page.locator("#confidence").fill("0")
    assert len(_shown(page, "#canvas g.obj")) == 6


def test_grid_page_draws_every_thumbnail_and_filters(page, base_url, viewer_data, shots):
    page.goto(f"{base_url}/datasets/{viewer_data['train']}")
    _wait(page, "() => document.querySelectorAll('#grid .cell').length === 6")
    _wait_images_loaded(page, "#grid img")
    assert page.locator("#grid .cell").first.get_attribute("href") == f"/images/{viewer_data['images']['scene']}"
    assert page.locator("#grid g.obj").count() == 11  # 6 + 1 + 0 + 1 + 1 + 2 objects
    assert page.locator("#grid g.obj.predicted").count() == 4
    _screenshot(page, shots / "viewer_grid.png", clip={"x": 0, "y": 0, "width": 1280, "height": 420})

    page.locator("#filter-predicted").select_option("true")
    page.wait_for_url("**predicted=true**")
    _wait(page, "() => document.querySelectorAll('#grid .cell').length === 2")
    names = page.locator("#grid .cell .name").all_inner_texts()
    assert names == ["scene.png", "pred_only.png"]


def test_video_page_steps_frames_with_their_figures(page, base_url, viewer_data):
    page.goto(f"{base_url}/videos/{viewer_data['video']}")
    _wait(page, "() => document.getElementById('status').textContent.startsWith('frame 0 ')")
    for _ in range(3):
        page.locator("#next-frame").click()
    _wait(page, "() => document.getElementById('status').textContent.startsWith('frame 3 ')")
    assert page.locator("#status").inner_text().endswith("2 figures · day 0.93")  # the frame's tag
    _wait_images_loaded(page, "#frame-image")
    assert sorted(o["cls"] for o in _shown(page, "#canvas g.obj")) == ["car", "person"]
    car_on_3 = page.locator("#canvas g.obj[data-class='car'] rect").get_attribute("stroke")
    page.locator("#confidence").fill("0.8")  # the person's 0.7 goes
    assert [o["cls"] for o in _shown(page, "#canvas g.obj")] == ["car"]
    page.locator("#next-frame").click()
    _wait(page, "() => document.getElementById('status').textContent.startsWith('frame 4 ')")
    # a track keeps its colour from frame to frame
    assert page.locator("#canvas g.obj[data-class='car'] rect").get_attribute("stroke") == car_on_3
