"""The model-adapter contract and the registry of frameworks.

An adapter maps a framework to code. It implements `load` and `predict`; `preprocess` and `postprocess` have
defaults that suit most image models. A new framework plugs in with::

    @register_adapter("myframework")
    class MyAdapter(ModelAdapter):
        def load(self, state_dict): ...
        def predict(self, batch, settings): ...
"""

from __future__ import annotations

import abc
import importlib
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from pipeline.exceptions import ModelLoadError
from workers.messages import ModelOutput

__all__ = ["BUILTIN_ADAPTERS", "DEFAULT_SETTINGS", "FILE_FRAMEWORKS", "PRECISIONS", "to_device", "to_fp32", "TASK_ALIASES", "TASK_TYPES", "ModelAdapter", "ModelSpec",
           "get_adapter", "list_frameworks", "normalize_task_type", "register_adapter", "rescale_output", "scale_obb"]

# Batches arrive as read-only arrays mapped from Ray's object store; adapters only read them (copy to the device,
# convert to float), so torch's warning about non-writable arrays is noise.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

# conf 0.25 / max_det 100: the usual detector defaults (YOLO, Supervisely serving apps). iou None keeps the
# model's own NMS threshold (what it was trained and evaluated with) unless the caller sets one. img_size None
# keeps the input size the model was saved with (the spec's), else the framework's own default.
DEFAULT_SETTINGS: dict[str, Any] = {"conf": 0.25, "iou": None, "max_det": 100, "img_size": None}

TASK_TYPES = ("detection", "instance_segmentation", "semantic_segmentation", "pose", "classification",
              "oriented_detection")
# The Supervisely SDK's names of the same tasks (what checkpoints written by tools that follow it say).
TASK_ALIASES = {
    "object detection": "detection",
    "instance segmentation": "instance_segmentation",
    "semantic segmentation": "semantic_segmentation",
    "pose estimation": "pose",
    "obb": "oriented_detection",
    "oriented object detection": "oriented_detection",
}


def normalize_task_type(task_type: Any) -> str | None:
    """Our name of a task type, given ours or the Supervisely SDK's ("object detection" -> "detection"); None when
    it is neither."""
    if not isinstance(task_type, str):
        return None
    name = task_type.strip()
    name = TASK_ALIASES.get(name.lower(), name)
    return name if name in TASK_TYPES else None


@dataclass
class ModelSpec:
    """Everything needed to build a model, without its weights. Plain data: it travels to the replicas.

    `source` is "checkpoint" (our checkpoint file comes with the deployment), "file" (a framework's own file, its
    bytes given to `ModelAdapter.load_payload`; `runtime` says how to run it) or "pretrained" (the adapter fetches its
    framework's published weights). `identity` is what `reuse=True` compares: the checkpoint's sha256 or the
    pretrained name.
    """

    framework: str
    architecture: str
    task_type: str
    classes: list[str]
    img_size: int | tuple[int, int] | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = "checkpoint"
    name: str = ""
    identity: str = ""
    runtime: str | None = None  # how a "file" runs ("pytorch", "onnx", "tensorrt"); None: the framework's default
    precision: str = "fp32"  # "fp16" | "bf16": autocast on the GPU, outputs back in fp32 before post-processing

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(**data)


