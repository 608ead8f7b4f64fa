"""The viewer's JSON API and pages through FastAPI's test client, on the platform of `viewer_data`."""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest
from PIL import Image
from viewer_data import COLORS, SIZE


def _ok(client, url):
    r = client.get(url)
    assert r.status_code == 200, (url, r.status_code, r.text[:300])
    return r.json()


# ------------------------------------------------------------------------------------------------ listings


def test_projects_with_counts_and_class_colours(client, viewer_data):
    projects = {p["name"]: p for p in _ok(client, "/api/projects")["projects"]}
    shapes = projects["shapes"]
    assert (shapes["type"], shapes["datasets"], shapes["items"], shapes["objects"]) == ("images", 2, 7, 12)
    assert {c["name"]: c["color"] for c in shapes["classes"]} == COLORS
    clips = projects["clips"]
    assert (clips["type"], clips["datasets"], clips["items"], clips["objects"]) == ("videos", 1, 1, 2)


def test_project_datasets_nested_with_counts(client, viewer_data):
    p = _ok(client, f"/api/projects/{viewer_data['project']}")
    assert [(d["path"], d["depth"], d["items"]) for d in p["datasets_list"]] == [("train", 0, 6), ("train/hard", 1, 1)]
    ds = _ok(client, f"/api/datasets/{viewer_data['hard']}")
    assert (ds["path"], ds["items"], ds["project"]["name"]) == ("train/hard", 1, "shapes")


def test_grid_keyset_pages_walk_the_dataset_once(client, viewer_data):
    seen, after, calls = [], 0, 0
    while after is not None:
        page = _ok(client, f"/api/datasets/{viewer_data['train']}/images?limit=4&after={after}")
        seen += [item["id"] for item in page["items"]]
        after, calls = page["next_after"], calls + 1
    assert seen == sorted(viewer_data["images"].values()) and calls == 2
    first = _ok(client, f"/api/datasets/{viewer_data['train']}/images")["items"][0]
    assert (first["name"], first["objects"], first["predicted"], first["width"], first["height"]) == (
        "scene.png", 6, 3, SIZE[1], SIZE[0])
    kinds = [(s["class"], s["shape"]["kind"], s["predicted"]) for s in first["shapes"]]
    assert kinds == [("circle", "bitmap", False), ("triangle", "bitmap", False), ("square", "polygon", False),
                     ("circle", "rect", True), ("triangle", "rect", True), ("square", "rect", True)]
    circle = first["shapes"][0]
    assert circle["bbox"] == [40, 50, 131, 141] and "png" not in circle["shape"]  # grid: box from the PNG header


@pytest.mark.parametrize(("query", "expected"), [
    ("class=triangle", ["scene", "pair"]),
    ("class=triangle&class=square", ["scene", "pred_only", "existing", "pair"]),
    ("predicted=true", ["scene", "pred_only"]),
    ("predicted=false", ["plain", "existing", "healed", "pair"]),
    ("errors=true", ["existing"]),  # "healed" failed once, then its job's resume uploaded it
    ("errors=false&class=circle", ["scene", "healed", "pair"]),
    ("class=nothing", []),
])
def test_grid_filters(client, viewer_data, query, expected):
    page = _ok(client, f"/api/datasets/{viewer_data['train']}/images?{query}")
    ids = viewer_data["images"]
    assert [item["id"] for item in page["items"]] == [ids[n] for n in expected]
    assert page["next_after"] is None and page["filtered"] is True


def test_filtered_scan_is_bounded_and_resumes(viewer_data):
    """A filter looks at `window` ids per call; a short page says where to continue, and walking on finds all."""
    from pipeline.platform import Platform, browse

    store = Platform(viewer_data["data_dir"]).store
    ids = viewer_data["images"]
    found, after, calls = [], 0, 0
    with store.read() as conn:
        while after is not None:
            page = browse.page_images(conn, viewer_data["train"], after, 10, predicted=False, window=2)
            found += [r["id"] for r in page.rows]
            assert page.next_after is None or page.next_after > after
            after, calls = page.next_after, calls + 1
    assert found == [ids[n] for n in ("plain", "existing", "healed", "pair")] and calls == 3


