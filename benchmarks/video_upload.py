"""The cost of one video upload write (a group of frames into the video's annotation) as the annotation grows.

    .venv/bin/python benchmarks/video_upload.py [--frames 17920] [--offsets 16 640 8960 17840] [--group 16]
        [--boxes 5] [--repeats 5] [--modes append replace iou_merge tracked]

A videos project on a fresh platform in a temporary directory holds one 1280x720 video row of `--frames` frames
(no file: the upload of predictions into an existing video never reads it). For each offset F, the video's
annotation is set to frames 0..F-1 with `--boxes` predicted boxes each (what an upload of those frames leaves:
untracked, one object and one figure per box with its confidence tag; for `tracked`, one object per track, `--boxes`
tracks running through every frame, each with its job row), then `VideoTarget.write` is timed on a group of
`--group` frame predictions of `--boxes` boxes each, `--repeats` times (the median is printed):

* append and tracked write frames F..F+group-1, then the next groups (new frames; tracked: the boxes continue the
  stored tracks, so each write adds figures to existing objects and updates their confidence);
* replace and iou_merge write frames F-group..F-1 (frames that already have figures: the predictions replace them,
  or are compared with them).

The annotation lives in rows (`pipeline.platform.video_rows`): a write should cost the same at the end of a long
video as at its start. `SQL ops` counts the SQLite virtual-machine instructions of one write (to the nearest
1,000, `set_progress_handler`): the database's work, unaffected by other load on the machine. The last column is the time to read the whole annotation back (`api.video.get_annotation`'s
assembly of the JSON text, not its parsing): reads still grow with the annotation, as they must.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from pipeline.platform import Platform, jobs, ops  # noqa: E402
from pipeline.prediction import Item, Prediction  # noqa: E402
from pipeline.stages.upload.videos import VideoTarget  # noqa: E402

HEIGHT, WIDTH = 720, 1280
CLASSES = ["car", "person", "bus"]
JOB = "bench"
_JOBS = itertools.count()


def frame_pred(video_id: int, frame: int, boxes: int, seed: int, tracked: bool = False) -> Prediction:
    rng = np.random.default_rng((seed, frame))
    if tracked:  # box j moves right by a pixel a frame: `boxes` tracks through the whole video
        xy = np.array([[(100 + 200 * j + frame) % (WIDTH - 200), 100 + 100 * j] for j in range(boxes)], float)
        wh, ids = np.full((boxes, 2), 80.0), np.arange(boxes) % len(CLASSES)
    else:
        xy = rng.uniform(0, [WIDTH - 200, HEIGHT - 200], (boxes, 2))
        wh, ids = rng.uniform(20, 200, (boxes, 2)), rng.integers(0, len(CLASSES), boxes)
    item = Item(index=frame, key=f"video:{video_id}:{frame}", name="bench", video_id=video_id, frame_idx=frame)
    return Prediction(boxes=np.hstack([xy, xy + wh]), scores=rng.uniform(0.3, 1.0, boxes), class_ids=ids,
                      classes=[CLASSES[i] for i in ids], item=item, orig_size=(HEIGHT, WIDTH),
                      track_ids=np.arange(boxes) if tracked else None)


def make_target(platform: Platform, mode: str, job_id: str = JOB) -> VideoTarget:
    args = SimpleNamespace(upload=mode, settings={}, job_id=job_id)
    plan = SimpleNamespace(name="bench", project_type="videos", description="benchmark video")
    model = SimpleNamespace(spec=SimpleNamespace(task_type="detection"))
    return VideoTarget(args, plan, platform, model)


def prefill(platform: Platform, video_id: int, frames: int, total: int, boxes: int, tracked: bool) -> None:
    """The video's annotation: frames 0..frames-1 with `boxes` predicted boxes each, as an upload leaves it."""
    from pipeline.annotation import CONFIDENCE_TAG, VideoAnnotation, VideoFigure, VideoObject, VideoTag

    target = make_target(platform, "append", f"{JOB}-prefill")
    with platform.store.write() as conn:
        meta = target.resolve_meta(conn, ops.get_video_row(conn, video_id)["project_id"],
                                   [frame_pred(video_id, 0, len(CLASSES), 0)], {})
        objects, figures = [], []
        tracks = {}
        for f in range(frames):
            p = frame_pred(video_id, f, boxes, 1, tracked)
            for j, lab in enumerate(target.predicted_annotation(p, meta).labels):
                if tracked:
                    if j not in tracks:
                        tracks[j] = VideoObject(lab.obj_class, (VideoTag(CONFIDENCE_TAG, 0.5, (0, frames - 1)),))
                        objects.append(tracks[j])
                    obj = tracks[j]
                else:
                    obj = VideoObject(lab.obj_class, (VideoTag(CONFIDENCE_TAG, float(p.scores[j]), (f, f)),))
                    objects.append(obj)
                figures.append(VideoFigure(obj, lab.geometry, f))
        data = VideoAnnotation((HEIGHT, WIDTH), total, tuple(objects)).add_figures(figures).to_json()
        ops.put_video_annotation_json(conn, video_id, data)
        conn.execute("DELETE FROM upload_job_tracks WHERE job_id = ?", (JOB,))
        conn.execute("DELETE FROM upload_job_items WHERE job_id = ?", (JOB,))
        if tracked and frames:
            jobs.put_tracks(conn, JOB, video_id, {j: jobs.TrackRow(o.key, 0.5 * frames, frames, 0, frames - 1)
                                                  for j, o in tracks.items()})


