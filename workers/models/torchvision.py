"""The `torchvision` adapter: detection, instance segmentation and semantic segmentation models.

Label conventions (those of torchvision): a detection model's label `i >= 1` is `classes[i - 1]` and 0 is the
background; a semantic-segmentation model's output channel `i >= 1` is `classes[i - 1]` and channel 0 the
background. A checkpoint's `classes` never lists the background; the model is built with `len(classes) + 1`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any
from urllib.parse import urlparse

import numpy as np

from pipeline.exceptions import ModelLoadError
from workers.messages import ModelOutput
from workers.models.base import ModelAdapter, ModelSpec, register_adapter, to_device

__all__ = ["TorchvisionAdapter", "builtin_architectures", "task_type_of", "weights_cache_path"]

# ImageNet statistics: what torchvision's segmentation weights were trained with (their `transforms()`).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_TASK_BY_PREFIX = (
    ("maskrcnn_", "instance_segmentation"),
    ("fasterrcnn_", "detection"),
    ("retinanet_", "detection"),
    ("fcos_", "detection"),
    ("ssd300_", "detection"),
    ("ssdlite", "detection"),
    ("deeplabv3_", "semantic_segmentation"),
    ("fcn_", "semantic_segmentation"),
    ("lraspp_", "semantic_segmentation"),
)

_patch_lock = threading.Lock()


def _small_architectures() -> dict[str, Any]:
    try:
        from workers.models._small_archs import SMALL_ARCHITECTURES
    except ImportError:  # pragma: no cover - the module ships with the package
        return {}
    return SMALL_ARCHITECTURES


def builtin_architectures() -> dict[str, str]:
    """torchvision's builder names this adapter supports -> task type."""
    from torchvision.models import list_models

    out = {}
    for name in list_models():
        for prefix, task in _TASK_BY_PREFIX:
            if name.startswith(prefix):
                out[name] = task
    return out


def task_type_of(architecture: str) -> str | None:
    for prefix, task in _TASK_BY_PREFIX:
        if architecture.startswith(prefix):
            return task
    return None


def weights_cache_path(url: str) -> str:
    """Where torch's hub cache keeps the file of `url`: `$TORCH_HOME/hub/checkpoints/<file name>`."""
    import torch.hub

    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


@contextlib.contextmanager
def _weights_only_downloads():
    """Make torchvision read cached pretrained weights with `weights_only=True` (its default would unpickle)."""
    import torchvision.models._api as api

    with _patch_lock:
        original = api.load_state_dict_from_url

        def safe(url, *args, **kwargs):
            kwargs["weights_only"] = True
            return original(url, *args, **kwargs)

        api.load_state_dict_from_url = safe
        try:
            yield
        finally:
            api.load_state_dict_from_url = original


