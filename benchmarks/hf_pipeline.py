"""A Hugging Face transformers model through the whole pipeline against the plain model loop through its own image
processor, in one run, on the same generated 480x640 JPEGs.

    (a) plain loop: the model in this process, on images decoded beforehand; per call of `--batch` images:
        processor(images) -> model(**inputs) -> post_process_*(target_sizes=each image's size)
    (b) `model.predict(input=directory, batch_size=--batch)`: files -> loading tasks -> replica actor (the
        `transformers` adapter: the same processor, model and post-processing) -> `Prediction`s; the deployment is
        excluded, a warm-up call comes first

Models are random-weight configs at the published models' sizes, built offline (benchmarks/hf_adapter.py):
RT-DETR R50-vd (640x640), Conditional DETR R50 (shortest edge 800), SegFormer-B0 (512x512). Variants run
interleaved, `--rounds` times each; the best images/s of each is reported, and b/a (goal >= 0.9). Also the CPU
seconds per image: (a) this process's; (b) the replica process's plus this process's (the loading tasks, a few ms
of JPEG decoding per image, are left out). Wall figures move with other jobs on the machine; CPU seconds much less.

    PYTHONPATH=. .venv/bin/python benchmarks/hf_pipeline.py [--model rt_detr_r50vd] [--images 24] [--batch 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hf_adapter import _models, _plain  # noqa: E402  (this directory is on sys.path when run as a script)
from throughput import make_images  # noqa: E402


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    import psutil
    import torch

    import pipeline
    from workers.decode import read_image_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="rt_detr_r50vd", help="rt_detr_r50vd | conditional_detr_r50 | segformer_b0")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.device}; load average {_load()}")
    with tempfile.TemporaryDirectory(prefix="hf-bench-") as root:
        model_dir, image_dir = os.path.join(root, "model"), os.path.join(root, "images")
        os.makedirs(image_dir)
        torch.manual_seed(0)
        [(net, processor)] = _models([args.model]).values()
        net.save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
        paths = make_images(image_dir, args.images, (480, 640))
        images = [read_image_file(p) for p in paths]
        net = net.eval().to(args.device)

        api = pipeline.Api(data_dir=os.path.join(root, "home"))
        t0 = time.perf_counter()
        deployed = api.nn.deploy(model_dir, device=args.device, replicas=1)
        print(f"deploy: {time.perf_counter() - t0:.1f} s ({deployed.spec.architecture}, {deployed.spec.task_type})")
        try:
            deployed.predict(input=paths[: args.batch], batch_size=args.batch, progress=False)  # warm-up
            _plain(net, processor, images[: args.batch], 0.25, args.device, args.batch)
            replica = psutil.Process(deployed.info()["replicas_info"][0]["pid"])  # on this machine: local Ray
            best = {"a": 0.0, "b": 0.0, "cpu_a": float("inf"), "cpu_b": float("inf")}
            n = len(images)
            for _ in range(args.rounds):
                t0, c0 = time.perf_counter(), time.process_time()
                _plain(net, processor, images, 0.25, args.device, args.batch)
                best["a"] = max(best["a"], n / (time.perf_counter() - t0))
                best["cpu_a"] = min(best["cpu_a"], (time.process_time() - c0) / n)
                t0, c0, r0 = time.perf_counter(), time.process_time(), _cpu(replica)
                preds = deployed.predict(input=image_dir, batch_size=args.batch, progress=False)
                best["b"] = max(best["b"], n / (time.perf_counter() - t0))
                best["cpu_b"] = min(best["cpu_b"], (time.process_time() - c0 + _cpu(replica) - r0) / n)
                assert len(preds) == n and not any(p.error for p in preds)
        finally:
            deployed.shutdown()
    print(f"{args.model}, {args.images} images 480x640, batch {args.batch}: (a) plain loop {best['a']:.2f} img/s "
          f"{best['cpu_a']:.2f} CPU s/img, (b) predict() {best['b']:.2f} img/s {best['cpu_b']:.2f} CPU s/img, "
          f"b/a {best['b'] / best['a']:.3f} (CPU a/b {best['cpu_a'] / best['cpu_b']:.3f}); load average {_load()}")


def _cpu(process) -> float:
    t = process.cpu_times()
    return t.user + t.system


if __name__ == "__main__":
    main()