def test_image_page_data(client, viewer_data):
    ids = viewer_data["images"]
    data = _ok(client, f"/api/images/{ids['scene']}")
    objs = data["objects"]
    assert [(o["class"], o["geometry"], o["predicted"], o["confidence"]) for o in objs] == [
        ("circle", "bitmap", False, None), ("triangle", "bitmap", False, None), ("square", "polygon", False, None),
        ("circle", "rectangle", True, 0.92), ("triangle", "rectangle", True, 0.35), ("square", "rectangle", True, 0.15)]
    assert all(o["color"] == COLORS[o["class"]] for o in objs)
    # the bitmap comes as a PNG in the class colour whose opaque pixels are exactly the stored mask
    shape = objs[0]["shape"]
    png = Image.open(io.BytesIO(base64.b64decode(shape["png"].split(",", 1)[1]))).convert("RGBA")
    alpha = np.asarray(png)[..., 3] > 0
    from viewer_data import _masks

    mask = _masks()["circle"]
    assert (shape["x"], shape["y"], shape["width"], shape["height"]) == (40, 50, 91, 91)
    np.testing.assert_array_equal(alpha, mask[50:141, 40:131])
    assert tuple(np.asarray(png)[alpha][0][:3]) == (0xE6, 0x19, 0x4B)
    assert objs[2]["shape"] == {"kind": "polygon", "exterior": [[60, 160], [131, 160], [131, 230], [60, 230]],
                                "interior": []}
    assert objs[3]["shape"] == {"kind": "rect", "x1": 38, "y1": 48, "x2": 133, "y2": 143}
    assert data["annotation"]["objects"][3]["tags"][0] == {"name": "confidence", "value": 0.92}
    assert (data["prev_id"], data["next_id"]) == (None, ids["pred_only"])
    assert data["errors"] == []
    failed = _ok(client, f"/api/images/{ids['existing']}")
    assert [(e["job_id"], e["image_id"]) for e in failed["errors"]] == [("job-running", ids["existing"])]


def test_image_file_and_thumbnail(client, viewer_data):
    from pipeline import Api

    image_id = viewer_data["images"]["scene"]
    r = client.get(f"/api/images/{image_id}/file")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == Api(viewer_data["data_dir"]).image.download_bytes(image_id)
    thumb = client.get(f"/api/images/{image_id}/thumb")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (256, 192)  # 320x240 into 256: aspect kept
    cached = list((viewer_data["data_dir"] / "thumbs").rglob("*-256.jpg"))
    assert cached and any(p.read_bytes() == thumb.content for p in cached)
    mtimes = {p: p.stat().st_mtime_ns for p in cached}
    assert client.get(f"/api/images/{image_id}/thumb").content == thumb.content
    assert {p: p.stat().st_mtime_ns for p in cached} == mtimes  # made once


def test_video_page_data_tracks_and_frames(client, viewer_data):
    vid = viewer_data["video"]
    data = _ok(client, f"/api/videos/{vid}")
    assert (data["video"]["frames_count"], data["video"]["width"], data["video"]["height"]) == (12, 96, 64)
    objects = {o["key"]: o for o in data["objects"]}
    car, person = objects[viewer_data["car_key"]], objects[viewer_data["person_key"]]
    assert (car["figures"], car["first_frame"], car["last_frame"], car["predicted"]) == (6, 0, 5, False)
    assert (person["figures"], person["predicted"], person["confidence"]) == (1, True, 0.7)
    assert data["has_tracks"] is True and data["frames_with_figures"] == [0, 1, 2, 3, 4, 5]
    frame3 = _ok(client, f"/api/videos/{vid}/frames/3")["figures"]
    assert [(f["class"], f["object_key"], f["predicted"]) for f in frame3] == [
        ("car", car["key"], False), ("person", person["key"], True)]
    assert frame3[0]["shape"] == {"kind": "rect", "x1": 17, "y1": 10, "x2": 37, "y2": 30}
    frame5 = _ok(client, f"/api/videos/{vid}/frames/5")["figures"]
    assert frame5[0]["track_color"] == frame3[0]["track_color"] == car["track_color"]  # one colour per track
    assert car["track_color"] != person["track_color"]
    assert _ok(client, f"/api/videos/{vid}/frames/9")["figures"] == []
    # the tags on a frame: those whose frameRange holds it (the whole video's are the video's)
    assert _ok(client, f"/api/videos/{vid}/frames/3")["tags"] == [{"name": "day", "value": 0.93}]
    assert _ok(client, f"/api/videos/{vid}/frames/5")["tags"] == []
    assert [t["name"] for t in data["tags"]] == ["day", "reviewed"]
    img = client.get(f"/api/videos/{vid}/frames/3/image")
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    arr = np.asarray(Image.open(io.BytesIO(img.content)).convert("RGB"))
    assert arr.shape == (64, 96, 3)
    assert arr[20, 27, 0] > 150 and arr[20, 60, 0] < 100  # the red square is at x 17..37 on frame 3
    assert client.get(f"/api/videos/{vid}/thumb").status_code == 200


