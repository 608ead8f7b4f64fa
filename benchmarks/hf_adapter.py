"""The `transformers` adapter against the plain model loop through the image processor, same process, same images.

    PYTHONPATH=. .venv/bin/python benchmarks/hf_adapter.py [--images 16] [--threads N] [--device cpu]

Models are random-weight configs at the published models' sizes, built offline (no download): RT-DETR R50-vd
(`RTDetrConfig()`, 640x640), Conditional DETR R50 (a native ResNet-50 backbone, shortest edge 800 / longest 1333)
and SegFormer-B0 (`SegformerConfig()`, 512x512). Images are 480x640 RGB noise (speed does not depend on content).

    plain b1    for each image: processor(images=[img]) -> model(**inputs) -> post_process_*(target_sizes=[(h, w)])
    adapter b1  adapter.run([img]) per image (what the plain loop does, plus packing into ModelOutput)
    plain b8    the plain loop on 8 same-size images per call
    adapter b8  adapter.run(8 images): one batch of 8 same-size images through the processor and the model

Reports, per variant, the best images/s and the lowest CPU seconds per image (all threads of this process) of
`--rounds` interleaved rounds, after a warm-up. Wall figures move with other jobs on the machine; CPU seconds
barely do. Compare the columns of one run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _models(wanted: list[str]):
    import transformers as T

    labels = {"id2label": {i: f"c{i}" for i in range(80)}}
    r50 = T.ResNetConfig(out_features=["stage2", "stage3", "stage4"])
    builders = {
        "rt_detr_r50vd": lambda: (T.RTDetrForObjectDetection(T.RTDetrConfig(**labels)), T.RTDetrImageProcessor()),
        "conditional_detr_r50": lambda: (
            T.ConditionalDetrForObjectDetection(T.ConditionalDetrConfig(backbone_config=r50, use_timm_backbone=False,
                                                                        **labels)),
            T.ConditionalDetrImageProcessor()),
        "segformer_b0": lambda: (
            T.SegformerForSemanticSegmentation(T.SegformerConfig(id2label={i: f"c{i}" for i in range(150)})),
            T.SegformerImageProcessor()),
    }
    return {name: builders[name]() for name in wanted}


def _plain(model, processor, images, conf, device, batch: int = 1):
    """The model through its own processor and post-processing, `batch` same-size images per call."""
    import torch

    with torch.inference_mode():
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            inputs = processor(images=chunk, return_tensors="pt").to(device)
            out = model(**inputs)
            sizes = [img.shape[:2] for img in chunk]
            if hasattr(out, "pred_boxes"):
                processor.post_process_object_detection(out, threshold=conf, target_sizes=sizes)
            else:
                processor.post_process_semantic_segmentation(out, target_sizes=sizes)


def _timed(variants: dict, n: int, rounds: int) -> dict:
    """Best-of-`rounds` images/s and CPU seconds per image of each variant, the variants interleaved so that
    other jobs on the machine slow them alike."""
    for fn in variants.values():
        fn()  # warm-up
    best = {k: (0.0, float("inf")) for k in variants}
    for _ in range(rounds):
        for k, fn in variants.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            best[k] = (max(best[k][0], n / wall), min(best[k][1], cpu / n))
    return best


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="rt_detr_r50vd,segformer_b0",
                    help="comma-separated, of: rt_detr_r50vd, conditional_detr_r50, segformer_b0")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(args.images)]
    print(f"{args.images} images 480x640, {torch.get_num_threads()} threads, {args.device}; images/s / CPU s per "
          f"image, best of {args.rounds}")
    print(f"{'model':<22} {'plain b1':>16} {'adapter b1':>16} {'plain b8':>16} {'adapter b8':>16}")
    wanted = args.models.split(",")
    for name, (model, processor) in _models(wanted).items():
        print(_row(name, model, processor, images, args.device, args.rounds), flush=True)


def _row(name, model, processor, images, device, rounds) -> str:
    import torch

    from workers.models.hf import TransformersAdapter

    conf, n = 0.25, len(images)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        processor.save_pretrained(d)
        spec, payload = TransformersAdapter.from_directory(d)
    adapter = TransformersAdapter(spec, device)
    adapter.load_payload(payload)
    model = model.eval().to(device)
    settings = {"conf": conf}
    best = _timed({
        "plain": lambda: _plain(model, processor, images, conf, device),
        "plain8": lambda: _plain(model, processor, images, conf, device, batch=8),
        "b1": lambda: [adapter.run([img], [img.shape[:2]], settings) for img in images],
        "b8": lambda: [adapter.run(images[i:i + 8], [im.shape[:2] for im in images[i:i + 8]], settings)
                       for i in range(0, n, 8)],
    }, n, rounds)
    return f"{name:<22} " + " ".join(f"{best[k][0]:>8.2f} / {best[k][1]:>5.2f}s" for k in ("plain", "b1", "plain8", "b8"))

if __name__ == "__main__":
    main()
