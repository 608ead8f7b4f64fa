"""Tracking quality on the generated shapes video, scored with `motmetrics` (MOTA, IDF1) against the known paths:
offline (the demo model called directly, frame by frame, then a `pipeline.stages.tracking.VideoTracker`), or
`--pipeline`: through the whole pipeline (`api.nn.deploy`, `model.predict(input=video, video_params={"tracker":
...})`: readers, scheduler, replica, reorder buffer, tracker).

    .venv/bin/python benchmarks/track_eval.py [--pipeline] [--strides 1 3] [--tracker bytetrack]
        [--settings '{"track_buffer": 30}']
        [--checkpoint checkpoints/shapes.pth] [--frames 150] [--model-resize] [--video /tmp/x.mp4]

1. `benchmarks/scenes.py` draws the scene (five shapes of 28-86 px on known paths at 640 x 480, 30 fps: two
   crossing, one leaving the frame at the right and coming back) and writes it as h264 with PyAV.
2. The frames are decoded with the pipeline's own decoder (`workers.video.read_frames`) and predicted by the demo
   model through its `workers.models` adapter (as tests/helpers.py `DirectModel` does). By default it runs
   the model at the frame's own size (the pipeline's `settings["img_size"] = (480, 640)`): the shapes then have
   the sizes the model was trained on; `--model-resize` lets the model shrink them to its 256 px input instead.
   `--pipeline`: the video goes through `model.predict` (one CPU replica, `img_size` = the frame's size, or the
   model's own with `--model-resize`), once per stride, on a local Ray started by the script.
3. For each stride k the tracker sees frames 0, k, 2k, ... (effective frame rate fps / k), and the tracks are
   scored on those frames. The detector's own recall on the same frames is printed too: a tracker cannot find
   what the detector misses.

`run(...)` returns the figures as a dict, for the lead's end-to-end check through the full pipeline.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.mot import detection_recall, score_tracks  # noqa: E402
from benchmarks.scenes import moving_shapes_scene, write_video  # noqa: E402

DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "shapes.pth"


def load_adapter(checkpoint: str | Path = DEFAULT_CHECKPOINT, device: str = "cpu") -> Any:
    """The checkpoint's `workers.models` adapter, loaded, in this process."""
    from workers.models import get_adapter, load_checkpoint
    from workers.models.base import ModelSpec

    ckpt = load_checkpoint(str(checkpoint))
    spec = ModelSpec(framework=ckpt.framework, architecture=ckpt.architecture, task_type=ckpt.task_type,
                     classes=ckpt.classes, img_size=ckpt.img_size, arch_kwargs=ckpt.arch_kwargs)
    adapter = get_adapter(ckpt.framework)(spec, device)
    adapter.load(ckpt.state_dict)
    return adapter


def detect(adapter: Any, frames: list[np.ndarray], native: bool, settings: dict | None = None,
           batch_size: int = 8) -> list[Any]:
    """One `ModelOutput` per frame. `native`: the model takes the frames at their own size (its resize off, as
    the loading stage does when it already brought images to `img_size`)."""
    outs = []
    for i in range(0, len(frames), batch_size):
        chunk = frames[i:i + batch_size]
        # an exact (h, w) img_size: the adapter takes the frames as they are (the loader resized them already)
        run_settings = {**(settings or {}), **({"img_size": tuple(chunk[0].shape[:2])} if native else {})}
        res, _ = adapter.run(chunk, [f.shape[:2] for f in chunk], run_settings)
        outs += res
    return outs


