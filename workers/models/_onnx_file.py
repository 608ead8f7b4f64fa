"""Reading an ONNX file without running it: protobuf parsing, external data, custom ops, metadata and the sidecar.

What is read:
  * Ultralytics exports carry `metadata_props` (names, imgsz, task, stride, kpt_shape, end2end, args): parsed with
    `ast.literal_eval`, never `eval`.
  * Any other file needs a sidecar `<model>.onnx.json`::

        {"classes": ["cat", "dog"], "img_size": 640 | [h, w], "layout": "yolo" | "yolo_end2end" |
         "rtdetr" (Ultralytics' RT-DETR: (B, queries, 6) cx cy w h score class, normalised) | "boxes_labels_scores", "task": "detect" | "segment" | "pose" | "classify" | "obb" (yolo layouts),
         "kpt_shape": [17, 3] (pose), "normalisation": {"scale": 0.00392} | {"mean": [...], "std": [...]},
         "resize": "letterbox" | "stretch", "box_format": "xyxy" | "xyxyn" | "cxcywh" | "cxcywhn",
         "label_offset": 0 | 1}

    and is checked against the model's declared input and output shapes: a contradiction is an error naming both.

External data: replicas receive one payload of bytes, so tensors stored beside the model are read here and packed
into the model (up to protobuf's 2 GB). A location that is absolute or leaves the model's folder is refused. Custom
operator domains are refused: their libraries are never loaded.
"""

from __future__ import annotations

import ast
import json
import os
import posixpath
from typing import Any

from pipeline.exceptions import CheckpointError, ModelLoadError
from workers.models._yolo_ops import YOLO_TASKS

# The YOLO tasks an ONNX file is run for: Ultralytics bakes the argmax into a semantic model's export (a class map,
# no probabilities), so such an export has no confidences to give; its .pt has.
ONNX_YOLO_TASKS = tuple(t for t in YOLO_TASKS if t != "semantic")

__all__ = [
    "ONNX_EXTRA",
    "LAYOUTS",
    "import_onnx",
    "parse_model",
    "pack_external_data",
    "check_domains",
    "ultralytics_metadata",
    "io_shapes",
    "check_sidecar",
    "load_sidecar",
]

ONNX_EXTRA = "pip install 'cv-pipeline[onnx]' (or 'cv-pipeline[onnx-gpu]' for GPUs)"
LAYOUTS = ("yolo", "yolo_end2end", "rtdetr", "boxes_labels_scores")
# Operator domains ONNX Runtime implements itself; any other needs a custom-op library, which is never loaded.
_BUILTIN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft", "com.microsoft.nchwc"}
_MAX_PROTO = 2**31 - 1
_BOX_FORMATS = ("xyxy", "xyxyn", "cxcywh", "cxcywhn")


def import_onnx(what: str):
    try:
        import onnx
    except ImportError as exc:
        raise ModelLoadError(f"{what} needs the onnx package, which is not installed ({exc}); run {ONNX_EXTRA}") from None
    return onnx


def parse_model(data: bytes, uri: str):
    """The `ModelProto` of `data` (parsed only; external tensors not read). `CheckpointError` if it is not ONNX."""
    onnx = import_onnx(uri)
    try:
        model = onnx.load_model_from_string(data)  # bytes only: external tensors stay unread
    except Exception as exc:  # DecodeError and friends
        raise CheckpointError(f"{uri} is not an ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.input or not model.graph.output:
        raise CheckpointError(f"{uri} is not an ONNX model with a graph (no inputs or outputs)")
    return model


def check_domains(model, uri: str) -> None:
    """Refuse operators of domains that would need a custom-op library (never loaded)."""
    local = {f.domain for f in model.functions}  # model-local functions are defined in the file itself
    used = {node.domain for node in _all_nodes(model.graph)} | {imp.domain for imp in model.opset_import}
    custom = sorted(d for d in used - _BUILTIN_DOMAINS - local)
    if custom:
        raise CheckpointError(
            f"{uri} uses operators of the custom domain(s) {custom}, which need a custom-op library; such libraries "
            "are never loaded. Export the model with standard ONNX operators."
        )


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)


