"""`pipeline demo`: the main job end to end on the embedded platform, on a laptop with no set-up.

1. generate a shapes project (circles, squares, triangles with masks), half of its objects "already annotated",
   as a Supervisely project folder, and import it into the platform;
2. deploy the demo checkpoint (checkpoints/shapes.pth);
3. relabel the project with `iou_merge` through configs/demo.yaml, the same path as `pipeline run`;
4. print a summary (items, objects per class, mean confidence, images/s), write a few `Prediction.draw()`
   pictures and export the relabeled project to the output folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["build_shapes_project", "main"]

ROOT = Path(__file__).resolve().parents[2]  # the repository: configs/ and checkpoints/ live here
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
DEMO_CHECKPOINT = ROOT / "checkpoints" / "shapes.pth"
DEFAULT_OUT = "demo_output"
DEFAULT_IMAGES = 24
PICTURES = 4
SEED = 2026


def build_shapes_project(folder: Path, n: int, seed: int = SEED, annotated_fraction: float = 0.5) -> dict[str, int]:
    """Write a Supervisely project folder `folder` of `n` shapes images in datasets "train" and "train/hard";
    about `annotated_fraction` of the objects carry their (true) mask as an annotation. Returns counts."""
    from PIL import Image

    from pipeline.annotation import Annotation, Bitmap, Label, ObjClass, ProjectMeta
    from pipeline.app.shapes import CLASSES, generate_sample

    rng = np.random.default_rng(seed)
    classes = {name: ObjClass(name, "bitmap") for name in CLASSES}
    (folder).mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps(ProjectMeta(obj_classes=tuple(classes.values())).to_json()))
    counts = Counter()
    for i in range(n):
        ds = folder / "train" if i < n * 2 // 3 else folder / "train" / "datasets" / "hard"
        (ds / "img").mkdir(parents=True, exist_ok=True)
        (ds / "ann").mkdir(parents=True, exist_ok=True)
        sample = generate_sample(rng, max_objects=4 if i < n * 2 // 3 else 6)
        name = f"shapes_{i:04d}.png"
        Image.fromarray(sample.image).save(ds / "img" / name)
        labels = []
        for mask, cls in zip(sample.masks, sample.class_names):
            counts["objects"] += 1
            if rng.random() < annotated_fraction:
                labels.append(Label(Bitmap.from_mask(mask), classes[cls]))
                counts["annotated"] += 1
        ann = Annotation(sample.image.shape[:2], tuple(labels))
        (ds / "ann" / f"{name}.json").write_text(json.dumps(ann.to_json()))
        counts["images"] += 1
    return dict(counts)


def _table(rows: list[list[str]], out) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        out.write("  " + "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))) + "\n")
        if k == 0:
            out.write("  " + "  ".join("-" * w for w in widths) + "\n")


def main(args: argparse.Namespace | None = None) -> int:
    from pipeline import Api
    from pipeline.app.serve_cli import serve_hint

    out = sys.stdout
    n_images, out_dir = _check_args(args)
    t_start = time.time()
    api = Api(getattr(args, "data_dir", None))
    out.write(f"pipeline demo: platform data dir {api.data_dir}\n")
    project_id, counts = _make_project(api, n_images, out_dir, out)
    before = {info.id: len(api.annotation.get(info.id).labels) for info in api.image.iterate(project_id=project_id)}
    summary, preds_kept = _relabel(api, project_id, out)
    if summary.error is not None:
        out.write(f"demo failed: {summary.error}\n")
        return 1
    _report(api, project_id, before, summary, out)
    _write_outputs(api, project_id, preds_kept, out_dir, out)
    data_dir = getattr(args, "data_dir", None)
    dd = f"--data-dir {data_dir} " if data_dir else ""
    out.write(f"wrote the {counts['images']} generated images to {out_dir / 'images'}\n")
    out.write(f"demo finished in {time.time() - t_start:.1f}s. Next: `pipeline {dd}platform ls {project_id}`, "
              f"`pipeline {dd}run configs/demo.yaml --set input.project_id={project_id}`\n")
    out.write(f"see the relabeled project in the web viewer: {serve_hint(data_dir, f'/projects/{project_id}')}\n")
    return 0


def _check_args(args: argparse.Namespace | None) -> tuple[int, Path]:
    """(images, output folder), checked before anything is made: `InvalidArgumentError` (exit code 2)."""
    from pipeline.exceptions import InvalidArgumentError
    from pipeline.stages.upload.location import Location

    n_images = getattr(args, "images", None)
    n_images = DEFAULT_IMAGES if n_images is None else n_images
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise InvalidArgumentError(f"--images must be a whole number of images, at least 1; got {n_images!r}")
    out_dir = Path(getattr(args, "out", None) or DEFAULT_OUT).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidArgumentError(f"--out {out_dir} is a file; the demo writes a folder of pictures there")
    Location(str(out_dir), "--out").check_writable()
    return n_images, out_dir


def _make_project(api: Any, n_images: int, out_dir: Path, out: Any) -> tuple[int, dict[str, int]]:
    """1. A generated project, imported like any Supervisely project folder; the raw images are copied to
    `out_dir/images` too (configs/predict_directory.yaml reads them)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "shapes"
        counts = build_shapes_project(folder, n_images)
        project_id = api.project.import_dir(folder)
        shutil.rmtree(out_dir / "images", ignore_errors=True)
        (out_dir / "images").mkdir(parents=True)
        for img in sorted(folder.rglob("img/*.png")):
            shutil.copy(img, out_dir / "images" / img.name)
    project = api.project.get(project_id)
    out.write(f"created project {project.id} ({project.name!r}): {counts['images']} images, {counts['objects']} "
              f"objects of which {counts['annotated']} already annotated\n")
    return project_id, counts