def test_runs_and_their_errors(client, viewer_data):
    runs = _ok(client, "/api/runs")["runs"]
    assert [r["id"] for r in runs] == ["job-running", "job-done"]
    live, done = runs
    assert (live["mode"], live["target_project_name"], live["state"]) == ("iou_merge", "shapes", "running")
    assert (live["items_done"], live["items_failed"], live["items_skipped"], live["items_total"]) == (3, 2, 0, 7)
    assert live["ended_at"] is None
    assert (done["state"], done["items_failed"]) == ("done", 0) and done["ended_at"] is not None
    page = _ok(client, "/api/runs?limit=1")
    assert [r["id"] for r in page["runs"]] == ["job-running"]
    assert [r["id"] for r in _ok(client, f"/api/runs?before={page['next_before']}")["runs"]] == ["job-done"]
    errors = _ok(client, "/api/runs/job-running/errors")["errors"]
    assert [(e["item_key"], e.get("image_id")) for e in errors] == [
        ("file:/data/missing.png", None), (f"image:{viewer_data['images']['existing']}", viewer_data["images"]["existing"])]
    assert "truncated" in errors[1]["error"]
    first = _ok(client, "/api/runs/job-running/errors?limit=1")
    assert _ok(client, f"/api/runs/job-running/errors?after={first['next_after']}")["errors"] == errors[1:]


def test_pages_are_served(client, viewer_data):
    for url in ("/", f"/projects/{viewer_data['project']}", f"/datasets/{viewer_data['train']}",
                f"/images/{viewer_data['images']['scene']}", f"/videos/{viewer_data['video']}", "/runs",
                "/runs/job-running", "/static/common.js", "/static/viewer.css"):
        r = client.get(url)
        assert r.status_code == 200, url
        assert r.headers["x-content-type-options"] == "nosniff" and "server-timing" in r.headers


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("url", [
    "/api/projects/999", "/api/datasets/999", "/api/datasets/999/images", "/api/images/999", "/api/images/999/file",
    "/api/images/999/thumb", "/api/videos/999", "/api/videos/999/frames/0", "/api/videos/999/frames/0/image",
    "/api/videos/1/frames/12", "/api/videos/1/frames/12/image", "/api/runs/no-such-job", "/api/runs/no-such-job/errors",
    "/images/999", "/runs/nope", "/api/nothing", f"/api/projects/{2**63 - 1}",
])
def test_unknown_ids_are_404_with_a_message(client, url):
    r = client.get(url)
    assert r.status_code == 404, (url, r.text)
    message = r.json()["detail"] if url.startswith("/api/") else r.text
    assert any(w in message for w in ("does not exist", "no frame", "no such page")), message


@pytest.mark.parametrize(("url", "words"), [
    ("/api/images/abc", "image_id"),
    ("/api/images/0", "greater than or equal to 1"),
    ("/api/images/-3", "image_id"),
    (f"/api/images/{2**63}", "less than or equal to"),
    ("/api/images/1.5", "image_id"),
    ("/api/datasets/1/images?limit=0", "limit"),
    ("/api/datasets/1/images?limit=100000", "limit"),
    ("/api/datasets/1/images?after=x", "after"),
    ("/api/datasets/1/images?predicted=maybe", "predicted"),
    ("/api/datasets/1/images?class=", "class"),
    ("/api/datasets/3/images", "holds videos"),
    ("/api/datasets/1/videos", "holds images"),
    ("/api/videos/1/frames/-1", "frame"),
    ("/api/runs?before=0", "before"),
])
def test_malformed_parameters_are_400_with_a_message(client, url, words):
    r = client.get(url)
    assert r.status_code == 400, (url, r.status_code, r.text)
    assert words in r.json()["detail"], r.json()