@register_adapter("torchvision")
class TorchvisionAdapter(ModelAdapter):
    """torchvision detection (Faster R-CNN, RetinaNet, FCOS, SSD, SSDlite), Mask R-CNN and DeepLabV3/FCN/LRASPP.

    `img_size`: None keeps the model's own transform (e.g. min_size=800, max_size=1333); an int fits the image
    into a square of that side the model's own way: detectors' transform with min_size = max_size = side (aspect
    kept; SSD's fixed size becomes side x side, its own rule), semantic segmentation resized so its shorter side is
    `side` (torchvision's `SemanticSegmentation` preset); a (h, w) tuple arrives resized to exactly that by the
    loading stage and the model's resize is switched off.
    """

    # masks are interpolated as probabilities at the original size, finer than resizing the thresholded masks
    outputs_in_original_pixels = True
    accepts_device_tensors = True

    @classmethod
    def decode_hint(cls, spec: ModelSpec, img_size: int | tuple[int, int] | None) -> tuple | None:
        if isinstance(img_size, tuple):
            return ("cover", *img_size)
        if spec.task_type == "semantic_segmentation":
            return ("fit", img_size, float("inf")) if isinstance(img_size, int) else None
        sizes = _transform_sizes(spec)
        if sizes is None:
            return None
        min_size, max_size, fixed = sizes
        if fixed is not None:  # SSD: a fixed square, its own rule
            return ("cover", img_size, img_size) if isinstance(img_size, int) else ("cover", *fixed)
        if isinstance(img_size, int):
            return ("fit", img_size, img_size)
        return ("fit", min_size, max_size)

    # -- driver side ---------------------------------------------------------------------------------------
    @classmethod
    def resolve_pretrained(cls, name: str) -> ModelSpec:
        from torchvision.models import get_model_weights

        archs = builtin_architectures()
        if name not in archs:
            raise ModelLoadError(
                f"unknown torchvision model {name!r}; supported: {', '.join(sorted(archs))}"
            )
        weights = get_model_weights(name).DEFAULT
        categories = list(weights.meta["categories"])
        return ModelSpec(
            framework="torchvision",
            architecture=name,
            task_type=archs[name],
            classes=categories[1:],  # [0] is "__background__"
            img_size=None,  # the model's own transform sizes its input
            arch_kwargs={},
            source="pretrained",
            name=f"torchvision/{name}",
            identity=f"torchvision/{name}:{weights.url}",
        )

    @classmethod
    def validate_spec(cls, spec: ModelSpec) -> None:
        _num_classes_kwargs(spec)
        small = _small_architectures()
        expected = task_type_of(spec.architecture) if spec.architecture in small else None
        expected = expected or builtin_architectures().get(spec.architecture)
        if expected is None:
            known = sorted(builtin_architectures()) + sorted(small)
            raise ModelLoadError(
                f"unknown torchvision architecture {spec.architecture!r}; known: {', '.join(known)}"
            )
        if expected != spec.task_type:
            raise ModelLoadError(
                f"architecture {spec.architecture!r} is a {expected} model, but the checkpoint says "
                f"task_type={spec.task_type!r}"
            )

    @classmethod
    def check_weights(cls, spec: ModelSpec, state_dict: dict[str, Any]) -> None:
        """Build the model on PyTorch's meta device (shapes only, no memory, no init work) and load the state
        dict into it: a missing key or a shape that does not fit is a `ModelLoadError` in the driver, in a
        fraction of a second, instead of one per replica after it started."""
        import warnings

        import torch

        try:
            with warnings.catch_warnings(), torch.device("meta"):
                warnings.simplefilter("ignore", UserWarning)  # "copying ... to a meta parameter is a no-op"
                cls(spec, "cpu")._build(state_dict)
        except ModelLoadError:
            raise
        except Exception:  # a model that cannot be built on the meta device: its replicas will tell
            return

    # -- replica side --------------------------------------------------------------------------------------
    def _build(self, state_dict: dict[str, Any] | None):
        from torchvision.models import get_model, get_model_weights

        spec = self.spec
        self.validate_spec(spec)
        small = _small_architectures()
        if state_dict is None:  # pretrained by name
            weights = get_model_weights(spec.architecture).DEFAULT
            path = weights_cache_path(weights.url)
            if not os.path.exists(path) and os.environ.get("PIPELINE_OFFLINE") == "1":
                raise ModelLoadError(
                    f"the pretrained weights of torchvision/{spec.architecture} are not in the cache and "
                    f"PIPELINE_OFFLINE=1 forbids downloading them: download {weights.url} and put the file at "
                    f"{path} on every node (the torch hub cache; set TORCH_HOME to move it)"
                )
            try:
                with _weights_only_downloads():
                    return get_model(spec.architecture, weights=weights)
            except Exception as exc:
                raise ModelLoadError(
                    f"could not load the pretrained weights of torchvision/{spec.architecture}: "
                    f"{type(exc).__name__}: {exc}. Without network access, download {weights.url} on a machine "
                    f"that has it and put the file at {path} on every node (the torch hub cache; set TORCH_HOME "
                    "to move it), or deploy a checkpoint file instead."
                ) from None
        num_classes = len(spec.classes) + 1
        arch_kwargs = _num_classes_kwargs(spec)
        try:
            if spec.architecture in small:
                model = small[spec.architecture](num_classes=num_classes, **arch_kwargs)
            else:
                kwargs = {"weights": None, "weights_backbone": None, **arch_kwargs}
                model = get_model(spec.architecture, num_classes=num_classes, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"arch_kwargs {spec.arch_kwargs} do not fit {spec.architecture!r}: {exc}") from None
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()][:6]
            raise ModelLoadError(
                f"the checkpoint's state_dict does not fit architecture {spec.architecture!r} with "
                f"{num_classes} classes (incl. background): " + " | ".join(lines)
            ) from None
        return model

    def load(self, state_dict: dict[str, Any] | None) -> None:
        import torch

        model = self._build(state_dict)
        model.eval()
        self.model = model.to(torch.device(self.device))
        if self.device.startswith("cuda"):  # convolutions run faster on NHWC tensors on GPUs (cuDNN)
            self.model = self.model.to(memory_format=torch.channels_last)
        self.task_type = self.spec.task_type
        self._transform = getattr(model, "transform", None)
        self._original_resize = self._transform.resize if self._transform is not None else None

    def _set_thresholds(self, settings: dict[str, Any]) -> None:
        m = self.model
        conf, iou, max_det = float(settings["conf"]), settings.get("iou"), int(settings["max_det"])
        heads = getattr(m, "roi_heads", None)
        target = heads if heads is not None and hasattr(heads, "score_thresh") else m
        if hasattr(target, "score_thresh"):
            target.score_thresh = conf
        if not hasattr(self, "_default_nms"):
            self._default_nms = getattr(target, "nms_thresh", None)
        if hasattr(target, "nms_thresh"):
            target.nms_thresh = float(iou) if iou is not None else self._default_nms
        if hasattr(target, "detections_per_img"):
            target.detections_per_img = max_det

    def _set_input_size(self, img_size: int | tuple[int, int] | None) -> None:
        """The model's transform for this call (see the class docstring)."""
        t = self._transform
        if t is None:
            return
        if not hasattr(self, "_own_size"):
            self._own_size = (t.min_size, t.max_size, getattr(t, "fixed_size", None))
        t.resize = self._original_resize
        t.min_size, t.max_size, fixed = self._own_size
        if hasattr(t, "fixed_size"):
            t.fixed_size = fixed
        if isinstance(img_size, tuple):  # resized by the loading stage: taken as it is
            t.resize = lambda image, target=None: (image, target)
        elif isinstance(img_size, int):
            if fixed is not None:  # SSD: its own rule is a fixed square
                t.fixed_size = (img_size, img_size)
            else:
                t.min_size, t.max_size = (img_size,), img_size

    def preprocess(self, images: list[np.ndarray]) -> Any:
        import torch

        if self.task_type != "semantic_segmentation":
            return super().preprocess(images)
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        out = []
        for img in images:
            t = to_device(img, self.device).permute(2, 0, 1)
            t = _shorter_side(t, self.call_settings.get("img_size")).unsqueeze(0).float().div_(255.0)
            out.append((t - mean) / std)
        return out

    def predict(self, batch: Any, settings: dict[str, Any]) -> Any:
        import torch

        if self.task_type == "semantic_segmentation":
            # Same-size images run as one batch; different sizes one by one (the models are fully convolutional).
            shapes = {tuple(t.shape[-2:]) for t in batch}
            if len(shapes) == 1:
                return list(self.model(torch.cat(batch))["out"])
            return [self.model(t)["out"][0] for t in batch]
        self._set_thresholds(settings)
        self._set_input_size(settings.get("img_size"))
        return self.model(batch)

    def postprocess(self, raw, input_sizes, orig_sizes, settings) -> list[ModelOutput]:
        if self.task_type == "semantic_segmentation":
            return [self._semantic(logits, orig, settings) for logits, orig in zip(raw, orig_sizes)]
        return [
            self._detections(det, in_size, orig, settings) for det, in_size, orig in zip(raw, input_sizes, orig_sizes)
        ]

    def _detections(self, det: dict, in_size, orig, settings) -> ModelOutput:
        import torch
        import torch.nn.functional as F

        conf, max_det = float(settings["conf"]), int(settings["max_det"])
        scores = det["scores"]
        # label 0 is the background: R-CNNs never output it, but RetinaNet, FCOS and SSD score every label,
        # the background's too
        keep = torch.nonzero((scores >= conf) & (det["labels"] > 0)).flatten()
        keep = keep[torch.argsort(scores[keep], descending=True)][:max_det]
        boxes = det["boxes"][keep].float()
        (ih, iw), (oh, ow) = in_size, orig
        if (ih, iw) != (oh, ow):
            scale = torch.tensor([ow / iw, oh / ih, ow / iw, oh / ih], device=boxes.device)
            boxes = boxes * scale
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, ow)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, oh)
        masks = None
        if "masks" in det:
            m = det["masks"][keep]  # (N, 1, ih, iw) probabilities
            if m.shape[0] and (ih, iw) != (oh, ow):
                m = F.interpolate(m, size=(oh, ow), mode="bilinear", align_corners=False)
            masks = (m[:, 0] > 0.5).cpu().numpy() if m.shape[0] else np.zeros((0, oh, ow), dtype=bool)
        return ModelOutput(
            boxes=boxes.cpu().numpy().astype(np.float32),
            scores=scores[keep].float().cpu().numpy(),
            class_ids=(det["labels"][keep] - 1).cpu().numpy().astype(np.int64),
            masks=masks,
        )

    def _semantic(self, logits, orig, settings) -> ModelOutput:
        import torch
        import torch.nn.functional as F

        oh, ow = orig
        logits = logits.unsqueeze(0)
        if tuple(logits.shape[-2:]) != (oh, ow):
            logits = F.interpolate(logits, size=(oh, ow), mode="bilinear", align_corners=False)
        probs = logits[0].softmax(0)  # (C, H, W)
        label = probs.argmax(0)
        present = [int(c) for c in torch.unique(label).tolist() if c != 0]
        boxes, scores, ids, masks = [], [], [], []
        for c in present:
            mask = label == c
            score = float(probs[c][mask].mean())
            if score < float(settings["conf"]):
                continue
            ys, xs = torch.nonzero(mask, as_tuple=True)
            boxes.append([float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1])
            scores.append(score)
            ids.append(c - 1)
            masks.append(mask.cpu().numpy())
        order = np.argsort(-np.asarray(scores, dtype=np.float32), kind="stable")[: int(settings["max_det"])]
        if not len(order):
            return ModelOutput.empty(with_masks=True, size=(oh, ow))
        return ModelOutput(
            boxes=np.asarray(boxes, np.float32)[order],
            scores=np.asarray(scores, np.float32)[order],
            class_ids=np.asarray(ids, np.int64)[order],
            masks=np.stack(masks)[order],
        )


