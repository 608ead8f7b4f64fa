"""`pipeline convert`: a framework's file -> what the pipeline deploys without that framework's loader.

    convert_ultralytics("best.pt", "best.pth")
        an Ultralytics checkpoint -> a self-describing pipeline checkpoint (`workers.models.checkpoint`): the state
        dict plus, in `arch_kwargs`, the model YAML, task, imgsz, stride and keypoint shape. It loads with
        `torch.load(weights_only=True)` and no Ultralytics class is unpickled; the replica rebuilds the model from
        the YAML (Ultralytics' restricted mode) and the state dict.
    convert_onnx("model.onnx", classes=[...], layout="boxes_labels_scores", img_size=640)
        writes the sidecar `model.onnx.json` an ONNX file without Ultralytics metadata needs, after checking it
        against the model's declared inputs and outputs.
"""

from __future__ import annotations

import os
from typing import Any

from pipeline.exceptions import InvalidArgumentError
from workers.models.checkpoint import read_bytes, save_checkpoint

__all__ = ["cli_convert_onnx", "cli_convert_ultralytics", "convert", "convert_onnx", "convert_ultralytics"]


# The Ultralytics model classes a converted checkpoint rebuilds from their YAML and weights alone (not YOLO-World /
# YOLOE, whose text embeddings are attributes of the model object, not in its state dict).
_REBUILDABLE = ("DetectionModel", "SegmentationModel", "PoseModel", "ClassificationModel", "OBBModel",
                "SemanticSegmentationModel", "RTDETRDetectionModel", "YOLOv10DetectionModel")


def convert_ultralytics(src: str | os.PathLike, out: str | os.PathLike, *, half: bool = True) -> dict[str, Any]:
    """Write the Ultralytics `.pt` at `src` as a pipeline checkpoint at `out`; returns its description.

    Args:
        half: store floating-point weights as float16 (Ultralytics saves them so: nothing is lost).
    Returns:
        {"path", "sha256", "framework", "architecture", "task_type", "classes", "img_size"}.
    """
    from workers.models.ultralytics import read_ultralytics

    src = os.fspath(src)
    spec, model = read_ultralytics(read_bytes(src), src)
    kind = type(model).__name__
    if kind not in _REBUILDABLE:
        raise InvalidArgumentError(
            f"{src} is an Ultralytics {kind}, which a converted checkpoint cannot rebuild (its class embeddings are "
            "no weights: they live on the model object); deploy the .pt itself"
        )
    if not spec.arch_kwargs.get("yaml"):
        raise InvalidArgumentError(
            f"{src} holds no model YAML, which the converted checkpoint needs to rebuild the model; deploy the .pt "
            "itself instead"
        )
    sha = save_checkpoint(
        model.state_dict(),
        out,
        framework="ultralytics",
        architecture=spec.architecture,
        task_type=spec.task_type,
        classes=spec.classes,
        img_size=spec.img_size,
        arch_kwargs=spec.arch_kwargs,
        half=half,
    )
    return {
        "path": os.fspath(out),
        "sha256": sha,
        "framework": "ultralytics",
        "architecture": spec.architecture,
        "task_type": spec.task_type,
        "classes": list(spec.classes),
        "img_size": spec.img_size,
    }


def convert_onnx(src: str | os.PathLike, out: str | os.PathLike | None = None, **sidecar: Any) -> dict[str, Any]:
    """Write the sidecar of the ONNX model at `src` (default `<src>.json`); see `workers.models.onnx.write_sidecar`."""
    from workers.models.onnx import write_sidecar

    return write_sidecar(os.fspath(src), None if out is None else os.fspath(out), **sidecar)


def convert(src: str | os.PathLike, out: str | os.PathLike | None = None, **options: Any) -> dict[str, Any]:
    """Dispatch on the source: `.onnx` -> `convert_onnx`, anything else -> `convert_ultralytics` (`out` needed)."""
    src = os.fspath(src)
    if src.lower().endswith(".onnx"):
        return convert_onnx(src, out, **options)
    if out is None:
        raise InvalidArgumentError("converting a .pt needs an output path, e.g. pipeline convert best.pt best.pth")
    return convert_ultralytics(src, out, **options)


# `pipeline convert SRC [OUT] [--classes ...]` (pipeline/app/convert_cli.py, CONVERTERS): the path written.


def cli_convert_ultralytics(src: str, out: str | None = None, **options: Any) -> str:
    """`pipeline convert best.pt best.pth`: the `.pt` as our checkpoint; the ONNX options do not apply."""
    if options:
        raise InvalidArgumentError(
            f"{src} is an Ultralytics model: its classes, task and input size are read from it; "
            f"--{'/--'.join(k.replace('_', '-') for k in sorted(options))} apply to ONNX files only"
        )
    if out is None:
        raise InvalidArgumentError(f"converting {src} needs an output path, e.g. pipeline convert {src} "
                                   f"{os.path.splitext(src)[0]}.pth")
    return convert_ultralytics(src, out)["path"]


def cli_convert_onnx(src: str, out: str | None = None, **options: Any) -> str:
    """`pipeline convert model.onnx --classes a,b --layout ...`: the sidecar `<model>.onnx.json` (or OUT)."""
    return convert_onnx(src, out, **options)["path"]
