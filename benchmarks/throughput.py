"""Images/s of the prediction pipeline against two baselines, measured in one run on the same files.

    (a) the plain model loop: the same model and adapter in this process, on images decoded beforehand;
    (b) `model.predict(input=directory)`: JPEG files -> loading tasks -> replica -> Predictions;
    (c) a plain Ray Data pipeline: `read_images` -> `map_batches(<model class>, batch_size, concurrency=1)` ->
        `iter_batches`, the way the Ray Data docs run batch inference.

Prints the ratios b/a (how much of the model's own speed the pipeline keeps) and b/c.

    .venv/bin/python benchmarks/throughput.py                                 # CPU defaults (small run)
    python benchmarks/throughput.py --device cuda --images 4000 --batch 16    # the GPU figure of docs/PERFORMANCE.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

from pipeline.deploy.cluster import NAMESPACE


def _write_images(folder: str, indices: range, size: tuple[int, int], seed: int) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng([seed, indices.start])
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    paths = []
    for i in indices:
        img = np.stack([(xx * (i % 7 + 1)) % 256, (yy * 3 + i) % 256, ((xx + yy) // 4) % 256], axis=2)
        for _ in range(6):
            y, x = rng.integers(0, h - 40), rng.integers(0, w - 40)
            img[y:y + 40, x:x + 40] = rng.integers(0, 256, 3)
        path = os.path.join(folder, f"{i:06d}.jpg")
        Image.fromarray(img.astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def make_images(folder: str, n: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    """`n` JPEGs of `size` (h, w) with some structure (gradients and blocks, so JPEG sizes are realistic),
    written by a process per core."""
    from concurrent.futures import ProcessPoolExecutor

    step = 250
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        parts = pool.map(_write_images, *zip(*[(folder, range(i, min(i + step, n)), size, seed)
                                               for i in range(0, n, step)]))
        return [p for part in parts for p in part]


def save_random_checkpoint(arch: str, path: str) -> None:
    import torch
    import torchvision

    from workers.models import save_checkpoint

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=91)
    save_checkpoint(model, path, framework="torchvision", architecture=arch, task_type="detection",
                    classes=[f"class{i}" for i in range(90)])


def plain_loop(ckpt_path: str, paths: list[str], batch: int, device: str, settings: dict, warmup: int) -> float:
    """(a): the adapter in this process on pre-decoded images; images/s of the model calls alone."""
    from workers.decode import read_image_file
    from workers.models import get_adapter, load_checkpoint
    from workers.models.base import ModelSpec

    ckpt = load_checkpoint(ckpt_path)
    spec = ModelSpec(ckpt.framework, ckpt.architecture, ckpt.task_type, ckpt.classes, ckpt.img_size, ckpt.arch_kwargs)
    adapter = get_adapter(ckpt.framework)(spec, device)
    adapter.load(ckpt.state_dict)
    images = [read_image_file(p) for p in paths]
    sizes = [img.shape[:2] for img in images]
    chunks = [(images[i:i + batch], sizes[i:i + batch]) for i in range(0, len(images), batch)]
    for imgs, sz in chunks[:warmup]:
        adapter.run(imgs, sz, settings)
    _sync(device)
    t0 = time.perf_counter()
    for imgs, sz in chunks:
        adapter.run(imgs, sz, settings)
    _sync(device)
    return len(images) / (time.perf_counter() - t0)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def pipeline_predict(api, ckpt_path: str, folder: str, n: int, batch: int, device: str,
                     settings: dict) -> tuple[float, float, float]:
    """(b): deploy + predict(input=directory); images/s of the predict() call (deployment excluded), the
    fraction of a second run's wall time the replica spent in the model, and images/s counting the deployment
    and a first, cold predict() (what one job that deploys, predicts once and stops would see)."""
    t_cold = time.perf_counter()
    model = api.nn.deploy(ckpt_path, device=device, replicas=1)
    try:
        preds = model.predict(input=folder + "/images", batch_size=batch, settings=settings, progress=False)
        cold = n / (time.perf_counter() - t_cold)
        assert len(preds) == n
        del preds
        model.predict(input=folder + "/warmup", batch_size=batch, settings=settings, progress=False)
        t0 = time.perf_counter()
        preds = model.predict(input=folder + "/images", batch_size=batch, settings=settings, progress=False)
        elapsed = time.perf_counter() - t0
        assert len(preds) == n and not any(p.error for p in preds)
        # The same run once more through predict_detached, to read how long the replica spent inside the model:
        # compute / wall time is how busy the pipeline kept it (1.0: the model, not the pipeline, sets the pace).
        t0 = time.perf_counter()
        with model.predict_detached(input=folder + "/images", batch_size=batch, settings=settings) as session:
            count = sum(1 for _ in session)
            busy = session.scheduler.stats.compute_seconds / (time.perf_counter() - t0)
        assert count == n
        return n / elapsed, busy, cold
    finally:
        model.shutdown()


def ray_data(ckpt_path: str, folder: str, n: int, batch: int, device: str,
             settings: dict) -> tuple[float, float]:
    """(c): plain Ray Data batch inference with the same adapter as a callable class: images/s in steady state
    and end to end (the actor's start-up included)."""
    import ray

    class Predictor:
        def __init__(self):
            from workers.models import get_adapter, load_checkpoint
            from workers.models.base import ModelSpec

            ckpt = load_checkpoint(ckpt_path)
            spec = ModelSpec(ckpt.framework, ckpt.architecture, ckpt.task_type, ckpt.classes, ckpt.img_size,
                             ckpt.arch_kwargs)
            self.adapter = get_adapter(ckpt.framework)(spec, device)
            self.adapter.load(ckpt.state_dict)

        def __call__(self, batch_: dict) -> dict:
            imgs = list(batch_["image"])
            outs, _ = self.adapter.run(imgs, [im.shape[:2] for im in imgs], settings)
            return {"n": np.array([len(o.boxes) for o in outs])}

    resources = {"num_gpus": 1} if device == "cuda" else {}

    def run(sub: str) -> tuple[int, float]:
        t0 = time.perf_counter()
        ds = ray.data.read_images(f"{folder}/{sub}", mode="RGB").map_batches(
            Predictor, batch_size=batch, concurrency=1, **resources)
        count = sum(len(out["n"]) for out in ds.iter_batches(batch_size=None))
        return count, time.perf_counter() - t0

    # Ray Data starts its actor and reads ahead inside the iteration, so one run's wall time includes start-up.
    # Two runs, a short one and the full one, pay the same start-up: the difference is the steady-state rate.
    # Ray Data also decodes ahead while its actor loads the model, so with few images the steady-state figure
    # is the model's speed on images already decoded; the end-to-end figure is the job's wall time.
    n_warm, t_warm = run("warmup")
    n_full, t_full = run("images")
    assert n_full == n
    end_to_end = n_full / t_full
    if n_full <= n_warm or t_full <= t_warm:  # a run too small to tell start-up from steady state
        return end_to_end, end_to_end
    return (n_full - n_warm) / (t_full - t_warm), end_to_end


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="fasterrcnn_mobilenet_v3_large_fpn")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", default="480x640", help="HxW of the generated JPEGs")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--skip", default="", help="comma list of a,b,c to skip")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    import ray
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    h, w = (int(v) for v in args.size.split("x"))
    settings = {"conf": args.conf}
    skip = set(args.skip.split(",")) - {""}
    work = tempfile.mkdtemp(prefix="bench-throughput-")
    os.makedirs(f"{work}/images")
    os.makedirs(f"{work}/warmup")
    paths = make_images(f"{work}/images", args.images, (h, w))
    make_images(f"{work}/warmup", args.batch * 2, (h, w), seed=1)
    ckpt = f"{work}/model.pth"
    save_random_checkpoint(args.arch, ckpt)

    ray.init(include_dashboard=False, namespace=NAMESPACE, log_to_driver=False)
    import pipeline

    api = pipeline.Api(data_dir=f"{work}/platform")
    res = {"arch": args.arch, "images": args.images, "size": f"{h}x{w}", "batch": args.batch, "device": device,
           "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine()}
    if device == "cuda":
        res["gpu"] = torch.cuda.get_device_name(0)
    if "a" not in skip:
        res["a_plain_loop"] = plain_loop(ckpt, paths, args.batch, device, settings, warmup=2)
        print(f"(a) plain model loop, pre-decoded:   {res['a_plain_loop']:8.2f} images/s", flush=True)
    if "b" not in skip:
        res["b_predict"], res["b_replica_busy"], res["b_cold"] = pipeline_predict(
            api, ckpt, work, args.images, args.batch, device, settings)
        print(f"(b) model.predict(input=directory):  {res['b_predict']:8.2f} images/s "
              f"(replica busy {res['b_replica_busy']:.0%} of the time; "
              f"{res['b_cold']:.2f} images/s counting deploy and a cold first run)", flush=True)
    if "c" not in skip:
        res["c_ray_data"], res["c_end_to_end"] = ray_data(ckpt, work, args.images, args.batch, device, settings)
        print(f"(c) plain Ray Data pipeline:         {res['c_ray_data']:8.2f} images/s "
              f"({res['c_end_to_end']:.2f} images/s end to end)", flush=True)
    if "a_plain_loop" in res and "b_predict" in res:
        res["b_over_a"] = res["b_predict"] / res["a_plain_loop"]
        print(f"b/a = {res['b_over_a']:.3f}")
    if "c_ray_data" in res and "b_predict" in res:
        res["b_over_c"] = res["b_predict"] / res["c_ray_data"]
        print(f"b/c = {res['b_over_c']:.3f}")
        if "b_cold" in res:
            res["b_cold_over_c_end_to_end"] = res["b_cold"] / res["c_end_to_end"]
            print(f"both cold, end to end: b/c = {res['b_cold_over_c_end_to_end']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    ray.shutdown()


if __name__ == "__main__":
    main()