def time_writes(platform: Platform, mode: str, video_id: int, offset: int, group: int, boxes: int,
                repeats: int) -> tuple[list[float], int]:
    """Seconds of each of `repeats` writes at `offset` (append, tracked: the next groups after it), and the SQLite
    virtual-machine instructions the last one executed (to the nearest 1,000): what the database did, whatever
    else the machine was doing."""
    out = []
    tracked = mode == "tracked"
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    for r in range(repeats):
        steps[0] = 0
        platform.store.connection().set_progress_handler(count, 1000)
        # tracked: the job that wrote the tracks (prefill); else a job per write (replace writes the same frames)
        target = make_target(platform, "append" if tracked else mode, JOB if tracked else f"{mode}-{next(_JOBS)}")
        start = offset + r * group if mode in ("append", "tracked") else max(0, offset - group)
        preds = [frame_pred(video_id, f, boxes, 2 + r, tracked) for f in range(start, start + group)]
        t0 = time.perf_counter()
        written = target.write(preds)
        out.append(time.perf_counter() - t0)
        assert all(p.error is None and p.target is not None for p in written), [p.error for p in written][:3]
    platform.store.connection().set_progress_handler(None, 1000)
    return out, steps[0] * 1000


def time_read(platform: Platform, video_id: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    with platform.store.read() as conn:
        text = ops.get_video_annotation_text(conn, video_id)
    return time.perf_counter() - t0, len(text.encode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=17920, help="the video's frame count")
    ap.add_argument("--offsets", type=int, nargs="+", default=[16, 640, 8960, 17840])
    ap.add_argument("--group", type=int, default=16, help="frames per write")
    ap.add_argument("--boxes", type=int, default=5, help="boxes per frame")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--modes", nargs="+", default=["append", "replace", "iou_merge", "tracked"],
                    choices=["append", "replace", "iou_merge", "tracked"])
    args = ap.parse_args()
    if max(args.offsets) + args.repeats * args.group > args.frames:
        ap.error("the last offset's writes must fit in the video: offset + repeats x group <= frames")

    work = tempfile.mkdtemp(prefix="bench-video-upload-")
    platform = Platform(work)
    project = platform.project.create("videos", type="videos")
    ds = platform.dataset.create(project.id, "ds0")
    with platform.store.write() as conn:
        video_id = ops.insert_video(conn, ds.id, "long.mp4", args.frames, 30.0, WIDTH, HEIGHT, "0" * 64, 0, "mp4")
    make_target(platform, "append")  # the job and its tables
    print(f"video of {args.frames} frames, {args.boxes} boxes per frame, groups of {args.group} frames; "
          f"median of {args.repeats} writes, ms per write (per group)", flush=True)
    for mode in args.modes:
        print(f"\n{mode}:\n{'offset':>7} {'JSON MB':>8} {'write ms':>9} {'min':>7} {'max':>7} {'SQL ops':>8} "
              f"{'read ms':>8}", flush=True)
        for offset in args.offsets:
            prefill(platform, video_id, offset, args.frames, args.boxes, mode == "tracked")
            times, ops_count = time_writes(platform, mode, video_id, offset, args.group, args.boxes, args.repeats)
            read_s, size = time_read(platform, video_id)
            print(f"{offset:>7} {size / 1e6:>8.2f} {statistics.median(times) * 1e3:>9.1f} {min(times) * 1e3:>7.1f} "
                  f"{max(times) * 1e3:>7.1f} {ops_count:>8,} {read_s * 1e3:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
