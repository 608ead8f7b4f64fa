"""A small platform for the viewer tests, filled through `pipeline.Api` platform calls (and the job tables through
the upload stage's own functions, `platform.jobs`): what every drawn object is, and what each filter must return.

Project "shapes" (images): dataset "train" (6 images, 320x240) and "train/hard" (1 image); classes circle, square,
triangle (any shape) with distinct colours, and the confidence tag.
    scene     3 existing objects (circle bitmap, triangle bitmap, square polygon) + 3 predicted rectangles:
              circle 0.92, triangle 0.35, square 0.15                                       -> 6 objects
    pred_only 1 predicted rectangle (square 0.80)
    plain     no annotation
    existing  1 existing square polygon; an upload job failed on it                           -> has errors
    healed    1 existing circle bitmap; failed in a job, then uploaded by its resume          -> no errors
    pair      2 existing bitmaps (circle, triangle)
Project "clips" (videos): dataset "cams", one 12-frame 96x64 video: a car track on frames 0..5 (rectangles that
move 4 px per frame) and a predicted person (confidence 0.7) on frame 3.
Upload jobs: "job-running" (iou_merge into shapes, running, 2 failed of which 1 healed), "job-done" (create).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

COLORS = {"circle": "#E6194B", "square": "#3CB44B", "triangle": "#4363D8"}
SIZE = (240, 320)  # (h, w)


def _background(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = SIZE
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([90 + 60 * x / w, 110 + 40 * y / h, 150 - 50 * x / w], axis=-1)
    return np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


PAINT = {"circle": (236, 214, 140), "triangle": (225, 225, 232), "square": (150, 205, 210)}  # not the class colours


def _masks(dx: int = 0, dy: int = 0) -> dict[str, np.ndarray]:
    """Full-image masks of the three shapes, moved by (dx, dy) pixels (0, 0 for the "scene" image)."""
    from PIL import Image, ImageDraw

    h, w = SIZE
    out = {}
    for name, draw_it in (
        ("circle", lambda d: d.ellipse([40 + dx, 50 + dy, 130 + dx, 140 + dy], fill=1)),
        ("triangle", lambda d: d.polygon([(200 - dx, 40 + dy), (290 - dx, 170 + dy), (150 - dx, 170 + dy)], fill=1)),
        ("square", lambda d: d.rectangle([60 + dx, 160 - dy, 130 + dx, 229 - dy], fill=1)),
    ):
        img = Image.new("L", (w, h), 0)
        draw_it(ImageDraw.Draw(img))
        out[name] = np.asarray(img, dtype=bool)
    return out


def _paint(seed: int, masks: dict[str, np.ndarray]) -> np.ndarray:
    img = _background(seed)
    for name, m in masks.items():
        img[m] = PAINT[name]
    return img


def build(data_dir: Path, tmp: Path) -> dict[str, Any]:
    """Fill a platform in `data_dir` (videos written under `tmp`); returns the ids and expectations."""
    import pipeline
    from pipeline.annotation import (
        CONFIDENCE_TAG,
        Annotation,
        Bitmap,
        Label,
        ObjClass,
        Polygon,
        ProjectMeta,
        Rectangle,
        Tag,
    )

    api = pipeline.Api(data_dir=data_dir)
    classes = {n: ObjClass(n, "any_shape", c) for n, c in COLORS.items()}
    project = api.project.create("shapes", description="viewer test project")
    api.project.update_meta(project.id, ProjectMeta(obj_classes=tuple(classes.values()), tag_metas=(CONFIDENCE_TAG,)))
    train = api.dataset.create(project.id, "train")
    hard = api.dataset.create(project.id, "hard", parent_id=train.id)
    masks = _masks()

    def bitmap(name: str, m: dict[str, np.ndarray] = masks) -> Label:
        return Label(Bitmap.from_mask(m[name]), classes[name])

    def square_polygon() -> Label:
        return Label(Polygon([(60, 160), (131, 160), (131, 230), (60, 230)]), classes["square"])

    def predicted(name: str, conf: float, box: tuple[int, int, int, int]) -> Label:
        return Label(Rectangle.from_xyxy(*box), classes[name], (Tag(CONFIDENCE_TAG, conf),))

    scene = [bitmap("circle"), bitmap("triangle"), square_polygon(),
             predicted("circle", 0.92, (38, 48, 133, 143)), predicted("triangle", 0.35, (148, 38, 292, 172)),
             predicted("square", 0.15, (56, 156, 136, 234))]
    moved = _masks(12, 8)  # "healed" and "pair": the shapes moved, their objects with them
    plan = [("scene", scene, masks), ("pred_only", [predicted("square", 0.8, (60, 160, 131, 230))], masks),
            ("plain", None, masks), ("existing", [square_polygon()], masks), ("healed", [bitmap("circle", moved)], moved),
            ("pair", [bitmap("circle", moved), bitmap("triangle", moved)], moved)]
    ids: dict[str, int] = {}
    for i, (name, labels, painted) in enumerate(plan):
        info = api.image.upload(train.id, f"{name}.png", _paint(i, painted))
        ids[name] = info.id
        if labels is not None:
            api.annotation.set(info.id, Annotation(SIZE, tuple(labels)))
    hard_img = api.image.upload(hard.id, "hard_0.png", _paint(9, masks))
    api.annotation.set(hard_img.id, Annotation(SIZE, (bitmap("triangle"),)))
    video = _video_project(api, tmp)
    _jobs(api, project.id, ids)
    return {"data_dir": data_dir, "project": project.id, "train": train.id, "hard": hard.id, "images": ids,
            "hard_image": hard_img.id, **video}


def _write_video(path: Path, frames: int = 12) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(frames):
            arr = np.full((64, 96, 3), 40, np.uint8)
            arr[10:30, 5 + 4 * i:25 + 4 * i] = (220, 60, 60)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _video_project(api: Any, tmp: Path) -> dict[str, Any]:
    from pipeline.annotation import (
        CONFIDENCE_TAG,
        ObjClass,
        ProjectMeta,
        Rectangle,
        TagMeta,
        VideoAnnotation,
        VideoFigure,
        VideoObject,
        VideoTag,
    )

    project = api.project.create("clips", type="videos")
    car_cls, person_cls = ObjClass("car", "rectangle", "#F58231"), ObjClass("person", "rectangle", "#911EB4")
    day, reviewed = TagMeta("day", "any_number"), TagMeta("reviewed", "none")
    api.project.update_meta(project.id, ProjectMeta(obj_classes=(car_cls, person_cls),
                                                    tag_metas=(CONFIDENCE_TAG, day, reviewed), project_type="videos"))
    cams = api.dataset.create(project.id, "cams")
    path = tmp / "clip.mp4"
    _write_video(path)
    info = api.video.upload(cams.id, "clip.mp4", path)
    car = VideoObject(car_cls)
    person = VideoObject(person_cls, tags=(VideoTag(CONFIDENCE_TAG, 0.7, (3, 3)),))
    figures = [VideoFigure(car, Rectangle.from_xyxy(5 + 4 * i, 10, 25 + 4 * i, 30), i) for i in range(6)]
    figures.append(VideoFigure(person, Rectangle.from_xyxy(50, 30, 70, 60), 3))
    # a classifier's answer on frames 2..4, and a tag of the whole video
    tags = (VideoTag(day, 0.93, (2, 4)), VideoTag(reviewed))
    ann = VideoAnnotation((64, 96), info.frames_count, (car, person), tags=tags).add_figures(figures)
    api.video.set_annotation(info.id, ann)
    return {"video_project": project.id, "cams": cams.id, "video": info.id, "frames": info.frames_count,
            "car_key": car.key, "person_key": person.key}


def _jobs(api: Any, project_id: int, ids: dict[str, int]) -> None:
    """Two upload jobs, recorded through the functions the upload stage records them with (`platform.jobs`)."""
    from pipeline.platform import jobs

    store = api.platform.store
    jobs.ensure_tables(store)
    with store.write() as conn:
        jobs.insert_job(conn, "job-done", "create", "project 1 (7 images)", None)
        old = jobs.start_run(conn, "job-done", skipped=0, total=2)
        jobs.finish_run(conn, "job-done", old, "done")
        jobs.insert_job(conn, "job-running", "iou_merge", "project 1 (7 images)", project_id)
        run = jobs.start_run(conn, "job-running", skipped=0, total=7)
        assert run == 1
        done = [(f"image:{ids[n]}", ids[n]) for n in ("scene", "pred_only", "healed")]
        jobs.count_done(conn, "job-running", jobs.record_done(conn, "job-running", done))
        jobs.record_errors(conn, "job-running", [
            (f"image:{ids['existing']}", "upload failed: cannot read the image (truncated file)"),
            (f"image:{ids['healed']}", "loading failed: timeout"),  # uploaded since by a resume: not failed
            ("file:/data/missing.png", "loading failed: no such file"),
        ])
