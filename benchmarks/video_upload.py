"""The cost of one video upload write (a group of frames into the video's annotation) as the annotation grows.

    .venv/bin/python benchmarks/video_upload.py [--frames 3200] [--offsets 0 640 1920 2560] [--group 16]
        [--boxes 5] [--repeats 3] [--modes append replace iou_merge] [--impls before after]

A videos project on a fresh platform in a temporary directory holds one 1280x720 video row of `--frames` frames
(no file: the upload of predictions into an existing video never reads it). For each offset F, the video's
annotation is set to frames 0..F-1 with `--boxes` predicted boxes each (one object and one figure per box, with its
confidence tag: what an upload of those frames leaves), then `VideoTarget.write` is timed on a group of `--group`
frame predictions of `--boxes` boxes each, `--repeats` times (the median is printed), under:

* `before`: the write as it was: decode the whole `VideoAnnotation`, merge, check and encode it all again
  (`merge_video_annotation` + `ops.set_video_annotation`, the code of `VideoTarget` before the change);
* `after`: `VideoTarget` as it is (`merge_video_json`: the stored objects and figures stay JSON).

(`create` writes into the video it made exactly as `append` does: the same code, so it is not timed apart.)

append writes frames F..F+group-1 (new frames); replace and iou_merge write frames F-group..F-1 (frames that
already have figures: the predictions replace them, or are compared with them). Both implementations run on the
same machine in the same process, interleaved per offset. The last columns split the `after` write into parsing
the stored JSON (`json.loads`, garbage collector paused as the target does), serialising it (`json.dumps`) and
storing it (the SQLite UPDATE and commit of the row alone): the part that one row per video makes O(annotation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from pipeline.platform import Platform, ops  # noqa: E402
from pipeline.prediction import Item, Prediction  # noqa: E402
from pipeline.stages.upload.merge import merge_video_annotation, merge_video_json  # noqa: E402
from pipeline.stages.upload.videos import VideoTarget, _gc_paused  # noqa: E402

HEIGHT, WIDTH = 720, 1280
CLASSES = ["car", "person", "bus"]


class BeforeVideoTarget(VideoTarget):
    """`VideoTarget` with the per-video write as it was before the JSON-level merge."""

    def _merge_json(self, conn: Any, row: Any, predicted: dict[int, Any], meta: Any) -> None:
        from pipeline.annotation import VideoAnnotation
        from pipeline.exceptions import FormatError

        video_id = row["id"]
        cur = conn.execute("SELECT ann FROM video_annotations WHERE video_id = ?", (video_id,)).fetchone()
        if cur is None:
            current = VideoAnnotation((row["height"], row["width"]), row["frames_count"])
        else:
            data = json.loads(cur[0])
            try:
                current = VideoAnnotation.from_json(data, meta)
            except FormatError:
                current = VideoAnnotation.from_json(data, None)
        ann = merge_video_annotation(self.mode, current, predicted, self.threshold)
        ops.set_video_annotation(conn, video_id, ann, meta=meta)


def frame_pred(video_id: int, frame: int, boxes: int, seed: int) -> Prediction:
    rng = np.random.default_rng((seed, frame))
    xy = rng.uniform(0, [WIDTH - 200, HEIGHT - 200], (boxes, 2))
    wh = rng.uniform(20, 200, (boxes, 2))
    ids = rng.integers(0, len(CLASSES), boxes)
    item = Item(index=frame, key=f"video:{video_id}:{frame}", name="bench", video_id=video_id, frame_idx=frame)
    return Prediction(boxes=np.hstack([xy, xy + wh]), scores=rng.uniform(0.3, 1.0, boxes), class_ids=ids,
                      classes=[CLASSES[i] for i in ids], item=item, orig_size=(HEIGHT, WIDTH))


def make_target(cls: type, platform: Platform, mode: str) -> VideoTarget:
    args = SimpleNamespace(upload=mode, settings={}, job_id=None)
    plan = SimpleNamespace(name="bench", project_type="videos", description="benchmark video")
    model = SimpleNamespace(spec=SimpleNamespace(task_type="detection"))
    return cls(args, plan, platform, model)


def prefill_text(platform: Platform, video_id: int, frames: int, total: int, boxes: int) -> str:
    """The annotation JSON text of frames 0..frames-1 with `boxes` predicted boxes each."""
    from pipeline.annotation import VideoAnnotation

    target = make_target(VideoTarget, platform, "append")
    with platform.store.write() as conn:
        meta = target.resolve_meta(conn, ops.get_video_row(conn, video_id)["project_id"],
                               [frame_pred(video_id, 0, len(CLASSES), 0)], {})
    # the classes all in the meta: both implementations see the same, already merged meta
    data = VideoAnnotation((HEIGHT, WIDTH), total).to_json()
    predicted = {f: target.predicted_annotation(frame_pred(video_id, f, boxes, 1), meta).labels
                 for f in range(frames)}
    merge_video_json("append", data, predicted)
    return ops.dumps(data)


def store_text(platform: Platform, video_id: int, text: str) -> None:
    with platform.store.write() as conn:
        conn.execute("UPDATE video_annotations SET ann = ? WHERE video_id = ?", (text, video_id))


def time_writes(platform: Platform, cls: type, mode: str, video_id: int, offset: int, group: int, boxes: int,
                repeats: int, text: str) -> list[float]:
    out = []
    for r in range(repeats):
        store_text(platform, video_id, text)
        target = make_target(cls, platform, mode)
        start = offset if mode == "append" else max(0, offset - group)
        preds = [frame_pred(video_id, f, boxes, 2 + r) for f in range(start, start + group)]
        t0 = time.perf_counter()
        target.write(preds)
        out.append(time.perf_counter() - t0)
        assert all(p.error is None and p.target is not None for p in preds), [p.error for p in preds][:3]
    return out


def parts(platform: Platform, video_id: int, text: str, repeats: int) -> tuple[float, float, float]:
    """Median seconds of: json.loads (GC paused), json.dumps, storing the row (UPDATE + commit)."""
    loads, dumps, store = [], [], []
    for _ in range(repeats):
        with _gc_paused():
            t0 = time.perf_counter()
            data = json.loads(text)
            t1 = time.perf_counter()
            again = ops.dumps(data)
            t2 = time.perf_counter()
            del data
        with platform.store.write() as conn:
            conn.execute("UPDATE video_annotations SET ann = ? WHERE video_id = ?", (again, video_id))
        t3 = time.perf_counter()
        loads.append(t1 - t0)
        dumps.append(t2 - t1)
        store.append(t3 - t2)
    return statistics.median(loads), statistics.median(dumps), statistics.median(store)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=3200, help="the video's frame count")
    ap.add_argument("--offsets", type=int, nargs="+", default=[0, 640, 1920, 2560])
    ap.add_argument("--group", type=int, default=16, help="frames per write")
    ap.add_argument("--boxes", type=int, default=5, help="boxes per frame")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["append", "replace", "iou_merge"],
                    choices=["append", "replace", "iou_merge"])
    ap.add_argument("--impls", nargs="+", default=["before", "after"], choices=["before", "after"])
    args = ap.parse_args()
    impls = {"before": BeforeVideoTarget, "after": VideoTarget}

    work = tempfile.mkdtemp(prefix="bench-video-upload-")
    platform = Platform(work)
    project = platform.project.create("videos", type="videos")
    ds = platform.dataset.create(project.id, "ds0")
    with platform.store.write() as conn:
        video_id = ops.insert_video(conn, ds.id, "long.mp4", args.frames, 30.0, WIDTH, HEIGHT, "0" * 64, 0, "mp4")
        ops.put_video_annotation_json(conn, video_id, {}, 0)
    print(f"video of {args.frames} frames, {args.boxes} boxes per frame, groups of {args.group} frames; "
          f"median of {args.repeats} writes, ms per write (per group)", flush=True)
    for mode in args.modes:
        print(f"\n{mode}:")
        head = f"{'offset':>7} {'JSON MB':>8} " + " ".join(f"{name:>8}" for name in args.impls)
        if "after" in args.impls:
            head += f" {'loads':>7} {'dumps':>7} {'store':>7}"
        print(head, flush=True)
        for offset in args.offsets:
            text = prefill_text(platform, video_id, offset, args.frames, args.boxes)
            line = f"{offset:>7} {len(text.encode()) / 1e6:>8.2f} "
            for name in args.impls:
                times = time_writes(platform, impls[name], mode, video_id, offset, args.group, args.boxes,
                                    args.repeats, text)
                line += f" {statistics.median(times) * 1e3:>8.1f}"
            if "after" in args.impls:
                line += " " + " ".join(f"{v * 1e3:>7.1f}" for v in parts(platform, video_id, text, args.repeats))
            print(line, flush=True)


if __name__ == "__main__":
    main()
