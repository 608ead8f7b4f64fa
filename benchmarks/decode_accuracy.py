"""What decoding a large JPEG reduced does to accuracy: a shapes detector (the demo model, or `--model`: any file
`api.nn.deploy` takes whose classes include the shapes classes, e.g. an Ultralytics YOLO .pt trained on shapes) on
upscaled shapes photos, mAP of `decode="full"` against `decode="reduced"` (the JPEG decoder's DCT scaling, never below
what the model keeps), scored against the known shapes with supervision's COCO-style `MeanAveragePrecision`, and the
images/s of each. Predicted classes are matched to the shapes classes by name.

    .venv/bin/python benchmarks/decode_accuracy.py --images 40 --factor 12      # 3072 x 3072 photos (9.4 MP)
    .venv/bin/python benchmarks/decode_accuracy.py --model yolo_shapes.pt --images 40 --factor 12
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints", "shapes.pth")


def make_photos(folder: str, n: int, factor: int, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """`n` shapes samples upscaled `factor` times (bilinear) and saved as JPEG (quality 90): (path, boxes in the
    photo's pixels, class ids)."""
    from PIL import Image

    from pipeline.app.shapes import get_sample

    out = []
    for i in range(n):
        s = get_sample(seed, i)
        h, w = s.image.shape[:2]
        path = os.path.join(folder, f"photo_{i:04d}.jpg")
        Image.fromarray(s.image).resize((w * factor, h * factor), Image.BILINEAR).save(path, quality=90)
        out.append((path, s.boxes * factor, s.class_ids))
    return out


def score(preds: list, truth: list) -> dict[str, float]:
    """COCO-style mAP of `preds` against `truth`; a prediction's class is its name's index in the shapes `CLASSES`
    (whatever order the model has them in), and a class outside them is not scored."""
    import supervision as sv
    from supervision.metrics import MeanAveragePrecision

    from pipeline.app.shapes import CLASSES

    metric = MeanAveragePrecision()
    for p, (_, boxes, ids) in zip(preds, truth):
        cls = np.array([CLASSES.index(c) if c in CLASSES else -1 for c in p.classes], dtype=int)
        keep = cls >= 0
        metric.update(sv.Detections(xyxy=p.boxes[keep].astype(np.float32), confidence=p.scores[keep],
                                    class_id=cls[keep]),
                      sv.Detections(xyxy=boxes.astype(np.float32), class_id=ids.astype(int)))
    r = metric.compute()
    return {"map50_95": float(r.map50_95), "map50": float(r.map50), "map75": float(r.map75)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=CHECKPOINT, help="the detector to deploy (default: the demo checkpoint)")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--factor", type=int, default=12, help="upscaling of the 256 x 256 shapes images")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--conf", type=float, default=0.05, help="score threshold of both runs")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    import ray

    import pipeline
    from pipeline.app.shapes import CLASSES

    work = tempfile.mkdtemp(prefix="bench-decode-accuracy-")
    truth = make_photos(work, args.images, args.factor, args.seed)
    ray.init(include_dashboard=False, log_to_driver=False)
    model = pipeline.Api(data_dir=os.path.join(work, "platform")).nn.deploy(args.model, device="cpu")
    res: dict = {"images": args.images, "size": f"{256 * args.factor}x{256 * args.factor}"}
    if args.model != CHECKPOINT:
        res["model"] = args.model
    try:
        missing = sorted(set(CLASSES) - set(model.classes))
        if missing:
            raise SystemExit(f"{args.model}: classes {model.classes} lack the shapes classes {missing}")
        paths = [t[0] for t in truth]
        model.predict(input=paths[: args.batch], progress=False)  # warm up
        for mode in ("full", "reduced"):
            t0 = time.perf_counter()
            preds = model.predict(input=paths, batch_size=args.batch, settings={"decode": mode, "conf": args.conf},
                                  progress=False)
            rate = len(preds) / (time.perf_counter() - t0)
            res[mode] = {**score(preds, truth), "images_per_s": rate}
            print(f"decode={mode:8s} mAP50:95 {res[mode]['map50_95']:.4f}  mAP50 {res[mode]['map50']:.4f}  "
                  f"mAP75 {res[mode]['map75']:.4f}  {rate:.2f} images/s", flush=True)
    finally:
        model.shutdown()
        ray.shutdown()
    res["map50_95_change"] = res["reduced"]["map50_95"] - res["full"]["map50_95"]
    print(f"reduced - full: mAP50:95 {res['map50_95_change']:+.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