class ModelAdapter(abc.ABC):
    """One framework's glue: builds the model, turns uint8 images into predictions in original pixels.

    Lifecycle inside a replica: `__init__(spec, device)` -> `load(state_dict)` once -> `run(...)` per batch.
    """

    framework: ClassVar[str] = ""
    default_settings: ClassVar[dict[str, Any]] = DEFAULT_SETTINGS

    # True when `postprocess` maps outputs to `orig_sizes` itself; else they are in the pixels of the images given
    # and `run` scales them (an image the loading stage resized, to an exact (h, w) img_size, or decoded reduced).
    outputs_in_original_pixels: ClassVar[bool] = False
    # True when `preprocess` takes HWC uint8 torch tensors already on the device (JPEGs the replica decoded on its
    # GPU) as well as numpy arrays; else the replica hands it numpy arrays.
    accepts_device_tensors: ClassVar[bool] = False

    def __init__(self, spec: ModelSpec, device: str = "cpu"):
        self.spec = spec
        self.device = device
        self.call_settings: dict[str, Any] = {}

    # -- driver side ---------------------------------------------------------------------------------------
    @classmethod
    def check_weights(cls, spec: ModelSpec, state_dict: dict[str, Any]) -> None:
        """Raise `ModelLoadError` when `state_dict` does not fit `spec`, cheaply, before any replica starts.
        The default checks nothing: the replicas find out when they load."""
        return None

    @classmethod
    def resolve_pretrained(cls, name: str) -> ModelSpec | tuple[ModelSpec, bytes]:
        """The spec of a pretrained model `"<framework>/<name>"`, without downloading weights; or (spec, payload
        for `load_payload`) when its files are on this machine (transformers: the local Hugging Face cache)."""
        raise ModelLoadError(f"framework {cls.framework!r} has no pretrained models")

    @classmethod
    def decode_hint(cls, spec: ModelSpec, img_size: int | tuple[int, int] | None) -> tuple | None:
        """What the model's own resize keeps of an image, so that the loading stage may decode a large JPEG
        reduced without losing anything the model would see: ("fit", min_side, max_side) (scaled by
        min(min_side / shorter side, max_side / longer side)), ("cover", h, w) (scaled to h x w), ("contain", h, w)
        (scaled to fit inside h x w, aspect kept: a letterbox), or None (unknown: decode whole). A hint may ask for
        more pixels than the model keeps, never fewer."""
        return None

    @classmethod
    def sniff(cls, path: str, head: bytes) -> bool:
        """Whether the file (or directory) at `path` is this framework's own model file; `head` is its first
        bytes (empty for a directory). Must run nothing from the file. Default: no files of its own."""
        return False

    @classmethod
    def from_file(cls, uri: str, data: bytes, **options: Any) -> tuple[ModelSpec, bytes]:
        """The spec of a file `sniff` recognised (source="file") and the payload every replica loads, read safely
        (nothing from the file runs); `options` are deploy's (`runtime`, ...)."""
        raise ModelLoadError(f"framework {cls.framework!r} does not deploy files of its own")

    def load_payload(self, payload: bytes) -> None:
        """Build the model on `self.device` from the bytes `from_file` returned."""
        raise ModelLoadError(f"framework {self.framework!r} does not deploy files of its own")

    @classmethod
    def is_open_vocabulary(cls, spec: ModelSpec) -> bool:
        """Whether the model finds the classes it is told (`settings["prompts"]`, from predict's `classes`;
        class_ids index into them) rather than a fixed list (`spec.classes`). Default: a fixed list."""
        return False

    @classmethod
    def validate_settings(cls, spec: ModelSpec, settings: dict[str, Any]) -> None:
        """Raise `InvalidArgumentError` for settings (the run's, `img_size` included) this model cannot take; the
        driver calls it before any work (default: accept)."""
        return None

    def check_loaded_settings(self, settings: dict[str, Any]) -> None:
        """Raise `InvalidArgumentError` for settings only the loaded model can judge (a prompt model's prompts
        against its tokenizer); the driver asks one replica before any work, for open-vocabulary models
        (default: nothing more to check)."""
        return None

    @classmethod
    def validate_spec(cls, spec: ModelSpec) -> None:
        """Raise `ModelLoadError` when the spec names something this adapter cannot build (default: accept)."""
        return None

    # -- replica side --------------------------------------------------------------------------------------
    @abc.abstractmethod
    def load(self, state_dict: dict[str, Any] | None) -> None:
        """Build the model on `self.device`; `state_dict=None` means the pretrained weights."""

    def preprocess(self, images: list[Any]) -> Any:
        """uint8 HWC RGB images -> the model's input. Default: a list of float CHW tensors in [0, 1]."""
        return [to_device(img, self.device).permute(2, 0, 1).float().div_(255.0) for img in images]

    @abc.abstractmethod
    def predict(self, batch: Any, settings: dict[str, Any]) -> Any:
        """Run the model on a preprocessed batch; returns whatever `postprocess` understands."""

    @abc.abstractmethod
    def postprocess(
        self,
        raw: Any,
        input_sizes: list[tuple[int, int]],
        orig_sizes: list[tuple[int, int]],
        settings: dict[str, Any],
    ) -> list[ModelOutput]:
        """Raw outputs -> one `ModelOutput` per image, in the pixels of the images given (`input_sizes`), or of the
        original images (`orig_sizes`) when the class sets `outputs_in_original_pixels`."""

    def settings_with_defaults(self, settings: dict[str, Any] | None) -> dict[str, Any]:
        """The adapter's defaults, the call's settings over them; `img_size` None becomes the spec's."""
        merged = dict(self.default_settings)
        merged.update(settings or {})
        if merged.get("img_size") is None:
            merged["img_size"] = self.spec.img_size
        if isinstance(merged["img_size"], list):
            merged["img_size"] = tuple(merged["img_size"])
        return merged

    def run(
        self,
        images: list[np.ndarray],
        orig_sizes: list[tuple[int, int]],
        settings: dict[str, Any] | None = None,
    ) -> tuple[list[ModelOutput], float]:
        """preprocess -> predict -> postprocess under `torch.inference_mode()`; returns outputs in the pixels of
        `orig_sizes` (the original images) and the seconds it took.

        `settings["img_size"]`: None (the spec's size, else the framework's default), an int (the image fitted into
        a square of that side the framework's own way, aspect kept), or (h, w): an exact size, to which the
        loading stage has already resized the images (the adapter takes them as they are).
        """
        import torch

        s = self.settings_with_defaults(settings)
        self.call_settings = s  # what preprocess may need of this call's settings (e.g. img_size)
        t0 = time.perf_counter()
        with torch.inference_mode():
            batch = self.preprocess(images)
            with self.autocast():
                raw = self.predict(batch, s)
            if self.spec.precision != "fp32":
                raw = to_fp32(raw)
            sizes = [tuple(img.shape[:2]) for img in images]
            outputs = self.postprocess(raw, sizes, list(orig_sizes), s)
        if not self.outputs_in_original_pixels:
            outputs = [rescale_output(o, size, tuple(orig)) for o, size, orig in zip(outputs, sizes, orig_sizes)]
        return outputs, time.perf_counter() - t0


    def autocast(self) -> Any:
        """Reduced precision for the forward pass (`spec.precision`, on a GPU only), else nothing."""
        import contextlib

        import torch

        if self.spec.precision == "fp32" or not str(self.device).startswith("cuda"):
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.float16 if self.spec.precision == "fp16" else torch.bfloat16)


