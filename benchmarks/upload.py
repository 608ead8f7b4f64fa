"""Does uploading slow predict() down? images/s of the same prediction with no upload, with `append` and with
`create`, on one platform project, measured in one run.

    .venv/bin/python benchmarks/upload.py                 # CPU: the demo model on 256x256 shapes images
    .venv/bin/python benchmarks/upload.py --images 400 --checkpoint checkpoints/shapes.pth
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from pipeline.deploy.cluster import NAMESPACE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/shapes.pth")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="alternating rounds; the best of each is kept")
    ap.add_argument("--json")
    args = ap.parse_args()

    import ray

    import pipeline
    from pipeline.app.shapes import generate_sample

    work = tempfile.mkdtemp(prefix="bench-upload-")
    ray.init(include_dashboard=False, namespace=NAMESPACE, log_to_driver=False)
    api = pipeline.Api(data_dir=f"{work}/platform")
    project = api.project.create("bench")
    ds = api.dataset.create(project.id, "ds")
    rng = np.random.default_rng(0)
    for i in range(args.images):
        api.image.upload(ds.id, f"{i:06d}.png", generate_sample(rng).image)
    model = api.nn.deploy(args.checkpoint, device="cpu")
    settings = {"conf": 0.5}
    model.predict(project_id=project.id, batch_size=args.batch, settings=settings, progress=False)  # warm-up

    def rate(**kw) -> tuple[float, int]:
        t0 = time.perf_counter()
        preds = model.predict(project_id=project.id, batch_size=args.batch, settings=settings, progress=False, **kw)
        elapsed = time.perf_counter() - t0
        assert len(preds) == args.images and not any(p.error for p in preds)
        return args.images / elapsed, sum(len(p) for p in preds)

    best: dict[str, float] = {}
    objects = 0
    for _ in range(args.repeats):  # alternate so that drift of the machine hits every variant alike
        for name, kw in (("none", {}), ("append", {"upload": "append"}), ("create", {"upload": "create"})):
            r, objects = rate(**kw)
            best[name] = max(best.get(name, 0.0), r)
            print(f"  {name:7s} {r:8.2f} images/s", flush=True)
    res = {"images": args.images, "objects_per_run": objects, "cpus": os.cpu_count(), **best,
           "append_over_none": best["append"] / best["none"], "create_over_none": best["create"] / best["none"]}
    print(f"no upload {best['none']:.2f} images/s; append {best['append']:.2f} "
          f"({res['append_over_none']:.3f}x); create {best['create']:.2f} ({res['create_over_none']:.3f}x); "
          f"{objects} objects per run")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    model.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