def _relabel(api: Any, project_id: int, out: Any) -> tuple[Any, list[Any]]:
    """2-3. The demo config: deploy, relabel with iou_merge, collect. Returns the run's summary and the first
    predictions with objects (the pictures)."""
    from pipeline.app.config import load_config
    from pipeline.app.runner import _Progress, attach, collect, deploy_from_config, start_from_config

    checkpoint = os.environ.get("DEMO_CHECKPOINT") or str(DEMO_CHECKPOINT)
    cfg = load_config(DEMO_CONFIG, [f"input.project_id={project_id}", f"model.checkpoint={checkpoint}"])
    attach(None)
    model, deployed = deploy_from_config(api, cfg, out=out)
    preds_kept: list[Any] = []
    try:
        session = start_from_config(model, cfg)
        progress = _Progress(sys.stderr)

        def keep_some(pred: Any) -> None:
            if len(preds_kept) < PICTURES and pred.error is None and len(pred):
                preds_kept.append(pred)

        try:
            summary = collect(session, progress, on_prediction=keep_some)
        finally:
            progress.close()
    finally:
        if deployed:
            model.shutdown()
    return summary, preds_kept


def _report(api: Any, project_id: int, before: dict[int, int], summary: Any, out: Any) -> None:
    """4. What the relabeling did, per class: predicted, dropped as duplicates by iou_merge, added, confidence."""
    status = summary.status
    scores: dict[str, list[float]] = defaultdict(list)
    added = Counter()
    for info in api.image.iterate(project_id=project_id):
        ann = api.annotation.get(info.id)
        for lab in ann.labels[before[info.id]:]:
            added[lab.obj_class.name] += 1
            if lab.confidence is not None:
                scores[lab.obj_class.name].append(lab.confidence)
    elapsed = status.get("elapsed_s") or 0.0
    out.write(f"\nrelabeled {summary.items} images in {elapsed:.1f}s ({summary.items / max(elapsed, 1e-9):.2f} "
              f"images/s), {summary.failed} failed; job {status['context'].get('job_id')}\n")
    rows = [["class", "predicted", "duplicates dropped", "added", "mean confidence"]]
    for name in sorted(set(summary.objects) | set(added)):
        predicted = summary.objects[name]
        conf = f"{np.mean(scores[name]):.3f}" if scores[name] else "-"
        rows.append([name, str(predicted), str(predicted - added[name]), str(added[name]), conf])
    total_pred, total_added = sum(summary.objects.values()), sum(added.values())
    rows.append(["all", str(total_pred), str(total_pred - total_added), str(total_added), "-"])
    _table(rows, out)


def _write_outputs(api: Any, project_id: int, preds_kept: list[Any], out_dir: Path, out: Any) -> None:
    """The pictures of the first predictions, and the relabeled project exported as a Supervisely folder."""
    from PIL import Image

    for sub in ("pictures", "project"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    (out_dir / "pictures").mkdir(parents=True, exist_ok=True)
    for p in preds_kept:
        Image.fromarray(p.draw()).save(out_dir / "pictures" / f"{Path(p.name).stem}_predicted.png")
    api.project.export_dir(project_id, out_dir / "project")
    out.write(f"\nwrote {len(preds_kept)} pictures to {out_dir / 'pictures'}\n")
    out.write(f"exported the relabeled project to {out_dir / 'project'}\n")
