"""Train the demo instance-segmentation model on the generated shapes set and write `checkpoints/shapes.pth`.

    nice -n 10 .venv/bin/python scripts/train_shapes.py --iterations 1800 --stop-after 900 --out checkpoints/shapes.pth

is the command that made the committed checkpoint: 900 iterations of an 1800-iteration schedule (0.65-0.9 s per
iteration on 2 otherwise idle CPU cores, i.e. 10-14 min; it took 28 min here while other jobs shared the cores). The
validation set reaches box mAP@0.5 ~0.95 after 600 iterations and ~0.97 after 900; the run was cut at 900 to save
CPU time, which `--stop-after` reproduces.

Training images are generated on the fly (item i of the set `--seed`, in order, so a run is reproducible; a
DataLoader worker generates the next batches while the model trains). The model is
`SMALL_ARCHITECTURES[--arch]` with its default `arch_kwargs` (overridable with `--arch-kwargs '{...}'` as JSON);
the checkpoint stores the complete kwargs, so the loader rebuilds exactly this model. Optimiser: AdamW with linear
warm-up and cosine decay, gradient-norm clipping. At the end the checkpoint is written (float16 weights), read back
with `load_checkpoint` and evaluated on a validation set (seed `VAL_SEED`, disjoint from the training stream and from
the benchmark's held-out set).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset, get_worker_info  # noqa: E402

from benchmarks.demo_model import VAL_SEED, evaluate, load_model  # noqa: E402
from pipeline.app.shapes import CLASSES, generate_dataset, get_sample  # noqa: E402
from workers.models._small_archs import SMALL_ARCHITECTURES, TINY_FPN_DEFAULTS  # noqa: E402
from workers.models.checkpoint import save_checkpoint  # noqa: E402

DEFAULT_ARCH = "maskrcnn_tiny_fpn"
ARCH_DEFAULTS = {"maskrcnn_tiny_fpn": TINY_FPN_DEFAULTS}


def sample_to_target(sample) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A `ShapesSample` -> (CHW float image in [0, 1], torchvision Mask R-CNN target; labels = class id + 1)."""
    image = torch.from_numpy(sample.image).permute(2, 0, 1).float().div_(255.0)
    target = {
        "boxes": torch.from_numpy(sample.boxes).float().reshape(-1, 4),
        "labels": torch.from_numpy(sample.class_ids + 1).long(),
        "masks": torch.from_numpy(sample.masks.astype(np.uint8)),
    }
    return image, target


class ShapesStream(IterableDataset):
    """Items `start, start + 1, ...` of the generated set `seed`, in order (one worker at most keeps the order)."""

    def __init__(self, seed: int, start: int, count: int, size: int):
        self.seed, self.start, self.count, self.size = seed, start, count, size

    def __iter__(self):
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            raise RuntimeError("ShapesStream keeps its order with at most one worker")
        for i in range(self.start, self.start + self.count):
            yield sample_to_target(get_sample(self.seed, i, height=self.size, width=self.size))


def _collate(batch):
    return tuple(zip(*batch))