def track(outputs: list[Any], stride: int, fps: float, tracker: str = "bytetrack",
          settings: dict | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(boxes, track ids) for frames 0, stride, 2 stride, ... of `outputs`, through a fresh `VideoTracker`; a
    track's first detection gets its id from the next update (`started_by_previous`), as in the pipeline."""
    from pipeline.stages.tracking import make_tracker

    vt = make_tracker(tracker, settings, fps=fps, stride=stride)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for o in outputs[::stride]:
        out.append((o.boxes, vt.update(o.boxes, o.scores, o.class_ids)))
        for index, tid in vt.started_by_previous.items():
            out[-2][1][index] = tid
    return out


def run(strides: tuple[int, ...] = (1, 3), tracker: str = "bytetrack", settings: dict | None = None,
        checkpoint: str | Path = DEFAULT_CHECKPOINT, frames: int = 150, native: bool = True,
        video: str | Path | None = None) -> dict[str, Any]:
    """Generate, decode, detect, track, score (module doc); returns {"detect_s", "detection_recall",
    "strides": {k: metrics}} with MOTA, IDF1, ID switches, misses, false positives per stride."""
    from workers.video import read_frames

    scene = moving_shapes_scene(frames=frames)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(video) if video else Path(tmp) / "moving_shapes.mp4"
        truth = write_video(scene, path)
        decoded = read_frames(path, range(frames))
    images = [decoded[i] for i in range(frames)]
    adapter = load_adapter(checkpoint)
    t0 = time.perf_counter()
    outputs = detect(adapter, images, native)
    out: dict[str, Any] = {"frames": frames, "detect_s": time.perf_counter() - t0, "strides": {},
                           "detection_recall": detection_recall(truth, [o.boxes for o in outputs])}
    for k in strides:
        tracks = track(outputs, k, scene.fps, tracker, settings)
        metrics = score_tracks(truth[::k], tracks)
        metrics["detection_recall"] = detection_recall(truth[::k], [o.boxes for o in outputs[::k]])
        metrics["tracks"] = len({int(i) for _, ids in tracks for i in ids if i >= 0})
        out["strides"][k] = metrics
    return out


def run_pipeline(strides: tuple[int, ...] = (1, 3), tracker: str = "bytetrack", settings: dict | None = None,
                 checkpoint: str | Path = DEFAULT_CHECKPOINT, frames: int = 150, native: bool = True,
                 video: str | Path | None = None) -> dict[str, Any]:
    """`run`, with detection and tracking done by the pipeline itself (`predict(video_params={"tracker": ...})`)."""
    import pipeline

    scene = moving_shapes_scene(frames=frames)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(video) if video else Path(tmp) / "moving_shapes.mp4"
        truth = write_video(scene, path)
        api = pipeline.Api(data_dir=Path(tmp) / "platform")
        model = api.nn.deploy(model=str(checkpoint), device="cpu", replicas=1)
        out: dict[str, Any] = {"frames": frames, "detect_s": 0.0, "strides": {}}
        try:
            for k in strides:
                t0 = time.perf_counter()
                preds = model.predict(input=str(path), video_params={"tracker": tracker, "stride": k,
                                                                     **(settings or {})},
                                      img_size=(scene.height, scene.width) if native else None, progress=False)
                seconds = time.perf_counter() - t0
                tracks = [(p.boxes, p.track_ids) for p in preds]
                metrics = score_tracks(truth[::k], tracks)
                metrics["detection_recall"] = detection_recall(truth[::k], [p.boxes for p in preds])
                metrics["tracks"] = len({int(i) for _, ids in tracks for i in ids if i >= 0})
                metrics["seconds"] = seconds
                out["strides"][k] = metrics
                if k == 1:
                    out["detection_recall"] = metrics["detection_recall"]
                out["detect_s"] += seconds
        finally:
            model.shutdown()
    out.setdefault("detection_recall", float("nan"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strides", type=int, nargs="+", default=[1, 3])
    p.add_argument("--tracker", default="bytetrack")
    p.add_argument("--settings", default="{}", help="tracker settings as JSON")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--model-resize", action="store_true", help="let the model resize frames its own way")
    p.add_argument("--video", default=None, help="keep the generated video at this path")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--pipeline", action="store_true", help="through model.predict (the whole pipeline)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    res = (run_pipeline if args.pipeline else run)(tuple(args.strides), args.tracker, json.loads(args.settings),
                                                   args.checkpoint, args.frames, native=not args.model_resize,
                                                   video=args.video)
    what = "predicted and tracked by the pipeline (all strides)" if args.pipeline else "detected"
    print(f"{res['frames']} frames {what} in {res['detect_s']:.1f} s; detector recall (IoU >= 0.5) "
          f"{res['detection_recall']:.3f}")
    for k, m in res["strides"].items():
        print(f"stride {k}: MOTA {m['mota']:.3f}  IDF1 {m['idf1']:.3f}  ID switches {int(m['num_switches'])}  "
              f"misses {int(m['num_misses'])}  false positives {int(m['num_false_positives'])}  of "
              f"{int(m['num_objects'])} objects  (tracks {m['tracks']}, detector recall "
              f"{m['detection_recall']:.3f})" + (f"  {m['seconds']:.1f} s" if "seconds" in m else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
