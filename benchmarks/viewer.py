"""Does the viewer's grid open a 100,000-image dataset as fast as a small one, with flat memory?

Builds a dataset of `--images` tiny images through the platform API (one image uploaded, the other records
pointing at the same blob: the grid's cost is in the database, not the files), each with three objects: an
existing rectangle, an existing bitmap and a predicted rectangle with a confidence tag. Then serves it with
`pipeline.viewer` in a subprocess (uvicorn, as `serve()` runs it) and measures, from the `Server-Timing` header
the viewer sets (server time: request in to response start, JSON built):

- the grid's first page and a middle page (100 images, after image 50,000), cold and warm (median of 10);
- a filtered page (class filter, predictions filter) and a thumbnail (made, then cached);
- the server's RSS while paging through the whole dataset (flat: nothing grows with the pages read).

    .venv/bin/python benchmarks/viewer.py                       # 100,000 images
    .venv/bin/python benchmarks/viewer.py --images 20000 --json viewer.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BATCH = 5000  # rows per write transaction while building


def build(data_dir: Path, n: int) -> tuple[int, int]:
    """A project with one dataset of `n` images (one shared blob); returns (dataset id, first image id)."""
    import pipeline
    from pipeline.annotation import (
        CONFIDENCE_TAG,
        Annotation,
        Bitmap,
        Label,
        ObjClass,
        ProjectMeta,
        Rectangle,
        Tag,
    )
    from pipeline.platform import ops

    api = pipeline.Api(data_dir=data_dir)
    project = api.project.create("bench-viewer")
    classes = [ObjClass(name, "any_shape") for name in ("car", "person", "dog", "rare")]
    meta = ProjectMeta(obj_classes=tuple(classes), tag_metas=(CONFIDENCE_TAG,))
    api.project.update_meta(project.id, meta)
    ds = api.dataset.create(project.id, "big")
    rng = np.random.default_rng(0)
    first = api.image.upload(ds.id, "img_0000000.png", rng.integers(0, 255, (32, 48, 3), dtype=np.uint8))
    mask = np.zeros((32, 48), bool)
    mask[8:20, 10:30] = True
    templates = []
    for k in range(8):  # a few annotations, reused: "rare" on one image in a thousand
        cls = classes[k % 3]
        labels = (Label(Rectangle.from_xyxy(1 + k, 2, 20 + k, 25), cls), Label(Bitmap.from_mask(mask), classes[(k + 1) % 3]),
                  Label(Rectangle.from_xyxy(5, 5, 40, 30), cls, (Tag(CONFIDENCE_TAG, round(0.1 * (k + 1), 2)),)))
        templates.append(Annotation((32, 48), labels))
    rare = Annotation((32, 48), (Label(Rectangle.from_xyxy(1, 1, 9, 9), classes[3]),))
    store = api.platform.store
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        with store.write() as conn:
            for i in range(start, min(n, start + BATCH)):
                image_id = first.id if i == 0 else ops.insert_image(
                    conn, ds.id, f"img_{i:07d}.png", first.width, first.height, first.hash, first.size, first.ext)
                ops.set_annotation(conn, image_id, rare if i % 1000 == 500 else templates[i % 8], meta=meta)
    print(f"built {n} images in {time.perf_counter() - t0:.1f}s", flush=True)
    return ds.id, first.id


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.viewer.server", str(data_dir), "127.0.0.1", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/projects", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
        if proc.poll() is not None:
            raise SystemExit(f"the viewer exited: {proc.stderr.read().decode()}")
    raise SystemExit("the viewer did not start within 60 s")


def server_ms(client, url: str) -> tuple[float, float, dict]:
    """(server ms from Server-Timing, client wall ms, JSON or {}) of one GET."""
    t0 = time.perf_counter()
    r = client.get(url)
    wall = (time.perf_counter() - t0) * 1000
    assert r.status_code == 200, (url, r.status_code, r.text[:200])
    dur = float(r.headers["server-timing"].split("dur=")[1])
    body = r.json() if r.headers["content-type"].startswith("application/json") else {}
    return dur, wall, body


def timed(client, url: str, repeats: int = 10) -> dict:
    cold = server_ms(client, url)
    warm = [server_ms(client, url) for _ in range(repeats)]
    return {"cold_server_ms": round(cold[0], 2), "cold_wall_ms": round(cold[1], 2),
            "warm_server_ms_median": round(statistics.median(w[0] for w in warm), 2),
            "warm_wall_ms_median": round(statistics.median(w[1] for w in warm), 2),
            "items": len(cold[2]["items"]) if isinstance(cold[2].get("items"), list) else None}


def page_through(client, base: str, ds: int, pid: int) -> dict:
    import psutil

    proc = psutil.Process(pid)
    rss, pages, after, worst = [], 0, 0, 0.0
    t0 = time.perf_counter()
    while after is not None:
        dur, _, body = server_ms(client, f"{base}/api/datasets/{ds}/images?limit=100&after={after}")
        worst = max(worst, dur)
        after, pages = body["next_after"], pages + 1
        if pages % 50 == 1 or after is None:
            rss.append(proc.memory_info().rss / 2**20)
    return {"pages": pages, "seconds": round(time.perf_counter() - t0, 1), "worst_page_server_ms": round(worst, 1),
            "rss_mib_samples": [round(r, 1) for r in rss], "rss_mib_first": round(rss[0], 1),
            "rss_mib_last": round(rss[-1], 1), "rss_mib_max": round(max(rss), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    import httpx

    work = Path(tempfile.mkdtemp(prefix="bench-viewer-"))
    ds, first = build(work / "platform", args.images)
    port = free_port()
    proc = start_server(work / "platform", port)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=60) as client:
            grid = f"{base}/api/datasets/{ds}/images?limit=100"
            out = {
                "images": args.images,
                "first_page": timed(client, grid),
                "middle_page": timed(client, f"{grid}&after={first + args.images // 2 - 1}"),
                "dataset_header": timed(client, f"{base}/api/datasets/{ds}"),
                "grid_html": timed(client, f"{base}/datasets/{ds}"),
                "filter_predicted_first_page": timed(client, f"{grid}&predicted=true", 3),
                "filter_rare_class_one_call": timed(client, f"{grid}&class=rare", 3),
                "thumbnail": timed(client, f"{base}/api/images/{first}/thumb", 3),
                "paging": page_through(client, base, ds, proc.pid),
            }
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