PRECISIONS = ("fp32", "fp16", "bf16")


def to_device(img: Any, device: str) -> Any:
    """An HWC uint8 image (numpy, or a tensor already on a device) as a tensor on `device`; a numpy array bound for
    a GPU goes through pinned memory so the copy does not block the host."""
    import torch

    if isinstance(img, torch.Tensor):
        return img.to(device, non_blocking=True)
    t = torch.from_numpy(np.ascontiguousarray(img))
    if str(device).startswith("cuda"):
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def to_fp32(raw: Any) -> Any:
    """Every floating tensor of a model's raw output (nested lists, tuples, dicts) in float32."""
    import torch

    if isinstance(raw, torch.Tensor):
        return raw.float() if raw.is_floating_point() and raw.dtype != torch.float32 else raw
    if isinstance(raw, dict):
        return {k: to_fp32(v) for k, v in raw.items()}
    if isinstance(raw, tuple) and hasattr(raw, "_fields"):  # a named tuple
        return type(raw)(*(to_fp32(v) for v in raw))
    if isinstance(raw, list | tuple):
        return type(raw)(to_fp32(v) for v in raw)
    return raw


def rescale_output(out: ModelOutput, size: tuple[int, int], orig: tuple[int, int]) -> ModelOutput:
    """`out` from the pixels of an image of `size` (h, w) to those of the original image `orig`: boxes and
    keypoints scaled, masks resized (nearest neighbour)."""
    if tuple(size) == tuple(orig) or out.error is not None:
        return out
    (h, w), (oh, ow) = size, orig
    sx, sy = ow / w, oh / h
    boxes = out.boxes * np.array([sx, sy, sx, sy], np.float32) if len(out.boxes) else out.boxes
    keypoints = out.keypoints
    if keypoints is not None and len(keypoints):
        keypoints = keypoints * np.array([sx, sy, 1.0], np.float32)
    obb = out.obb
    if obb is not None and len(obb):
        obb = scale_obb(obb, sx, sy)
    masks = out.masks
    if masks is not None:
        if len(masks):
            rows = np.minimum((np.arange(oh) + 0.5) * h / oh, h - 1).astype(np.int64)
            cols = np.minimum((np.arange(ow) + 0.5) * w / ow, w - 1).astype(np.int64)
            masks = masks[:, rows][:, :, cols]
        else:
            masks = np.zeros((0, oh, ow), bool)
    return ModelOutput(boxes=boxes.astype(np.float32), scores=out.scores, class_ids=out.class_ids, masks=masks,
                       error=out.error, keypoints=keypoints, probs=out.probs, obb=obb)