def test_read_only(client):
    for method in ("post", "put", "delete", "patch"):
        r = getattr(client, method)("/api/projects")
        assert r.status_code == 405 and "read-only" in r.json()["detail"]


@pytest.mark.parametrize("url", ["/", "/runs", "/api/projects", "/api/images/1", "/api/images/1/file",
                                 "/api/images/1/thumb", "/api/videos/1/file", "/static/common.js"])
def test_head_answers_as_get_without_a_body(client, url):
    get, head = client.get(url), client.head(url)
    assert get.status_code == head.status_code == 200, (url, head.status_code)
    assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]
    assert head.headers.get("content-length") == get.headers.get("content-length")


@pytest.mark.parametrize("url", [
    "/static/../platform.db", "/static/%2e%2e/platform.db", "/static/..%2Fplatform.db", "/api/images/1%2F..%2Fplatform.db/file",
    "/api/images/..%2F..%2Fplatform.db/file", "/blobs/00/x.png", "/api/blobs/x", "/thumbs/", "/platform.db",
    "/api/images/1/file/../../../platform.db", "/static//etc/passwd", "/static/%2Fetc%2Fpasswd",
])
def test_no_path_from_the_request_reaches_the_file_system(client, url):
    r = client.get(url)
    assert r.status_code in (400, 404), (url, r.status_code)
    assert b"SQLite format" not in r.content and b"root:" not in r.content


