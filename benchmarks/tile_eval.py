"""Recall of the demo model on a large image with small objects, without and with tiling, offline.

    .venv/bin/python benchmarks/tile_eval.py [--size 4096] [--objects 60] [--tile 256] [--overlap 0.2]
        [--merge nmm] [--class-agnostic] [--batch 8] [--full-image] [--checkpoint checkpoints/shapes.pth]
    .venv/bin/python benchmarks/tile_eval.py --memory-check
    .venv/bin/python benchmarks/tile_eval.py --pipeline      # the same through model.predict(tiling=...)

1. `benchmarks/scenes.py` draws a `--size` square image with `--objects` shapes of 24-90 px (the sizes the demo
   model was trained on, at its 256 px input), none overlapping, and their boxes.
2. Without tiling: the whole image goes to the model through its `workers.models` adapter, which shrinks it to its
   input size (256 px: a 4096 px image by 16, so the shapes become 1.5-6 px).
3. With tiling: `workers.tiling.predict_tiled` cuts the image into `--tile` px tiles (views), feeds them to the
   same adapter `--batch` at a time, shifts the outputs back and merges them (`--merge`).
4. Recall = the fraction of the shapes that a detection overlaps with IoU >= 0.5 (each detection used once), with
   and without requiring the right class; precision too (all detections at the adapter's conf 0.25, and those
   scoring >= 0.5). The demo model reports some shapes twice under two classes: `--class-agnostic` merges across
   classes (SAHI's `postprocess_class_agnostic`), which removes those duplicates. Tiles/s and images/s of the
   tiled run (the model's time and the merge, not the image generation), the CPU time per tile (all threads; it
   changes little when other jobs share the cores, unlike tiles/s), and this process's peak RSS.

`--memory-check` measures the tiling path's own memory on a 20000 x 20000 image instead (`memory_check`).

`run(...)` returns the figures as a dict, for the lead's end-to-end check through the full pipeline.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks._metrics import greedy_matches  # noqa: E402
from benchmarks.mot import IOU_THRESHOLD, box_iou  # noqa: E402
from benchmarks.scenes import large_shapes_image  # noqa: E402
from benchmarks.track_eval import DEFAULT_CHECKPOINT, load_adapter  # noqa: E402


def match(gt_boxes: np.ndarray, gt_ids: np.ndarray, boxes: np.ndarray, ids: np.ndarray,
          by_class: bool) -> int:
    """Ground-truth objects matched by a detection (IoU >= 0.5, greedy by IoU, one detection each)."""
    if not len(gt_boxes) or not len(boxes):
        return 0
    iou = box_iou(gt_boxes, boxes)
    if by_class:
        iou[gt_ids[:, None] != ids[None, :]] = 0
    return greedy_matches(iou, IOU_THRESHOLD)


def _scores(gt_boxes, gt_ids, boxes, ids, scores) -> dict[str, float]:
    n = max(len(gt_boxes), 1)
    hit = match(gt_boxes, gt_ids, boxes, ids, by_class=False)
    high = scores >= 0.5
    return {"detections": len(boxes), "recall": hit / n,
            "recall_class": match(gt_boxes, gt_ids, boxes, ids, by_class=True) / n,
            "precision": hit / max(len(boxes), 1),
            "precision_05": match(gt_boxes, gt_ids, boxes[high], ids[high], by_class=False) / max(high.sum(), 1)}


def run(size: int = 4096, objects: int = 60, tile: int = 256, overlap: float = 0.2, merge: str = "nmm",
        batch: int = 8, full_image: bool = False, checkpoint: str | Path = DEFAULT_CHECKPOINT,
        seed: int = 0, class_agnostic: bool = False) -> dict[str, Any]:
    """Both runs (module doc): {"whole": {...}, "tiled": {..., "tiles", "seconds", "tiles_per_s",
    "images_per_s"}, "peak_rss_mb"}."""
    from workers.tiling import check_tiling, predict_tiled, tile_grid

    image, gt_boxes, gt_ids = large_shapes_image(size, objects, seed)
    adapter = load_adapter(checkpoint)
    t0 = time.perf_counter()
    whole = adapter.run([image], [image.shape[:2]], None)[0][0]
    out: dict[str, Any] = {"whole": {**_scores(gt_boxes, gt_ids, whole.boxes, whole.class_ids, whole.scores),
                                     "seconds": time.perf_counter() - t0}}
    del whole  # its masks are (N, size, size)

    def predict(views: list[np.ndarray]) -> list[Any]:
        return adapter.run(views, [v.shape[:2] for v in views], None)[0]

    tiling = check_tiling({"tile": tile, "overlap": overlap, "merge": merge, "full_image": full_image,
                           "class_agnostic": class_agnostic}, adapter.spec.task_type)
    predict([image[:tile, :tile]])  # warm-up: first-call allocations out of the timing
    t0, c0 = time.perf_counter(), time.process_time()
    dets = predict_tiled(image, predict, tiling, batch_size=batch)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    tiles = len(tile_grid(size, size, tile, overlap))
    out["tiled"] = {**_scores(gt_boxes, gt_ids, dets.boxes, dets.class_ids, dets.scores), "tiles": tiles,
                    "seconds": seconds, "cpu_seconds": cpu,
                    "tiles_per_s": tiles / seconds, "images_per_s": 1 / seconds}
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_pipeline(size: int = 4096, objects: int = 60, tile: int = 256, overlap: float = 0.2, merge: str = "nmm",
                 batch: int = 8, checkpoint: str | Path = DEFAULT_CHECKPOINT, seed: int = 0) -> dict[str, Any]:
    """The same two runs through the pipeline: the image saved as a PNG, `api.nn.deploy(checkpoint)` (one CPU
    replica in a local Ray), `model.predict(input=png)` without and with `tiling=...`; images/s of each predict()
    call (the replica decodes nothing: the loading task decodes the PNG whole)."""
    import tempfile

    import ray
    from PIL import Image

    import pipeline

    image, gt_boxes, gt_ids = large_shapes_image(size, objects, seed)
    work = tempfile.mkdtemp(prefix="bench-tiles-")
    path = os.path.join(work, "scene.png")
    Image.fromarray(image).save(path)
    ray.init(include_dashboard=False, log_to_driver=False)
    out: dict[str, Any] = {}
    try:
        model = pipeline.Api(data_dir=os.path.join(work, "platform")).nn.deploy(str(checkpoint), device="cpu")
        model.predict(input=path, progress=False, tiling={"tile": tile}, batch_size=batch)  # warm-up
        for name, tiling in (("whole", None), ("tiled", {"tile": tile, "overlap": overlap, "merge": merge})):
            t0 = time.perf_counter()
            [p] = model.predict(input=path, tiling=tiling, batch_size=batch, progress=False)
            seconds = time.perf_counter() - t0
            out[name] = {**_scores(gt_boxes, gt_ids, p.boxes, p.class_ids, p.scores), "seconds": seconds,
                         "images_per_s": 1 / seconds}
        model.shutdown()
    finally:
        ray.shutdown()
    return out


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_check(size: int = 20000, tile: int = 640, overlap: float = 0.2, batch: int = 16) -> dict[str, float]:
    """The tiling path's own memory on a `size` x `size` image (1.2 GB at 20000): the image is made resident,
    then `predict_tiled` runs with a stand-in model that copies each tile contiguous (as an adapter's
    preprocess does) and returns one 40 px object with a full-tile mask per tile. Returns the image's MB, the RSS
    before the run and the peak during it: the difference is what tiling itself adds (the real model's
    activations for one batch come on top)."""
    from types import SimpleNamespace

    from workers.tiling import check_tiling, predict_tiled

    image = np.full((size, size, 3), 90, np.uint8)  # written, so every page is resident
    before = _rss_mb()

    def predict(views: list[np.ndarray]) -> list[Any]:
        outs = []
        for v in views:
            x = np.ascontiguousarray(v)
            masks = np.zeros((1, *x.shape[:2]), bool)
            masks[0, 10:50, 10:50] = True
            outs.append(SimpleNamespace(boxes=np.array([[10, 10, 50, 50]], np.float32),
                                        scores=np.array([0.9], np.float32), class_ids=np.array([0]), masks=masks))
        return outs

    t0 = time.perf_counter()
    dets = predict_tiled(image, predict, check_tiling({"tile": tile, "overlap": overlap, "merge": "nmm"}), batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"image_mb": image.nbytes / 2**20, "rss_before_mb": before, "peak_mb": peak, "objects": len(dets),
            "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--objects", type=int, default=60)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=float, default=0.2)
    p.add_argument("--merge", default="nmm", choices=["nms", "nmm"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--class-agnostic", action="store_true", help="merge detections across classes")
    p.add_argument("--full-image", action="store_true")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--pipeline", action="store_true", help="both runs through model.predict(tiling=...)")
    p.add_argument("--memory-check", action="store_true",
                   help="only measure the tiling path's memory on a 20000 x 20000 image (stand-in model)")
    args = p.parse_args(argv)
    if args.memory_check:
        m = memory_check()
        print(f"20000 x 20000 image {m['image_mb']:.0f} MB; RSS before tiling {m['rss_before_mb']:.0f} MB, peak "
              f"{m['peak_mb']:.0f} MB (+{m['peak_mb'] - m['rss_before_mb']:.0f} MB for 1,521 tiles of 640 px in "
              f"batches of 16, {m['objects']} merged objects with mask crops), {m['seconds']:.1f} s")
        return 0
    if args.pipeline:
        r = run_pipeline(args.size, args.objects, args.tile, args.overlap, args.merge, args.batch, args.checkpoint)
        for name in ("whole", "tiled"):
            x = r[name]
            print(f"pipeline, {name}: recall {x['recall']:.3f} (right class {x['recall_class']:.3f}), precision "
                  f"{x['precision']:.3f}, {x['detections']} detections, {x['seconds']:.1f} s = "
                  f"{x['images_per_s']:.3f} images/s")
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    r = run(args.size, args.objects, args.tile, args.overlap, args.merge, args.batch, args.full_image,
            args.checkpoint, class_agnostic=args.class_agnostic)
    w, t = r["whole"], r["tiled"]
    print(f"{args.size} x {args.size}, {args.objects} shapes of 24-90 px")
    print(f"without tiling: recall {w['recall']:.3f} (right class {w['recall_class']:.3f}), "
          f"{w['detections']} detections, {w['seconds']:.2f} s")
    print(f"tiled ({t['tiles']} tiles of {args.tile} px, overlap {args.overlap}, {args.merge}"
          f"{' class-agnostic' if args.class_agnostic else ''}{', + full image' if args.full_image else ''}): "
          f"recall {t['recall']:.3f} (right class {t['recall_class']:.3f}), precision {t['precision']:.3f} "
          f"({t['precision_05']:.3f} at score >= 0.5), {t['detections']} detections, "
          f"{t['seconds']:.1f} s = {t['tiles_per_s']:.1f} tiles/s, {t['images_per_s']:.3f} images/s "
          f"({1000 * t['cpu_seconds'] / t['tiles']:.0f} ms of CPU per tile); "
          f"peak RSS {r['peak_rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