def scale_obb(obb: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Oriented boxes (N, 5) `cx, cy, w, h, angle` under the scaling x * sx, y * sy: centres scaled, each side the
    length of its scaled direction vector, the angle that of the scaled width vector. Exact when sx == sy or the
    angle is a multiple of 90 degrees; otherwise the scaled rectangle is a parallelogram and this is the rectangle
    of its scaled sides (a reduced decode scales both axes by nearly the same factor)."""
    obb = np.asarray(obb, np.float64)
    cos, sin = np.cos(obb[:, 4]), np.sin(obb[:, 4])
    out = np.empty_like(obb)
    out[:, 0], out[:, 1] = obb[:, 0] * sx, obb[:, 1] * sy
    out[:, 2] = obb[:, 2] * np.hypot(cos * sx, sin * sy)
    out[:, 3] = obb[:, 3] * np.hypot(sin * sx, cos * sy)
    out[:, 4] = np.arctan2(sin * sy, cos * sx)
    return out.astype(np.float32)


_ADAPTERS: dict[str, type[ModelAdapter]] = {}
# The adapters that ship with the package, imported when their framework is first asked for, so a replica of a
# torchvision model never imports another framework's library. (Imported by name: an adapter module imports this
# one, and this one must not import it back.)
BUILTIN_ADAPTERS = {
    "torchvision": "workers.models.torchvision",
    "ultralytics": "workers.models.ultralytics",
    "onnx": "workers.models.onnx",
    "transformers": "workers.models.hf",
}
# The frameworks whose own files `deploy(model=path)` recognises (`ModelAdapter.sniff`), in the order they are
# asked; a file none of them claims is read as our checkpoint.
FILE_FRAMEWORKS: tuple[str, ...] = ("ultralytics", "onnx", "transformers")


def register_adapter(framework: str):
    """Class decorator: make `cls` the adapter of `framework`."""

    def deco(cls: type[ModelAdapter]) -> type[ModelAdapter]:
        cls.framework = framework
        _ADAPTERS[framework] = cls
        return cls

    return deco


def get_adapter(framework: str) -> type[ModelAdapter]:
    if framework not in _ADAPTERS and framework in BUILTIN_ADAPTERS:
        importlib.import_module(BUILTIN_ADAPTERS[framework])
    try:
        return _ADAPTERS[framework]
    except KeyError:
        raise ModelLoadError(
            f"unknown framework {framework!r}; known frameworks: {list_frameworks()} "
            "(register another with workers.models.register_adapter)"
        ) from None


def list_frameworks() -> list[str]:
    return sorted(set(_ADAPTERS) | set(BUILTIN_ADAPTERS))