def _all_tensors(graph):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def pack_external_data(model, uri: str, reader) -> bool:
    """Read every external tensor into the model (so one payload carries it all); True if any was external.

    `reader(path) -> bytes` reads a file next to the model. A location that is absolute or escapes the model's
    folder (`..`, a symlink out of it) is refused before anything is read.
    """
    onnx = import_onnx(uri)
    external = [t for t in _all_tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return False
    base = posixpath.dirname(uri) if "://" in uri else os.path.dirname(os.path.abspath(os.path.expanduser(uri)))
    files: dict[str, bytes] = {}
    for tensor in external:
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        path = _safe_location(base, location, uri, tensor.name)
        if path not in files:
            files[path] = reader(path)
        offset, length = int(info.get("offset", 0) or 0), info.get("length")
        blob = files[path][offset : offset + int(length)] if length else files[path][offset:]
        tensor.raw_data = blob
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    if model.ByteSize() > _MAX_PROTO:
        raise ModelLoadError(
            f"{uri} with its external data is over 2 GB, more than one ONNX payload can carry; models this large "
            "are not supported yet"
        )
    return True


def _safe_location(base: str, location: str, uri: str, tensor: str) -> str:
    parts = location.replace("\\", "/").split("/")
    if not location or location.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts:
        raise CheckpointError(
            f"{uri}: tensor {tensor!r} keeps its data at {location!r}, outside the model's folder; refused (external "
            "data must be a relative path inside the folder of the .onnx file)"
        )
    if "://" in base:
        return posixpath.join(base, *parts)
    path = os.path.join(base, *parts)
    real_base = os.path.realpath(base)
    if os.path.commonpath([os.path.realpath(path), real_base]) != real_base:
        raise CheckpointError(f"{uri}: tensor {tensor!r}'s data file {location!r} links outside the model's folder; refused")
    return path


# ------------------------------------------------------------------------------------------------ metadata


def _literal(value: str, key: str, uri: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise CheckpointError(f"{uri}: metadata {key!r} is not a Python literal: {value[:80]!r}") from None


def ultralytics_metadata(model, uri: str) -> dict[str, Any] | None:
    """The Ultralytics export metadata of `model`, typed, or None when it has none (no `names` and `task`)."""
    props = {p.key: p.value for p in model.metadata_props}
    if "names" not in props or "task" not in props:
        return None
    meta: dict[str, Any] = dict(props)
    for key in ("names", "imgsz", "kpt_shape", "kpt_names", "args", "end2end"):
        if key in props:
            meta[key] = _literal(props[key], key, uri)
    for key in ("stride", "batch", "channels"):
        if key in props:
            meta[key] = int(_literal(props[key], key, uri))
    args = meta.get("args") if isinstance(meta.get("args"), dict) else {}
    meta["end2end"] = bool(meta.get("end2end") or args.get("nms"))  # as Ultralytics' backends read it
    meta["dynamic"] = bool(args.get("dynamic", False))
    names = meta["names"]
    if not isinstance(names, dict) or sorted(names) != list(range(len(names))):
        raise CheckpointError(f"{uri}: metadata 'names' must be a dict 0..n-1 -> name; got {props['names'][:80]!r}")
    if meta["task"] == "semantic":
        raise ModelLoadError(
            f"{uri} is an Ultralytics semantic-segmentation export: it outputs a class map without probabilities, "
            "so its objects would have no confidence. Deploy the model's .pt (or a checkpoint made from it with "
            "`pipeline convert best.pt best.pth`)"
        )
    if meta["task"] not in ONNX_YOLO_TASKS:
        raise ModelLoadError(
            f"{uri} is an Ultralytics {meta['task']!r} export; the pipeline runs {', '.join(ONNX_YOLO_TASKS)} models"
        )
    return meta


def io_shapes(model) -> tuple[list[tuple[str, list]], list[tuple[str, list]]]:
    """(name, dims) of the graph's real inputs (initializers excluded) and outputs; a dim is an int or None."""
    inits = {t.name for t in model.graph.initializer}

    def dims(v):
        return [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]

    inputs = [(v.name, dims(v)) for v in model.graph.input if v.name not in inits]
    return inputs, [(v.name, dims(v)) for v in model.graph.output]


def check_sidecar(side: Any, model, uri: str, where: str) -> dict[str, Any]:
    """A sidecar dict, validated and completed against the model's input/output shapes; `CheckpointError`."""
    if not isinstance(side, dict):
        raise CheckpointError(f"{where} must be a JSON object; got {type(side).__name__}")
    layout = side.get("layout")
    if layout not in LAYOUTS:
        raise CheckpointError(f"{where}: 'layout' must be one of {list(LAYOUTS)}; got {layout!r}")
    classes = side.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise CheckpointError(f"{where}: 'classes' must be a non-empty list of class names")
    inputs, outputs = io_shapes(model)
    if len(inputs) != 1:
        raise CheckpointError(f"{uri} has {len(inputs)} inputs; the pipeline feeds one image tensor")
    out = dict(side, classes=list(classes))
    out["task"] = side.get("task", "detect")
    if out["task"] not in ONNX_YOLO_TASKS or (layout in ("boxes_labels_scores", "rtdetr") and out["task"] != "detect"):
        raise CheckpointError(f"{where}: 'task' {out['task']!r} does not fit layout {layout!r}")
    out["img_size"] = _sidecar_img_size(side.get("img_size"), inputs[0], uri, where)
    out["normalisation"] = _normalisation(side.get("normalisation"), where)
    out["resize"] = side.get("resize", "letterbox" if layout not in ("boxes_labels_scores", "rtdetr") else "stretch")
    out["box_format"] = side.get("box_format", "xyxy")
    out["label_offset"] = side.get("label_offset", 0)
    if out["resize"] not in ("letterbox", "stretch") or out["box_format"] not in _BOX_FORMATS:
        raise CheckpointError(f"{where}: 'resize' must be letterbox|stretch and 'box_format' one of {list(_BOX_FORMATS)}")
    if not isinstance(out["label_offset"], int) or out["label_offset"] < 0:
        raise CheckpointError(f"{where}: 'label_offset' must be a non-negative integer")
    _check_outputs(out, outputs, uri, where)
    return out


def _sidecar_img_size(value: Any, inp: tuple[str, list], uri: str, where: str) -> list[int]:
    name, dims = inp
    if len(dims) not in (3, 4) or (dims[-3] not in (None, 3)):
        raise CheckpointError(f"{uri}: input {name!r} has shape {dims}; expected (N, 3, H, W) or (3, H, W)")
    fixed = dims[-2:] if all(isinstance(d, int) for d in dims[-2:]) else None
    if value is None:
        if fixed is None:
            raise CheckpointError(f"{where}: the model's input size is dynamic, so 'img_size' is required")
        return list(fixed)
    size = [value, value] if isinstance(value, int) else value
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise CheckpointError(f"{where}: 'img_size' must be a positive int or [h, w]; got {value!r}")
    if fixed is not None and list(fixed) != size:
        raise CheckpointError(f"{where}: img_size {size} contradicts the model's input {name!r} of H, W = {fixed}")
    return size


def _normalisation(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {"scale": 1 / 255}
    ok = isinstance(value, dict) and (
        (set(value) == {"scale"} and isinstance(value["scale"], int | float))
        or (set(value) <= {"mean", "std", "scale"} and all(
            isinstance(value.get(k), list) and len(value[k]) == 3 for k in ("mean", "std")))
    )
    if not ok:
        raise CheckpointError(
            f"{where}: 'normalisation' must be {{\"scale\": s}} (pixels times s) or {{\"mean\": [3], \"std\": [3]}} "
            f"(pixels / 255, minus mean, over std); got {value!r}"
        )
    return dict(value)


def _check_outputs(side: dict, outputs: list, uri: str, where: str) -> None:
    """The output shapes the layout implies, against those the model declares (unknown dims pass)."""
    nc, task, layout = len(side["classes"]), side["task"], side["layout"]
    shapes = {name: dims for name, dims in outputs}
    first_name, first = outputs[0]

    def fail(msg: str):
        raise CheckpointError(
            f"{where} contradicts {uri}: {msg}; correct the sidecar (classes, layout, task, kpt_shape) to match the model"
        )

    if layout == "boxes_labels_scores":
        if len(outputs) < 3:
            fail(f"layout boxes_labels_scores needs 3 outputs (boxes, labels, scores); the model has {len(outputs)}")
        boxes = shapes.get("boxes", first)
        if boxes and boxes[-1] not in (None, 4):
            fail(f"the boxes output has shape {boxes}; its last dimension must be 4")
        return
    if task == "classify":
        if first and first[-1] not in (None, nc):
            fail(f"{nc} classes listed, but output {first_name!r} has shape {first} ({first[-1]} classes)")
        return
    if layout == "rtdetr":
        if len(first) != 3 or first[2] not in (None, 6):
            fail(f"layout rtdetr needs output {first_name!r} of shape (B, queries, 6); got {first}")
        return
    extra = _extra_channels(side, outputs, fail)
    if layout == "yolo":
        if len(first) != 3:
            fail(f"layout yolo needs output {first_name!r} of shape (B, 4 + classes + extra, anchors); got {first}")
        if first[1] is not None and first[1] != 4 + nc + extra:
            fail(f"output {first_name!r} has {first[1]} channels; {nc} classes make 4 + {nc} + {extra} = {4 + nc + extra}")
    elif len(first) != 3 or (first[2] is not None and first[2] != 6 + extra):
        fail(f"layout yolo_end2end needs output {first_name!r} of shape (B, max_det, 6 + {extra}); got {first}")


def _extra_channels(side: dict, outputs: list, fail) -> int:
    if side["task"] == "segment":
        if len(outputs) < 2 or len(outputs[1][1]) != 4:
            fail("a segment model needs a second output of mask prototypes (B, masks, h, w)")
        return outputs[1][1][1] or 32
    if side["task"] == "pose":
        kpt = side.get("kpt_shape")
        if not (isinstance(kpt, list) and len(kpt) == 2 and kpt[1] in (2, 3) and isinstance(kpt[0], int)):
            fail("a pose model needs 'kpt_shape': [keypoints, 2 or 3] in the sidecar")
        return kpt[0] * kpt[1]
    if side["task"] == "obb":
        return 1  # the angle
    return 0


def load_sidecar(uri: str, reader) -> tuple[dict[str, Any] | None, str]:
    """The sidecar `<uri>.json` as a dict (None when there is none) and its path."""
    from pipeline.exceptions import NotFoundError

    path = f"{uri}.json"
    try:
        raw = reader(path)
    except (NotFoundError, FileNotFoundError):
        return None, path
    try:
        return json.loads(raw), path
    except ValueError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
