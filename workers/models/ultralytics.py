"""The `ultralytics` adapter: YOLO detect, segment, pose, classify, obb (oriented boxes) and semantic models, and
RT-DETR, deployed from their own `.pt` file.

Everything is read from the file: the task, the class names, the input size (`train_args["imgsz"]`) and the model's
YAML. The file is never unpickled with `weights_only=False` (see `_ultralytics_load`). Pre- and post-processing are
Ultralytics' own functions (`_yolo_ops`): an image's result equals `YOLO(path).predict(image)` on it.

Settings (`default_settings`):
    conf, iou (None: 0.7), max_det (300), agnostic (class-agnostic NMS), classes (indices or names to keep),
    img_size (None: the file's imgsz; an int: Ultralytics' `imgsz`, the letterbox square; (h, w): the image was
    resized to exactly h x w while decoding and is letterboxed to (h, w) rounded up to the stride, as Ultralytics'
    `imgsz=(h, w)` would), half (fp16, on a GPU only),
    end2end (None: the model's default head; True: the NMS-free one-to-one head of YOLOv10/YOLO26 models, i.e.
    Ultralytics' `nms=False`; False: the one-to-many head and NMS), retina_masks (masks built at the image size).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pipeline.exceptions import CheckpointError, InvalidArgumentError, ModelLoadError
from workers.messages import ModelOutput
from workers.models import _yolo_ops as ops
from workers.models._ultralytics_load import (
    check_yaml,
    import_ultralytics,
    restricted_build,
    safe_load_ultralytics,
)
from workers.models.base import ModelAdapter, ModelSpec, register_adapter

__all__ = ["UltralyticsAdapter", "import_ultralytics", "read_ultralytics", "resolve_weights", "weights_search_dirs"]

# The user's own Ultralytics settings dir, remembered before `prepare_environment` (run when Ultralytics is first
# imported through `import_ultralytics`) points YOLO_CONFIG_DIR at a private one.
_USER_YOLO_CONFIG_DIR = os.environ.get("YOLO_CONFIG_DIR")

_MODEL_CLASSES = {
    "detect": "DetectionModel",
    "segment": "SegmentationModel",
    "pose": "PoseModel",
    "classify": "ClassificationModel",
    "obb": "OBBModel",
    "semantic": "SemanticSegmentationModel",
}


# ------------------------------------------------------------------------------------------ name resolution


def weights_search_dirs(extra: list[str] | None = None) -> list[str]:
    """Where `resolve_weights` looks for a bare file name: `extra`, `$PIPELINE_WEIGHTS_DIR` (a path list), and the
    `weights_dir` of the user's Ultralytics settings (read, never written)."""
    dirs = list(extra or [])
    dirs += [d for d in os.environ.get("PIPELINE_WEIGHTS_DIR", "").split(os.pathsep) if d]
    if _USER_YOLO_CONFIG_DIR:
        cfg = Path(_USER_YOLO_CONFIG_DIR).expanduser() / "Ultralytics"
    elif platform.system() == "Windows":
        cfg = Path.home() / "AppData" / "Roaming" / "Ultralytics"
    elif platform.system() == "Darwin":
        cfg = Path.home() / "Library" / "Application Support" / "Ultralytics"
    else:
        cfg = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "Ultralytics"
    try:
        weights_dir = json.loads((cfg / "settings.json").read_text()).get("weights_dir")
    except (OSError, ValueError, AttributeError):
        weights_dir = None
    if isinstance(weights_dir, str) and weights_dir:
        dirs.append(weights_dir)
    return dirs


