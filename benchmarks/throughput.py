"""Images/s of the prediction pipeline against its baselines, measured in one run on the same files.

    (a) the model's limit: the same model and adapter in this process, on images decoded beforehand and already at
        the size the model's own resize gives them (what the model costs, nothing else);
    (b) `model.predict(input=directory)`: JPEG files -> loading tasks -> replica -> Predictions, once per decode
        mode (`--decode`: full, reduced, auto, gpu) and per precision (`--precision`, GPU only);
    (c) a plain Ray Data pipeline: `read_images` -> `map_batches(<model class>, batch_size, concurrency=1)` ->
        `iter_batches`, the way the Ray Data docs run batch inference, at the same CPU budget;
    (d) the plain single-process loop: decode each JPEG whole with Pillow, then the model, one after the other.

Prints the ratios b/a (how much of the model's own speed the pipeline keeps) and b/c for each decode mode.
`--cpus N` limits the Ray cluster to N CPUs (a GPU node with few CPUs per GPU); `--image-size 3000x4000`
generates photo-like JPEGs (quality 90) of that size.

    .venv/bin/python benchmarks/throughput.py                                 # CPU defaults (small run)
    .venv/bin/python benchmarks/throughput.py --image-size 3000x4000 --cpus 2 --images 48 --arch demo
    python benchmarks/throughput.py --device cuda --images 4000 --batch 16    # the GPU figures of docs/PERFORMANCE.md
    python benchmarks/throughput.py --device cuda --cpus 4 --image-size 3000x4000 --decode full,reduced,gpu \
        --precision fp32,fp16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

import numpy as np

from pipeline.deploy.cluster import NAMESPACE


def _write_images(folder: str, indices: range, size: tuple[int, int], seed: int) -> list[str]:
    from PIL import Image, ImageFilter

    rng = np.random.default_rng([seed, indices.start])
    h, w = size
    paths = []
    for i in indices:
        # photo-like: smooth colour fields at several scales, objects with soft edges, sensor noise; JPEG sizes
        # (and decode costs) like a camera's at quality 90
        field = Image.fromarray(rng.integers(0, 256, (max(2, h // 64), max(2, w // 64), 3), dtype=np.uint8))
        img = np.asarray(field.resize((w, h), Image.BICUBIC), dtype=np.float32)
        for _ in range(12):
            r = int(rng.integers(max(4, min(h, w) // 40), max(8, min(h, w) // 6)))
            y, x = int(rng.integers(0, h - r)), int(rng.integers(0, w - r))
            img[y:y + r, x:x + r] = img[y:y + r, x:x + r] * 0.4 + rng.integers(0, 256, 3) * 0.6
        img += rng.normal(0, 6, img.shape)
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))
        path = os.path.join(folder, f"{i:06d}.jpg")
        pil.save(path, quality=90)
        paths.append(path)
    return paths


def make_images(folder: str, n: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    """`n` JPEGs of `size` (h, w) with some structure (gradients and blocks, so JPEG sizes are realistic),
    written by a process per core."""
    from concurrent.futures import ProcessPoolExecutor

    step = max(1, -(-n // (os.cpu_count() or 1)))  # every core gets a share
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        parts = pool.map(_write_images, *zip(*[(folder, range(i, min(i + step, n)), size, seed)
                                               for i in range(0, n, step)]))
        return [p for part in parts for p in part]


def _images(folder: str, n: int, size: tuple[int, int], seed: int) -> list[str]:
    """The `n` JPEGs of `size` in `folder`: those a previous run left there when they are `n` of that size, else
    made anew."""
    from PIL import Image

    if os.path.isdir(folder):
        names = sorted(f for f in os.listdir(folder) if f.endswith(".jpg"))
        paths = [os.path.join(folder, f) for f in names]
        if len(paths) == n and (n == 0 or Image.open(paths[0]).size == size[::-1]):
            return paths
        shutil.rmtree(folder)
    os.makedirs(folder)
    return make_images(folder, n, size, seed)


def save_random_checkpoint(arch: str, path: str) -> str:
    """A random-weights torchvision detector saved as a checkpoint (or "demo": the demo model); returns its path."""
    import torch
    import torchvision

    from workers.models import save_checkpoint

    if arch == "demo":
        return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints", "shapes.pth")
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=91)
    save_checkpoint(model, path, framework="torchvision", architecture=arch, task_type="detection",
                    classes=[f"class{i}" for i in range(90)])
    return path


def _adapter(ckpt_path: str, device: str) -> tuple:
    from workers.models import get_adapter, load_checkpoint
    from workers.models.base import ModelSpec

    ckpt = load_checkpoint(ckpt_path)
    spec = ModelSpec(ckpt.framework, ckpt.architecture, ckpt.task_type, ckpt.classes, ckpt.img_size, ckpt.arch_kwargs)
    adapter = get_adapter(ckpt.framework)(spec, device)
    adapter.load(ckpt.state_dict)
    return adapter, spec


def _timed_runs(adapter, images: list, sizes: list, batch: int, device: str, settings: dict, warmup: int) -> float:
    chunks = [(images[i:i + batch], sizes[i:i + batch]) for i in range(0, len(images), batch)]
    for imgs, sz in chunks[:warmup]:
        adapter.run(imgs, sz, settings)
    _sync(device)
    t0 = time.perf_counter()
    for imgs, sz in chunks:
        adapter.run(imgs, sz, settings)
    _sync(device)
    return len(images) / (time.perf_counter() - t0)


def model_limit(ckpt_path: str, paths: list[str], batch: int, device: str, settings: dict, warmup: int) -> float:
    """(a): the adapter in this process on images decoded beforehand and already brought to the size the model's
    own resize gives them: images/s of the model alone (its resize then changes nothing)."""
    from PIL import Image

    from workers.decode import DEFAULT_MAX_PIXELS, decode_reduced, needed_scale, read_file

    adapter, spec = _adapter(ckpt_path, device)
    hint = type(adapter).decode_hint(spec, settings.get("img_size") or spec.img_size)
    images, sizes = [], []
    for p in paths:
        # decoded reduced when the JPEG allows (faster to prepare; the model's speed does not depend on how)
        img, (h, w) = decode_reduced(read_file(p), DEFAULT_MAX_PIXELS, hint)
        scale = min(1.0, needed_scale(hint, h, w))
        small = Image.fromarray(img).resize((round(w * scale), round(h * scale)), Image.BILINEAR)
        images.append(np.asarray(small))
        sizes.append((h, w))
    return _timed_runs(adapter, images, sizes, batch, device, settings, warmup)


def plain_loop(ckpt_path: str, paths: list[str], batch: int, device: str, settings: dict) -> float:
    """(d): the plain single-process loop: each batch's JPEGs decoded whole with Pillow, then the model."""
    from workers.decode import read_image_file

    adapter, _ = _adapter(ckpt_path, device)
    t0 = time.perf_counter()
    for i in range(0, len(paths), batch):
        images = [read_image_file(p) for p in paths[i:i + batch]]
        adapter.run(images, [img.shape[:2] for img in images], settings)
    _sync(device)
    return len(paths) / (time.perf_counter() - t0)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def pipeline_predict(api, ckpt_path: str, folder: str, n: int, batch: int, device: str, settings: dict,
                     decodes: list[str], precision: str = "fp32") -> dict[str, tuple[float, float, float | None]]:
    """(b): one deployment, then predict(input=directory) per decode mode: {mode: (images/s of the predict() call
    with the deployment excluded, the fraction of a second run's wall time the replica spent in the model, images/s
    of the first, cold run counting the deployment (first mode only, else None))}."""
    out = {}
    t_cold = time.perf_counter()
    model = api.nn.deploy(ckpt_path, device=device, replicas=1, precision=precision)
    try:
        for mode in decodes:
            s = {**settings, "decode": mode}
            preds = model.predict(input=folder + "/images", batch_size=batch, settings=s, progress=False)
            cold = n / (time.perf_counter() - t_cold) if not out else None
            assert len(preds) == n and not any(p.error for p in preds), [p.error for p in preds if p.error][:3]
            del preds
            model.predict(input=folder + "/warmup", batch_size=batch, settings=s, progress=False)
            # predict_detached, to read how long the replica spent inside the model: compute / wall time is how busy
            # the pipeline kept it (1.0: the model, not the pipeline, sets the pace)
            t0 = time.perf_counter()
            with model.predict_detached(input=folder + "/images", batch_size=batch, settings=s) as session:
                count = sum(1 for _ in session)
                elapsed = time.perf_counter() - t0
                busy = session.scheduler.stats.compute_seconds / elapsed
            assert count == n
            out[mode] = (n / elapsed, busy, cold)
    finally:
        model.shutdown()
    return out


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
    ap.add_argument("--arch", default="fasterrcnn_mobilenet_v3_large_fpn", help="a torchvision detector, or demo")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", "--image-size", dest="size", default="480x640", help="HxW of the generated JPEGs")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    ap.add_argument("--cpus", type=int, default=None, help="CPUs of the Ray cluster (default: all)")
    ap.add_argument("--decode", default="full,reduced", help="decode modes of (b), comma-separated")
    ap.add_argument("--precision", default="fp32", help="precisions of (b), comma-separated (GPU: fp16, bf16)")
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--skip", default="", help="comma list of a,b,c,d to skip")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--image-dir", help="keep the generated JPEGs here and reuse them in later runs (same size and "
                                        "count): one generation for several runs")
    args = ap.parse_args()

    import ray
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    h, w = (int(v) for v in args.size.split("x"))
    settings = {"conf": args.conf}
    skip = set(args.skip.split(",")) - {""}
    work = args.image_dir or tempfile.mkdtemp(prefix="bench-throughput-")
    paths = _images(f"{work}/images", args.images, (h, w), seed=0)
    _images(f"{work}/warmup", args.batch * 2, (h, w), seed=1)
    ckpt = save_random_checkpoint(args.arch, f"{work}/{args.arch}.pth")

    # a local Ray of its own, with exactly --cpus (never a cluster that `ray start` or $RAY_ADDRESS names)
    ray.init(address="local", include_dashboard=False, namespace=NAMESPACE, log_to_driver=False, num_cpus=args.cpus)
    import pipeline

    api = pipeline.Api(data_dir=f"{work}/platform")
    res: dict = {"arch": args.arch, "images": args.images, "size": f"{h}x{w}", "batch": args.batch, "device": device,
                 "cpus": args.cpus or os.cpu_count(), "machine": platform.processor() or platform.machine()}
    if device == "cuda":
        res["gpu"] = torch.cuda.get_device_name(0)
    def save() -> None:  # after every figure: a run stopped by a time limit keeps what it measured
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=2)

    _measure(res, api, ckpt, work, paths, args, device, settings, skip, save)
    save()
    ray.shutdown()