def test_a_missing_blob_and_an_undecodable_video_are_clear_errors(fresh_data):
    from fastapi.testclient import TestClient

    from pipeline import Api
    from pipeline.viewer import create_app

    api = Api(fresh_data["data_dir"])
    info = api.image.get(fresh_data["images"]["plain"])
    os.unlink(info.path)
    video = api.video.get(fresh_data["video"])
    with open(video.path, "r+b") as f:  # keep the container header, garble the frames
        f.seek(video.size // 3)
        f.write(b"\x00" * (video.size - video.size // 3))
    with TestClient(create_app(fresh_data["data_dir"]), base_url="http://127.0.0.1",
                    raise_server_exceptions=False) as client:
        for url in (f"/api/images/{info.id}/file", f"/api/images/{info.id}/thumb"):
            r = client.get(url)
            assert r.status_code == 404 and "missing from the blob store" in r.json()["detail"], r.text
        r = client.get(f"/api/videos/{video.id}/frames/11/image")
        assert r.status_code == 422 and "cannot be decoded" in r.json()["detail"], r.text
        assert "Traceback" not in r.text
        # the server goes on serving, and the records are still listed
        assert client.get(f"/api/images/{info.id}").status_code == 200
        assert client.get(f"/api/videos/{video.id}/frames/3").status_code == 200
        assert client.get("/api/projects").status_code == 200


# ------------------------------------------------------------------------------------------------ token, host


def test_token_is_required_and_checked(viewer_data):
    from fastapi.testclient import TestClient

    from pipeline.viewer import create_app

    token = "s3cret-token-of-viewer"
    with TestClient(create_app(viewer_data["data_dir"], token=token), base_url="http://10.1.2.3:8000") as c:
        for headers in ({}, {"Authorization": "Bearer wrong-token-xxxxxxxx"}, {"Authorization": "Basic abc"},
                        {"Cookie": "pipeline_viewer_token=nope"}):
            r = c.get("/api/projects", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
            assert "token" in r.json()["detail"]
        assert c.get("/api/projects?token=wrong").status_code == 401
        assert c.get("/api/images/1/file").status_code == 401  # blobs too
        assert c.get("/static/common.js").status_code == 401
        assert c.get("/api/projects", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert c.get(f"/api/projects?token={token}").status_code == 200
        # a page opened with ?token= is redirected to itself without it, with the token in a cookie
        r = c.get(f"/images/1?token={token}&x=1", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/images/1?x=1"
        assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
        c.cookies.set("pipeline_viewer_token", token)
        assert c.get("/images/1").status_code == 200 and c.get("/api/images/1/thumb").status_code == 200


def test_without_a_token_only_loopback_host_names_are_answered(viewer_data):
    from fastapi.testclient import TestClient

    from pipeline.viewer import create_app

    app = create_app(viewer_data["data_dir"])
    for base, status in (("http://127.0.0.1:8000", 200), ("http://localhost:8000", 200), ("http://[::1]:8000", 200),
                         ("http://evil.example:8000", 400), ("http://192.168.1.5:8000", 400)):
        with TestClient(app, base_url=base) as c:
            r = c.get("/api/projects")
            assert r.status_code == status, base
            if status == 400:
                assert "not this viewer's" in r.json()["detail"]


def test_create_app_refuses_bad_arguments(tmp_path, viewer_data):
    from pipeline.exceptions import InvalidArgumentError
    from pipeline.viewer import create_app

    with pytest.raises(InvalidArgumentError, match="no platform database"):
        create_app(tmp_path / "empty")
    for token in ("short", "has space in the token!", "x" * 300):
        with pytest.raises(InvalidArgumentError, match="token"):
            create_app(viewer_data["data_dir"], token=token)


def test_serve_refuses_a_bad_port_and_builds_the_address():
    from pipeline.exceptions import InvalidArgumentError
    from pipeline.viewer.server import serve, viewer_url

    with pytest.raises(InvalidArgumentError, match="port"):
        serve("/nonexistent", port=70000)
    import socket

    name = socket.getfqdn() if not socket.getfqdn().startswith("localhost") else socket.gethostname()
    assert viewer_url("0.0.0.0", 8000, "abc") == f"http://{name}:8000/?token=abc"  # every interface: no address
    assert viewer_url("10.1.2.3", 8000, "abc") == "http://10.1.2.3:8000/?token=abc"
    assert viewer_url("::1", 9000) == "http://[::1]:9000/"


def test_serve_generates_a_token_for_a_non_loopback_host(viewer_data, monkeypatch):
    """`serve` on 0.0.0.0 without a token makes one, builds the app with it and prints the address to open;
    on 127.0.0.1 it needs none. (uvicorn's run is replaced: the test checks what serve hands it.)"""
    import uvicorn
    from fastapi.testclient import TestClient

    from pipeline.viewer import serve
    from pipeline.viewer.server import viewer_url

    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: served.append(self.config))
    out = io.StringIO()
    serve(viewer_data["data_dir"], host="0.0.0.0", port=8123, out=out)
    printed = out.getvalue()
    assert viewer_url("0.0.0.0", 8123) + "?token=" in printed and "generated token" in printed
    token = printed.split("?token=")[1].split()[0]
    assert len(token) >= 32 and (served[0].host, served[0].port) == ("0.0.0.0", 8123)
    with TestClient(served[0].app, base_url="http://192.168.1.5:8123") as c:
        assert c.get("/api/projects").status_code == 401
        assert c.get("/api/projects", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    out = io.StringIO()
    serve(viewer_data["data_dir"], out=out)
    assert "open http://127.0.0.1:8000/\n" in out.getvalue() and served[1].host == "127.0.0.1"


def test_an_unexpected_error_is_a_500_with_one_line_and_no_traceback(viewer_data, monkeypatch):
    from fastapi.testclient import TestClient

    from pipeline.platform import browse
    from pipeline.viewer import create_app

    def broken(*args, **kwargs):
        raise RuntimeError("boom at /secret/path")

    monkeypatch.setattr(browse, "list_projects", broken)
    with TestClient(create_app(viewer_data["data_dir"]), base_url="http://127.0.0.1",
                    raise_server_exceptions=False) as c:
        r = c.get("/api/projects")
        assert r.status_code == 500 and r.json() == {
            "detail": "internal error (RuntimeError); the server log has the details"}
        # answered by the gate, so with the headers of every other response
        assert r.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in r.headers[
            "content-security-policy"] and r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["server-timing"].startswith("app;dur=")
        assert c.get("/api/runs").status_code == 200  # and it goes on serving