def resolve_weights(name: str, search_dirs: list[str] | None = None) -> str:
    """The local path of an Ultralytics weights file named like `yolo11n.pt`. Never downloads.

    An existing path is returned as is; a bare file name is looked up in `weights_search_dirs(search_dirs)`.
    Raises `ModelLoadError` saying where it looked and what to do.
    """
    if os.path.isfile(os.path.expanduser(name)):
        return os.path.abspath(os.path.expanduser(name))
    dirs = weights_search_dirs(search_dirs)
    if os.path.basename(name) == name:
        for d in dirs:
            candidate = os.path.join(os.path.expanduser(d), name)
            if os.path.isfile(candidate):
                return os.path.abspath(candidate)
    where = ", ".join(dirs) if dirs else "no weights folder is configured"
    raise ModelLoadError(
        f"{name!r} is not a local file and was not found in the weights folders ({where}). The pipeline never "
        "downloads weights: download the file (e.g. from https://github.com/ultralytics/assets/releases) on a "
        "machine with network access and give its path, or put it in a folder listed in PIPELINE_WEIGHTS_DIR."
    )


# ---------------------------------------------------------------------------------------------- file reading


def read_ultralytics(data: bytes, uri: str) -> tuple[ModelSpec, Any]:
    """The spec of an Ultralytics `.pt` and its (unfused, float) model, read safely. Raises `CheckpointError` for a
    file that is not a safe Ultralytics checkpoint and `ModelLoadError` for a task this pipeline does not run."""
    ckpt = safe_load_ultralytics(data, uri)
    model = ckpt.get("ema") or ckpt.get("model")
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        raise CheckpointError(
            f"{uri} is not an Ultralytics model checkpoint: it holds no model under 'model' or 'ema' (keys: "
            f"{sorted(map(str, ckpt))[:10]}). A pipeline checkpoint is deployed as is; other .pt files must be "
            "saved with Ultralytics (model.save('best.pt')) or converted"
        )
    tasks = import_ultralytics(uri)
    task = getattr(model, "task", None) or tasks.guess_model_task(model)
    if task not in ops.YOLO_TASKS:
        raise ModelLoadError(
            f"{uri} is an Ultralytics {task!r} model; the pipeline runs {', '.join(ops.YOLO_TASKS)} models "
            "(other tasks have no output type here yet). Deploy a detect, segment, pose, classify, obb or semantic "
            "model instead."
        )
    return _spec(model, ckpt, task, data, uri), model


def _class_names(model: Any, uri: str) -> list[str]:
    names = getattr(model, "names", None)
    if isinstance(names, list | tuple):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or sorted(names) != list(range(len(names))) or not names:
        raise CheckpointError(f"{uri}: the model's class names must be a dict 0..n-1 -> name; got {names!r:.120}")
    return [str(names[i]) for i in range(len(names))]


