"""Accuracy and CPU speed of the demo model `checkpoints/shapes.pth`.

    .venv/bin/python benchmarks/demo_model.py [--checkpoint checkpoints/shapes.pth] [--images 200] [--threads N]

Loads the checkpoint with `workers.models.checkpoint.load_checkpoint`, rebuilds the model with
`SMALL_ARCHITECTURES[architecture](num_classes=len(classes) + 1, **arch_kwargs)` (strict `load_state_dict`), and
reports on a held-out generated set (seed `HELDOUT_SEED`, never used in training):

* box mAP@0.5 and mask mAP@0.5 (benchmarks/_metrics.py: per class, greedy matching by score, all-point AP);
* CPU images/s at batch 1 and batch 8 under `torch.inference_mode()`, after a warm-up, and the CPU time per image
  (all threads of this process), which other jobs sharing the cores barely change.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._metrics import mean_average_precision  # noqa: E402

TRAIN_SEED = 0  # scripts/train_shapes.py default: the training stream
VAL_SEED = 1000  # scripts/train_shapes.py evaluates on this set at the end of training
HELDOUT_SEED = 1001  # this benchmark's set
TEST_SEED = 1002  # tests/workers/test_shapes.py
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "shapes.pth"


def load_model(path: str | os.PathLike = DEFAULT_CHECKPOINT):
    """(model in eval mode, Checkpoint) from a checkpoint written by scripts/train_shapes.py."""
    from workers.models._small_archs import SMALL_ARCHITECTURES
    from workers.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    model = SMALL_ARCHITECTURES[ckpt.architecture](num_classes=len(ckpt.classes) + 1, **ckpt.arch_kwargs)
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model.eval(), ckpt


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


@torch.inference_mode()
def predict(model, images: list[np.ndarray], batch_size: int = 8, device: str = "cpu") -> list[dict]:
    """Run `model` on uint8 HWC images; per image a dict of numpy arrays: boxes (N, 4) xyxy px, scores (N,),
    labels (N,) 0-based class index (model label - 1), masks (N, H, W) bool (probability > 0.5)."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        batch = [to_tensor(im).to(device) for im in images[i : i + batch_size]]
        for det in model(batch):
            masks = det.get("masks")
            out.append(
                {
                    "boxes": det["boxes"].cpu().numpy(),
                    "scores": det["scores"].cpu().numpy(),
                    "labels": det["labels"].cpu().numpy() - 1,
                    "masks": (masks[:, 0] > 0.5).cpu().numpy() if masks is not None else None,
                }
            )
    return out


def evaluate(model, samples, batch_size: int = 8, device: str = "cpu", iou_threshold: float = 0.5) -> dict:
    """Box and mask mAP@`iou_threshold` of `model` on `ShapesSample`s: {"box_map", "mask_map", "box_ap", "mask_ap"}."""
    preds = predict(model, [s.image for s in samples], batch_size, device)
    gts = [{"boxes": s.boxes, "labels": s.class_ids, "masks": s.masks} for s in samples]
    box = mean_average_precision(preds, gts, iou_threshold, "box")
    result = {"box_map": box["map"], "box_ap": box["per_class"], "mask_map": float("nan"), "mask_ap": {}}
    if all(p["masks"] is not None for p in preds):
        mask = mean_average_precision(preds, gts, iou_threshold, "mask")
        result.update(mask_map=mask["map"], mask_ap=mask["per_class"])
    return result


@torch.inference_mode()
def images_per_second(
    model, images: list[np.ndarray], batch_size: int, warmup: int = 3, seconds: float = 5.0
) -> tuple[float, float]:
    """CPU throughput: whole batches of `batch_size` images (cycled from `images`), after `warmup` batches.

    Returns (images per wall-clock second, CPU milliseconds per image summed over this process's threads). The
    second figure is barely affected by other processes on the cores; the first is.
    """
    model.eval()
    tensors = [to_tensor(im) for im in images]
    batches = [
        [tensors[(i * batch_size + j) % len(tensors)] for j in range(batch_size)] for i in range(max(1, len(tensors)))
    ]
    for b in batches[:warmup]:
        model(b)
    n_images, start, cpu_start, i = 0, time.perf_counter(), time.process_time(), 0
    while True:
        model(batches[i % len(batches)])
        n_images += batch_size
        i += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and i >= 3:
            return n_images / elapsed, 1000 * (time.process_time() - cpu_start) / n_images


def main(argv: list[str] | None = None) -> int:
    from pipeline.app.shapes import CLASSES, generate_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--images", type=int, default=200, help="held-out images for the mAP (0: timing only)")
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED, help="held-out set seed")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing length per batch size")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, ckpt = load_model(args.checkpoint)
    size_mb = os.path.getsize(args.checkpoint) / 1e6
    n_params = sum(p.numel() for p in model.parameters())
    samples = list(generate_dataset(args.images, seed=args.seed))
    n_objects = sum(len(s) for s in samples)
    t0 = time.perf_counter()
    nan = float("nan")
    res = evaluate(model, samples) if samples else {"box_map": nan, "mask_map": nan, "box_ap": {}, "mask_ap": {}}
    eval_s = time.perf_counter() - t0
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else nan
    timing_images = [s.image for s in generate_dataset(32, seed=args.seed)]
    speed = {bs: images_per_second(model, timing_images, bs, seconds=args.seconds) for bs in (1, 8)}

    names = ckpt.classes if ckpt.classes else CLASSES
    print(f"checkpoint   {args.checkpoint}  ({size_mb:.2f} MB, sha256 {ckpt.sha256[:12]})")
    print(f"architecture {ckpt.architecture}  ({n_params / 1e6:.2f} M parameters), img_size {ckpt.img_size}")
    print(f"held-out set seed {args.seed}: {len(samples)} images 256x256, {n_objects} objects (eval {eval_s:.1f} s)")
    print(f"machine      {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads; 1-min load average {load_before:.2f} before timing "
          "(other processes on the cores slow the timings)")
    print()
    print(f"| {'metric':<26} | {'value':>8} |")
    print(f"| {'-' * 26} | {'-' * 8}:|")
    print(f"| {'box mAP@0.5':<26} | {res['box_map']:>8.3f} |")
    print(f"| {'mask mAP@0.5':<26} | {res['mask_map']:>8.3f} |")
    for c, name in enumerate(names):
        if c in res["box_ap"]:
            print(f"| {'box AP@0.5 ' + name:<26} | {res['box_ap'][c]:>8.3f} |")
    for c, name in enumerate(names):
        if c in res["mask_ap"]:
            print(f"| {'mask AP@0.5 ' + name:<26} | {res['mask_ap'][c]:>8.3f} |")
    for bs, (ips, _) in speed.items():
        print(f"| {f'CPU images/s, batch {bs}':<26} | {ips:>8.1f} |")
    for bs, (ips, _) in speed.items():
        print(f"| {f'wall ms/image, batch {bs}':<26} | {1000 / ips:>8.1f} |")
    for bs, (_, cpu_ms) in speed.items():
        print(f"| {f'CPU-time ms/image, batch {bs}':<26} | {cpu_ms:>8.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