def _measure(res: dict, api, ckpt: str, work: str, paths: list[str], args, device: str, settings: dict,
             skip: set[str], save) -> None:
    if "a" not in skip:
        res["a_model_limit"] = model_limit(ckpt, paths, args.batch, device, settings, warmup=2)
        print(f"(a) the model's limit (inputs at its size): {res['a_model_limit']:8.2f} images/s", flush=True)
        save()
    if "d" not in skip:
        res["d_plain_loop"] = plain_loop(ckpt, paths, args.batch, device, settings)
        print(f"(d) plain loop, decode + model in one process: {res['d_plain_loop']:8.2f} images/s", flush=True)
        save()
    if "c" not in skip:
        res["c_ray_data"], res["c_end_to_end"] = ray_data(ckpt, work, args.images, args.batch, device, settings)
        print(f"(c) plain Ray Data pipeline: {res['c_ray_data']:8.2f} images/s "
              f"({res['c_end_to_end']:.2f} images/s end to end)", flush=True)
        save()
    if "b" in skip:
        return
    for precision in args.precision.split(","):
        runs = pipeline_predict(api, ckpt, work, args.images, args.batch, device, settings,
                                args.decode.split(","), precision)
        for mode, (rate, busy, cold) in runs.items():
            key = f"b_{mode}_{precision}"
            res[key], res[key + "_replica_busy"], res[key + "_cold"] = rate, busy, cold
            line = (f"(b) predict(), decode={mode}, {precision}: {rate:8.2f} images/s (replica busy {busy:.0%}"
                    + (f"; {cold:.2f} images/s counting deploy and a cold first run)" if cold else ")"))
            if "a_model_limit" in res:
                res[key + "_over_a"] = rate / res["a_model_limit"]
                line += f"  b/a = {res[key + '_over_a']:.3f}"
            if "c_ray_data" in res:
                res[key + "_over_c"] = rate / res["c_ray_data"]
                line += f"  b/c = {res[key + '_over_c']:.3f}"
            print(line, flush=True)
        save()


if __name__ == "__main__":
    main()