def _num_classes_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """`arch_kwargs` without `num_classes`, which the adapter passes itself (len(classes) + 1, the background
    included): a checkpoint that records it (as training scripts that build the model with it do) must agree."""
    kwargs = dict(spec.arch_kwargs)
    if "num_classes" in kwargs:
        given, expected = kwargs.pop("num_classes"), len(spec.classes) + 1
        if given != expected:
            raise ModelLoadError(
                f"arch_kwargs num_classes={given!r} disagrees with the checkpoint's {len(spec.classes)} classes: a "
                f"torchvision model of these classes has num_classes={expected} (the classes plus the background); "
                "fix `classes` or `num_classes` in the checkpoint"
            )
    return kwargs


def _shorter_side(image: Any, img_size: int | tuple[int, int] | None) -> Any:
    """A (3, H, W) uint8 tensor resized so its shorter side is an int `img_size`, as torchvision's
    `SemanticSegmentation(resize_size=...)` preset does (bilinear, antialiased, on the uint8 image); unchanged
    otherwise."""
    if not isinstance(img_size, int):
        return image
    from torchvision.transforms.functional import InterpolationMode, resize

    return resize(image, [img_size], interpolation=InterpolationMode.BILINEAR, antialias=True)


_sizes_cache: dict[str, tuple | None] = {}


def _transform_sizes(spec: ModelSpec) -> tuple | None:
    """(min_size, max_size, fixed_size) of a detector's own transform, read off the model built on PyTorch's meta
    device (no weights, no memory); None when it has no such transform."""
    import json
    import warnings

    import torch
    from torchvision.models import get_model

    key = json.dumps([spec.architecture, spec.arch_kwargs, len(spec.classes)], sort_keys=True, default=str)
    if key not in _sizes_cache:
        try:
            with warnings.catch_warnings(), torch.device("meta"):
                warnings.simplefilter("ignore")
                small = _small_architectures()
                kwargs = _num_classes_kwargs(spec)
                if spec.architecture in small:
                    model = small[spec.architecture](num_classes=len(spec.classes) + 1, **kwargs)
                else:
                    model = get_model(spec.architecture, num_classes=len(spec.classes) + 1, weights=None,
                                      weights_backbone=None, **kwargs)
            t = getattr(model, "transform", None)
            _sizes_cache[key] = None if t is None else (int(t.min_size[0]), int(t.max_size),
                                                        getattr(t, "fixed_size", None))
        except Exception:  # a model that cannot be built here: decode whole
            _sizes_cache[key] = None
    return _sizes_cache[key]