def _plain(value: Any, where: str) -> Any:
    """`value` as JSON-like data (what a weights-only checkpoint and a ModelSpec may carry)."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        raise CheckpointError(f"{where}: the model YAML holds values that are not plain data") from None


def _spec(model: Any, ckpt: dict, task: str, data: bytes, uri: str) -> ModelSpec:
    train_args = ckpt.get("train_args") if isinstance(ckpt.get("train_args"), dict) else {}
    model_args = model.args if isinstance(getattr(model, "args", None), dict) else {}
    img_size, imgsz = ops.spec_img_size(train_args.get("imgsz", model_args.get("imgsz")))
    yaml = _plain(getattr(model, "yaml", None), uri) if isinstance(getattr(model, "yaml", None), dict) else None
    stride = getattr(model, "stride", None)
    arch = Path(str((yaml or {}).get("yaml_file") or type(model).__name__)).stem
    kwargs = {
        "task": task,
        "imgsz": imgsz,
        "stride": max(int(stride.max()), 32) if stride is not None else 32,
        "yaml": yaml,
        "kpt_shape": list(model.kpt_shape) if getattr(model, "kpt_shape", None) is not None else None,
        "kpt_names": ops.kpt_names_per_class(getattr(model, "kpt_names", None)),
        "end2end": bool(getattr(model, "end2end", False)),
        # RT-DETR (Ultralytics' RTDETRDetectionModel, task detect): stretched input, the decoder's top queries
        "rtdetr": type(model).__name__ == "RTDETRDetectionModel",
        "channels": int((yaml or {}).get("channels", 3)),
        "ultralytics_version": str(ckpt.get("version", "")),
    }
    return ModelSpec(
        framework="ultralytics",
        architecture=arch,
        task_type=ops.YOLO_TASKS[task],
        classes=_class_names(model, uri),
        img_size=img_size,
        arch_kwargs=kwargs,
        source="file",
        name=os.path.basename(uri.rstrip("/")),
        identity=hashlib.sha256(data).hexdigest(),
        runtime="pytorch",
    )


def _is_ultralytics_pickle(pkl: bytes) -> bool:
    # a protocol-2 GLOBAL opcode is b"c" + module + b"\n" + name: an Ultralytics model class in the pickle
    return b"cultralytics.nn." in pkl and b"pipeline-checkpoint/" not in pkl


# -------------------------------------------------------------------------------------------------- adapter


@register_adapter("ultralytics")
class UltralyticsAdapter(ModelAdapter):
    """Ultralytics YOLO (v3-v12, YOLO11, YOLO26, YOLOv10...) detect / segment / pose / classify / obb / semantic models."""

    default_settings: ClassVar[dict[str, Any]] = {
        "conf": 0.25,
        "iou": None,
        "max_det": 300,
        "agnostic": False,
        "classes": None,
        "img_size": None,
        "half": False,
        "end2end": None,
        "retina_masks": False,
    }

    # -- driver side ---------------------------------------------------------------------------------------
    @classmethod
    def sniff(cls, path: str, head: bytes) -> bool:
        """A torch zip whose pickle names an Ultralytics model class (and is not a pipeline checkpoint)."""
        if not head.startswith(b"PK\x03\x04"):
            return False
        if _is_ultralytics_pickle(head):
            return True
        if "://" in path and not path.startswith("file://"):
            return False
        try:
            with zipfile.ZipFile(path.removeprefix("file://")) as zf:
                pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
                return bool(pkl) and _is_ultralytics_pickle(zf.read(pkl[0]))
        except (OSError, zipfile.BadZipFile, KeyError):
            return False

    @classmethod
    def from_file(cls, uri: str, data: bytes, **options: Any) -> tuple[ModelSpec, bytes]:
        """Read the spec from an Ultralytics `.pt` without running anything from it; the payload is the file.
        `runtime` may only be None or "pytorch": other runtimes run an export of the model, not the `.pt`."""
        runtime = options.pop("runtime", None)
        if options:
            raise InvalidArgumentError(f"an Ultralytics .pt takes no deploy options but runtime; got {sorted(options)}")
        if runtime not in (None, "pytorch"):
            stem = os.path.splitext(os.path.basename(uri))[0]
            raise InvalidArgumentError(
                f"{uri} is a PyTorch model; runtime={runtime!r} runs ONNX files. Export it first (on a machine with "
                f"Ultralytics: YOLO({os.path.basename(uri)!r}).export(format='onnx')) and deploy {stem}.onnx with "
                f"runtime={runtime!r}, or deploy the .pt with runtime=None"
            )
        spec, _ = read_ultralytics(data, uri)
        return spec, data

    @classmethod
    def validate_settings(cls, spec: ModelSpec, settings: dict[str, Any]) -> None:
        """The run's settings values (conf, iou, max_det, classes, flags) checked before any work."""
        ops.check_settings({**cls.default_settings, **settings}, spec.classes)

    @classmethod
    def decode_hint(cls, spec: ModelSpec, img_size: int | tuple[int, int] | None) -> tuple | None:
        k = spec.arch_kwargs
        return ops.decode_hint(k.get("task"), img_size, k.get("imgsz"), int(k.get("stride") or 32),
                               stretch=bool(k.get("rtdetr")))

    @classmethod
    def validate_spec(cls, spec: ModelSpec) -> None:
        task = spec.arch_kwargs.get("task")
        if task not in ops.YOLO_TASKS or ops.YOLO_TASKS[task] != spec.task_type:
            raise ModelLoadError(
                f"an ultralytics spec needs arch_kwargs['task'] in {list(ops.YOLO_TASKS)} matching task_type "
                f"{spec.task_type!r}; got {task!r}"
            )

    # -- replica side --------------------------------------------------------------------------------------
    def load_payload(self, payload: bytes) -> None:
        """Build the model from the `.pt` bytes `from_file` returned (the same safe loading)."""
        spec, model = read_ultralytics(payload, self.spec.name or "<payload>")
        self._setup(model, spec.arch_kwargs)

    def load(self, state_dict: dict[str, Any] | None) -> None:
        """Rebuild from a converted checkpoint: the model YAML in `arch_kwargs` plus the state dict."""
        if state_dict is None:
            raise ModelLoadError(
                "ultralytics models are deployed from their .pt file (resolve a name like 'yolo11n.pt' with "
                "workers.models.ultralytics.resolve_weights); there are no pretrained weights by name"
            )
        self.validate_spec(self.spec)
        self._setup(self._rebuild(state_dict), self.spec.arch_kwargs)

    def _rebuild(self, state_dict: dict[str, Any]):
        kw = self.spec.arch_kwargs
        where = f"ultralytics checkpoint {self.spec.name or self.spec.architecture!r}"
        yaml = check_yaml(copy.deepcopy(kw.get("yaml")), where)
        tasks = import_ultralytics(where)
        model_cls = getattr(tasks, "RTDETRDetectionModel" if kw.get("rtdetr") else _MODEL_CLASSES[kw["task"]])
        extra = {"data_kpt_shape": tuple(kw["kpt_shape"])} if kw["task"] == "pose" and kw.get("kpt_shape") else {}
        try:
            with restricted_build():
                model = model_cls(cfg=yaml, ch=int(kw.get("channels", 3)), nc=len(self.spec.classes), verbose=False,
                                  **extra)
        except Exception as exc:
            raise ModelLoadError(f"{where}: could not build the model from its YAML: {type(exc).__name__}: {exc}") from None
        try:
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()})
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()][:6]
            raise ModelLoadError(f"{where}: the state_dict does not fit the model YAML: " + " | ".join(lines)) from None
        model.names = dict(enumerate(self.spec.classes))
        model.task = kw["task"]
        if kw.get("end2end") and hasattr(model, "end2end"):
            model.end2end = True
        return model

    def _setup(self, model: Any, kw: dict[str, Any]) -> None:
        """What Ultralytics' `load_checkpoint` does to a model before predicting; fusing waits for the head choice."""
        import torch

        model = model.float()
        for m in model.modules():
            if hasattr(m, "inplace"):
                m.inplace = True
            elif isinstance(m, torch.nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
                m.recompute_scale_factor = None  # layers pickled by torch < 1.11
        if not hasattr(model, "stride"):
            model.stride = torch.tensor([32.0])
        for p in model.parameters():
            p.requires_grad = False
        self._base = model.eval()
        self._models: dict[Any, Any] = {}
        self.task = kw["task"]
        self.rtdetr = bool(kw.get("rtdetr"))
        self.stride = max(int(model.stride.max()), 32)
        self.kpt_shape = list(getattr(model, "kpt_shape", None) or kw.get("kpt_shape") or []) or None
        self._cls_transforms: dict[tuple, Any] = {}

    def _model(self, end2end: bool | None, half: bool):
        """The fused model for a head choice (built once per choice: fusing drops the other head), on the device."""
        import torch

        key = (end2end, half)
        if key not in self._models:
            model = copy.deepcopy(self._base)
            if end2end is not None and hasattr(model, "end2end"):
                model.end2end = end2end
            model = model.fuse(verbose=False) if hasattr(model, "fuse") else model
            model = model.to(torch.device(self.device))
            if _channels_last(self.device):  # as Ultralytics' AutoBackend does on x86 CPUs
                model = model.to(memory_format=torch.channels_last)
            self._models[key] = (model.half() if half else model.float()).eval()
        return self._models[key]

    def preprocess(self, images: list[np.ndarray]) -> Any:
        # The letterbox size depends on the call's settings (img_size): `predict` does it.
        return images

    def predict(self, batch: list[np.ndarray], settings: dict[str, Any]) -> Any:
        """Letterbox each image as Ultralytics' predict would alone, run same-shape groups as one batch."""
        s = ops.check_settings(settings, self.spec.classes)
        half = bool(s.get("half")) and str(self.device).startswith("cuda")
        model = self._model(s.get("end2end"), half)
        imgsz = ops.yolo_imgsz(s.get("img_size"), self.spec.arch_kwargs.get("imgsz"), self.stride)
        if self.task == "classify":
            return [("classify", list(range(len(batch))), model(self._classify_input(batch, model, imgsz, half)))]
        if self.rtdetr:  # stretched to imgsz (RTDETRPredictor.scale_fill): every image has the same input shape
            x = ops.to_batch(ops.letterbox(batch, imgsz, self.stride, auto=False, stretch=True), self.device, half)
            return [("rtdetr", list(range(len(batch))), model(x), tuple(x.shape[2:]))]
        end2end = bool(getattr(model, "end2end", False))
        if end2end:  # Ultralytics sets the NMS-free head's top-k before each run
            model.set_head_attr(max_det=max(int(s["max_det"]), 300), agnostic_nms=bool(s.get("agnostic")))
        boxed = ops.letterbox(batch, imgsz, self.stride, auto=True)
        out = []
        for idx in ops.group_by_shape(boxed):
            x = ops.to_batch([boxed[i] for i in idx], self.device, half)
            out.append((end2end, idx, model(x), tuple(x.shape[2:])))
        return out

    def _classify_input(self, batch, model, imgsz, half):
        key = tuple(imgsz)
        if key not in self._cls_transforms:
            from ultralytics.data.augment import classify_transforms

            own = getattr(model, "transforms", None)  # a checkpoint's own transforms, used when their size fits
            size = getattr(own.transforms[0], "size", None) if own is not None else None
            size = (size, size) if isinstance(size, int) else size
            self._cls_transforms[key] = own if size is not None and tuple(size) == key else classify_transforms(imgsz)
        return ops.classify_batch(batch, self._cls_transforms[key], self.device, half)

    def postprocess(self, raw, input_sizes, orig_sizes, settings) -> list[ModelOutput]:
        """NMS and scaling per group; outputs are in the pixels of the images given (`input_sizes`)."""
        s = ops.check_settings(settings, self.spec.classes)
        outputs: list[ModelOutput | None] = [None] * len(input_sizes)
        for group in raw:
            if group[0] == "classify":
                preds = group[2][0] if isinstance(group[2], tuple | list) else group[2]
                for i, o in zip(group[1], ops.classifications(preds)):
                    outputs[i] = o
                continue
            end2end, idx, preds, in_shape = group
            sizes = [input_sizes[i] for i in idx]
            if end2end == "rtdetr":
                for i, o in zip(idx, ops.rtdetr_detections(preds, sizes, s)):
                    outputs[i] = o
                continue
            res = ops.detections(preds, in_shape, sizes, self.task, s, len(self.spec.classes), end2end, self.kpt_shape)
            for i, o in zip(idx, res):
                outputs[i] = o
        return outputs  # type: ignore[return-value]


def _channels_last(device: str) -> bool:
    import torch

    return (
        str(device) == "cpu"
        and platform.machine() in {"AMD64", "x86_64"}
        and platform.system() in {"Linux", "Windows"}
        and torch.backends.mkldnn.is_available()
        and bool(torch.backends.mkldnn.enabled)
    )