def lr_at(it: int, base_lr: float, warmup: int, total: int) -> float:
    if it < warmup:
        return base_lr * (0.01 + 0.99 * it / warmup)
    progress = (it - warmup) / max(1, total - warmup)
    return base_lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=1800, help="length of the warm-up + cosine LR schedule")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many iterations of the schedule (default: all) and write the checkpoint")
    p.add_argument("--out", default=str(ROOT / "checkpoints" / "shapes.pth"))
    p.add_argument("--seed", type=int, default=0, help="training stream seed (and torch init seed)")
    p.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=256, help="square training images; sets min_size/max_size")
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--clip", type=float, default=10.0, help="gradient-norm clip")
    p.add_argument("--arch", default=DEFAULT_ARCH, choices=sorted(SMALL_ARCHITECTURES))
    p.add_argument("--arch-kwargs", default="{}", help="JSON overrides of the architecture's defaults")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--save-every", type=int, default=300, help="also write the checkpoint every N iterations")
    p.add_argument("--val-images", type=int, default=100)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers generating images (0 or 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = p.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    arch_kwargs = {**ARCH_DEFAULTS.get(args.arch, {}), **json.loads(args.arch_kwargs)}
    arch_kwargs.update(min_size=args.img_size, max_size=args.img_size)
    arch_kwargs = json.loads(json.dumps(arch_kwargs))  # JSON-plain, exactly what the checkpoint stores
    model = SMALL_ARCHITECTURES[args.arch](num_classes=len(CLASSES) + 1, **arch_kwargs).to(device)
    n_params = sum(q.numel() for q in model.parameters())
    print(f"{args.arch}: {n_params / 1e6:.2f} M parameters on {device}, {torch.get_num_threads()} torch threads",
          flush=True)
    print(f"arch_kwargs {json.dumps(arch_kwargs)}", flush=True)

    decay, no_decay = [], []
    for q in model.parameters():
        (no_decay if q.ndim <= 1 else decay).append(q)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
    )
    stop = min(args.stop_after or args.iterations, args.iterations)
    stream = ShapesStream(args.seed, 0, stop * args.batch_size, args.img_size)
    loader = DataLoader(stream, batch_size=args.batch_size, collate_fn=_collate, num_workers=min(args.workers, 1),
                        prefetch_factor=4 if args.workers else None, persistent_workers=False)

    def save(path: str) -> None:
        save_checkpoint(model, path, framework="torchvision", architecture=args.arch,
                        task_type="instance_segmentation", classes=CLASSES, img_size=args.img_size,
                        arch_kwargs=arch_kwargs, half=True)

    model.train()
    start = last = time.perf_counter()
    window: dict[str, list[float]] = {}
    for it, (images, targets) in enumerate(loader):
        lr = lr_at(it, args.lr, args.warmup, args.iterations)
        for g in opt.param_groups:
            g["lr"] = lr
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise RuntimeError(f"iteration {it}: loss is {loss.item()} ({ {k: v.item() for k, v in losses.items()} })")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        for k, v in losses.items():
            window.setdefault(k, []).append(v.item())
        window.setdefault("loss", []).append(loss.item())
        window.setdefault("gnorm", []).append(gnorm.item())
        done = it + 1
        if done % args.log_every == 0 or done == stop:
            now = time.perf_counter()
            per_it = (now - last) / len(window["loss"])
            eta = (stop - done) * per_it
            parts = " ".join(f"{k.removeprefix('loss_')}={np.mean(v):.3f}" for k, v in window.items())
            print(f"it {done:5d}/{args.iterations} lr={lr:.2e} {parts} | {per_it:.2f} s/it, "
                  f"elapsed {(now - start) / 60:.1f} min, eta {eta / 60:.1f} min", flush=True)
            window, last = {}, now
        if args.save_every and done % args.save_every == 0 and done < stop:
            save(args.out)
            model.train()
    train_s = time.perf_counter() - start
    save(args.out)
    print(f"trained {stop} iterations (of a {args.iterations}-iteration schedule) in {train_s / 60:.1f} min; "
          f"wrote {args.out}", flush=True)

    # read the float16 checkpoint back exactly as the pipeline does, and evaluate it
    reloaded, ckpt = load_model(args.out)
    samples = list(generate_dataset(args.val_images, seed=VAL_SEED, height=args.img_size, width=args.img_size))
    res = evaluate(reloaded, samples)
    print(f"validation (seed {VAL_SEED}, {len(samples)} images): box mAP@0.5 {res['box_map']:.3f} "
          f"{ {CLASSES[c]: round(a, 3) for c, a in res['box_ap'].items()} }, mask mAP@0.5 {res['mask_map']:.3f} "
          f"{ {CLASSES[c]: round(a, 3) for c, a in res['mask_ap'].items()} }", flush=True)
    print(f"checkpoint sha256 {ckpt.sha256}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
