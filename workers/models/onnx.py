"""The `onnx` adapter: ONNX Runtime sessions for YOLO exports and box/label/score detectors.

`from_file` reads the model's metadata without running anything (see `_onnx_file`): an Ultralytics export is
recognised from its `metadata_props`; any other file needs a sidecar `<model>.onnx.json`. The payload every replica
receives is the model with any external data packed in.

Layouts:
    yolo                 output (B, 4 + classes + extra, anchors): Ultralytics' NMS and decoding (its own functions)
    yolo_end2end         output (B, max_det, 6 + extra) (YOLOv10/YOLO26 NMS-free heads): filtered as Ultralytics does
    rtdetr               output (B, queries, 6) `cx cy w h score class`, normalised (Ultralytics' RT-DETR exports,
                         metadata head "RTDETRDecoder"): inputs stretched to imgsz, kept by score, no NMS
    boxes_labels_scores  outputs boxes (N, 4), labels (N,), scores (N,) (torchvision / DETR-style exports), with or
                         without a batch dimension: kept by score, no NMS (the model did it)

Providers: CUDA on a replica whose device is a GPU (when ONNX Runtime has it; CPU otherwise), CPU else;
`runtime="tensorrt"` uses TensorRT with its engine cache in `trt_cache_dir` (a temporary folder by default).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from typing import Any, ClassVar

import numpy as np

from pipeline.exceptions import CheckpointError, InvalidArgumentError, ModelLoadError
from workers.messages import ModelOutput
from workers.models import _onnx_file as of
from workers.models import _yolo_ops as ops
from workers.models.base import ModelAdapter, ModelSpec, register_adapter
from workers.models.checkpoint import read_bytes

__all__ = ["OnnxAdapter", "write_sidecar", "RUNTIMES"]

log = logging.getLogger(__name__)
RUNTIMES = ("onnx", "tensorrt")


def _spec_from_ultralytics(meta: dict[str, Any], model, uri: str) -> tuple[str, dict[str, Any], list[str], Any]:
    inputs, _ = of.io_shapes(model)
    dims = inputs[0][1]
    imgsz = meta.get("imgsz")
    rtdetr = meta.get("head") == "RTDETRDecoder"  # Ultralytics' RT-DETR: stretched input, no NMS
    kwargs = {
        "source": "ultralytics",
        "layout": "rtdetr" if rtdetr else "yolo_end2end" if meta["end2end"] else "yolo",
        "task": meta["task"],
        "stride": int(meta.get("stride", 32)),
        "kpt_shape": list(meta["kpt_shape"]) if meta.get("kpt_shape") else None,
        "kpt_names": ops.kpt_names_per_class(meta.get("kpt_names")),
        "end2end": bool(meta["end2end"]),
        "dynamic": bool(meta["dynamic"]) or not all(isinstance(d, int) for d in dims[-2:]),
        "batch": dims[0] if isinstance(dims[0], int) else None,
        "normalisation": {"scale": 1 / 255},
        "resize": "stretch" if rtdetr else "letterbox",
    }
    classes = [str(meta["names"][i]) for i in range(len(meta["names"]))]
    return kwargs["layout"], kwargs, classes, imgsz


def _spec_from_sidecar(side: dict[str, Any], model) -> tuple[str, dict[str, Any], list[str], Any]:
    inputs, _ = of.io_shapes(model)
    dims = inputs[0][1]
    kwargs = {k: side[k] for k in ("layout", "task", "normalisation", "resize", "box_format", "label_offset")}
    kwargs.update(
        source="sidecar",
        stride=int(side.get("stride", 32)),
        kpt_shape=side.get("kpt_shape"),
        end2end=side["layout"] == "yolo_end2end",
        dynamic=not all(isinstance(d, int) for d in dims[-2:]),
        batch=(dims[0] if isinstance(dims[0], int) else None) if len(dims) == 4 else 0,  # 0: no batch dimension
        outputs=side.get("outputs"),
    )
    return side["layout"], kwargs, side["classes"], side["img_size"]


def read_onnx(uri: str, data: bytes, sidecar: dict[str, Any] | None = None) -> tuple[ModelSpec, bytes]:
    """Spec and payload of an ONNX file, from its Ultralytics metadata or its sidecar (given or `<uri>.json`)."""
    model = of.parse_model(data, uri)
    of.check_domains(model, uri)
    payload = model.SerializeToString() if of.pack_external_data(model, uri, read_bytes) else data
    meta = of.ultralytics_metadata(model, uri)
    if meta is not None and sidecar is None:
        layout, kwargs, classes, img_size = _spec_from_ultralytics(meta, model, uri)
    else:
        where = "the sidecar given"
        if sidecar is None:
            sidecar, where = of.load_sidecar(uri, read_bytes)
        if sidecar is None:
            raise CheckpointError(
                f"{uri} has no Ultralytics metadata and no sidecar {where}: the pipeline cannot know its classes "
                f"and output layout. Write one with `pipeline convert {os.path.basename(uri)} --classes a,b "
                f"--layout {'|'.join(of.LAYOUTS)}` (workers.models.convert.convert_onnx)"
            )
        layout, kwargs, classes, img_size = _spec_from_sidecar(of.check_sidecar(sidecar, model, uri, where), model)
    inputs, outputs = of.io_shapes(model)
    # The spec says an int (a square) only; a rectangular input size stays the adapter's (see `spec_img_size`).
    spec_size, imgsz = ops.spec_img_size(img_size)
    kwargs.update(input_name=inputs[0][0], output_names=[n for n, _ in outputs], imgsz=imgsz)
    spec = ModelSpec(
        framework="onnx",
        architecture=layout,
        task_type=ops.YOLO_TASKS[kwargs["task"]],
        classes=classes,
        img_size=spec_size,
        arch_kwargs=kwargs,
        source="file",
        name=os.path.basename(uri.rstrip("/")),
        identity=hashlib.sha256(payload).hexdigest(),
    )
    return spec, payload


def write_sidecar(uri: str, out: str | None = None, **fields: Any) -> dict[str, Any]:
    """Write `<uri>.json` (or `out`) from `fields` (classes, layout, img_size, task, kpt_shape, normalisation,
    resize, box_format, label_offset) after checking them against the model. Returns the sidecar written."""
    model = of.parse_model(read_bytes(uri), uri)
    fields = {k: v for k, v in fields.items() if v is not None}
    if not fields and {p.key for p in model.metadata_props} >= {"names", "task"}:
        raise InvalidArgumentError(
            f"{uri} is an Ultralytics export: its metadata says its classes, task and layout, so it needs no "
            "sidecar; deploy it as it is"
        )
    if isinstance(fields.get("classes"), str):
        fields["classes"] = [c.strip() for c in fields["classes"].split(",") if c.strip()]
    checked = of.check_sidecar(fields, model, uri, "the sidecar")
    side = {k: checked[k] for k in ("classes", "layout", "task", "img_size", "normalisation", "resize",
                                    "box_format", "label_offset")}
    side.update({k: fields[k] for k in ("kpt_shape", "outputs", "stride") if k in fields})
    path = out or f"{uri}.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(side, f, indent=2)
    return dict(side, path=path)


def _session(payload: bytes, device: str, kw: dict[str, Any], identity: str):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ModelLoadError(f"ONNX models need ONNX Runtime, which is not installed ({exc}); run {of.ONNX_EXTRA}") from None
    available = ort.get_available_providers()
    cuda = str(device).startswith("cuda")
    device_id = int(str(device).split(":")[1]) if cuda and ":" in str(device) else 0
    providers: list[Any] = []
    if kw.get("runtime") == "tensorrt":
        if "TensorrtExecutionProvider" not in available:
            raise ModelLoadError(
                "runtime='tensorrt' needs ONNX Runtime's TensorRT provider, which this install lacks (providers: "
                f"{available}); install 'cv-pipeline[onnx-gpu]' and the TensorRT libraries, or use the default runtime"
            )
        cache = kw.get("trt_cache_dir") or os.path.join(tempfile.gettempdir(), "cv-pipeline-trt", identity[:16])
        os.makedirs(cache, exist_ok=True)
        providers.append(("TensorrtExecutionProvider", {"device_id": device_id, "trt_engine_cache_enable": True,
                                                        "trt_engine_cache_path": cache}))
    if cuda and "CUDAExecutionProvider" in available:
        providers.append(("CUDAExecutionProvider", {"device_id": device_id}))
    elif cuda:
        log.warning("the replica has %s but ONNX Runtime has no CUDA provider (install %s): running on the CPU",
                    device, of.ONNX_EXTRA)
    providers.append("CPUExecutionProvider")
    options = ort.SessionOptions()  # no custom-op library is ever registered
    try:
        return ort.InferenceSession(payload, options, providers=providers)
    except Exception as exc:
        raise ModelLoadError(f"ONNX Runtime could not load the model: {type(exc).__name__}: {exc}") from None


@register_adapter("onnx")
class OnnxAdapter(ModelAdapter):
    """ONNX Runtime: Ultralytics exports (detect / segment / pose / classify / obb, RT-DETR) and box/label/score
    detectors."""

    default_settings: ClassVar[dict[str, Any]] = {
        "conf": 0.25,
        "iou": None,
        "max_det": 300,
        "agnostic": False,
        "classes": None,
        "img_size": None,
        "retina_masks": False,
    }

    # -- driver side ---------------------------------------------------------------------------------------
    @classmethod
    def validate_settings(cls, spec: ModelSpec, settings: dict[str, Any]) -> None:
        """The run's settings checked before any work: their values (conf, iou, max_det, classes, flags) and
        `img_size` against a fixed-shape export's input."""
        merged = {**cls.default_settings, **settings}
        ops.check_settings(merged, spec.classes)
        requested = merged.get("img_size")
        if not spec.arch_kwargs["dynamic"]:  # (a dynamic one takes any size, rounded up to its stride)
            _input_size(spec, tuple(requested) if isinstance(requested, list) else requested)

    @classmethod
    def sniff(cls, path: str, head: bytes) -> bool:
        """An `.onnx` file whose first protobuf field is the model's IR version (tag 0x08)."""
        return path.lower().endswith(".onnx") and head[:1] == b"\x08"

    @classmethod
    def decode_hint(cls, spec: ModelSpec, img_size: int | tuple[int, int] | None) -> tuple | None:
        if isinstance(img_size, tuple):  # resized exactly while decoding
            return ("cover", *img_size)
        k = spec.arch_kwargs
        requested = img_size if k.get("dynamic") else None  # a fixed input takes only its own size
        if k.get("layout") != "boxes_labels_scores":  # an Ultralytics export: its letterbox (RT-DETR: stretch)
            return ops.decode_hint(k.get("task"), requested, k.get("imgsz"), int(k.get("stride") or 32),
                                   stretch=k.get("layout") == "rtdetr")
        size = requested if requested is not None else k.get("imgsz")
        if size is None:
            return None
        h, w = _pair(size)
        return ("contain", h, w) if k.get("resize") == "letterbox" else ("cover", h, w)

    @classmethod
    def from_file(cls, uri: str, data: bytes, **options: Any) -> tuple[ModelSpec, bytes]:
        """Options: runtime (None or "onnx": ONNX Runtime on the replica's device; "tensorrt": its TensorRT
        provider), trt_cache_dir (TensorRT's engine cache; default `$PIPELINE_TRT_CACHE_DIR`, else a temporary
        folder), sidecar (a dict used instead of `<uri>.json`). What the replicas will need is checked here, so a
        missing extra is an error before any replica starts."""
        unknown = set(options) - {"runtime", "trt_cache_dir", "sidecar"}
        if unknown:
            raise InvalidArgumentError(f"unknown ONNX deploy options {sorted(unknown)}; known: runtime, trt_cache_dir, sidecar")
        runtime = options.get("runtime") or "onnx"
        if runtime not in RUNTIMES:
            raise InvalidArgumentError(
                f"{uri} is an ONNX model: runtime must be None, 'onnx' or 'tensorrt'; got {runtime!r} (a PyTorch "
                "runtime needs the model's own .pt)"
            )
        _require(uri, "onnxruntime", of.ONNX_EXTRA)
        spec, payload = read_onnx(uri, data, options.get("sidecar"))
        if _needs_ultralytics(spec.arch_kwargs):
            from workers.models._ultralytics_load import import_ultralytics

            import_ultralytics(f"{uri} (a YOLO export: its pre- and post-processing are Ultralytics')")
        cache = options.get("trt_cache_dir") or os.environ.get("PIPELINE_TRT_CACHE_DIR") or None
        spec.runtime = runtime
        spec.arch_kwargs.update(runtime=runtime, trt_cache_dir=cache)
        return spec, payload

    # -- replica side --------------------------------------------------------------------------------------
    def load(self, state_dict: dict[str, Any] | None) -> None:
        raise ModelLoadError("ONNX models are deployed from their .onnx file (load_payload), not from a state dict")

    def load_payload(self, payload: bytes) -> None:
        kw = self.spec.arch_kwargs
        self.session = _session(payload, self.device, kw, self.spec.identity or hashlib.sha256(payload).hexdigest())
        inp = self.session.get_inputs()[0]
        self.input_name, self.fp16 = inp.name, "float16" in inp.type
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.kw = kw
        if _needs_ultralytics(kw):
            from workers.models._ultralytics_load import import_ultralytics

            import_ultralytics(f"the YOLO export {self.spec.name!r} (its pre- and post-processing are Ultralytics')")
        self._cls_transforms: dict[tuple, Any] = {}

    def preprocess(self, images: list[np.ndarray]) -> Any:
        return images  # the input size depends on the call's settings: `predict` resizes

    def _imgsz(self, settings: dict[str, Any]) -> list[int]:
        return _input_size(self.spec, settings.get("img_size"))

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        """Run the session on a (B, 3, H, W) float array, in chunks of the export's fixed batch size."""
        x = x.astype(np.float16 if self.fp16 else np.float32, copy=False)
        batch = self.kw.get("batch")
        if batch == 0:  # an input without a batch dimension: one image at a time
            outs = [self.session.run(self.output_names, {self.input_name: xi}) for xi in x]
            return [np.stack([o[k] for o in outs]) for k in range(len(self.output_names))]
        if not batch or batch == len(x):
            return self.session.run(self.output_names, {self.input_name: x})
        parts = []
        for i in range(0, len(x), batch):
            chunk = x[i : i + batch]
            pad = batch - len(chunk)
            if pad:  # a static-batch export rejects short batches: pad with zeros, drop their outputs
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            parts.append([o[: batch - pad] for o in self.session.run(self.output_names, {self.input_name: chunk})])
        return [np.concatenate([p[k] for p in parts]) for k in range(len(self.output_names))]

    def predict(self, batch: list[np.ndarray], settings: dict[str, Any]) -> Any:
        s = ops.check_settings(settings, self.spec.classes)
        imgsz = self._imgsz(s)
        if self.kw["layout"] == "boxes_labels_scores":
            return self._predict_bls(batch, imgsz)
        if self.kw["task"] == "classify":
            return [("classify", list(range(len(batch))), self._run(self._classify_input(batch, imgsz)))]
        if self.kw["layout"] == "rtdetr":  # every image stretched to imgsz (RTDETRPredictor.scale_fill)
            x = np.stack(ops.letterbox(batch, imgsz, self.kw["stride"], auto=False, stretch=True)).transpose(0, 3, 1, 2)
            return [("rtdetr", list(range(len(batch))), self._run(_normalise(x, self.kw["normalisation"])),
                     x.shape[2:])]
        boxed = ops.letterbox(batch, imgsz, self.kw["stride"], auto=self.kw["dynamic"])
        out = []
        for idx in ops.group_by_shape(boxed):
            x = np.stack([boxed[i] for i in idx]).transpose(0, 3, 1, 2)
            out.append(("yolo", idx, self._run(_normalise(x, self.kw["normalisation"])), x.shape[2:]))
        return out

    def _classify_input(self, batch, imgsz) -> np.ndarray:
        key = tuple(imgsz)
        if key not in self._cls_transforms:
            from ultralytics.data.augment import classify_transforms

            self._cls_transforms[key] = classify_transforms(imgsz)
        return ops.classify_batch(batch, self._cls_transforms[key], "cpu", False).numpy()

    def _predict_bls(self, batch, imgsz) -> Any:
        import cv2

        if self.kw["resize"] == "letterbox":
            resized = ops.letterbox(batch, imgsz, self.kw["stride"], auto=False)
        else:
            resized = [cv2.resize(np.ascontiguousarray(img), (imgsz[1], imgsz[0]), interpolation=cv2.INTER_LINEAR)
                       for img in batch]
        x = np.stack(resized).transpose(0, 3, 1, 2)
        return [("bls", list(range(len(batch))), self._run(_normalise(x, self.kw["normalisation"])), tuple(imgsz))]

    def postprocess(self, raw, input_sizes, orig_sizes, settings) -> list[ModelOutput]:
        import torch

        s = ops.check_settings(settings, self.spec.classes)
        outputs: list[ModelOutput | None] = [None] * len(input_sizes)
        for kind, idx, outs, in_shape in _groups(raw):
            if kind == "classify":
                res = ops.classifications(torch.from_numpy(np.asarray(outs[0], np.float32)))
            elif kind == "rtdetr":
                res = ops.rtdetr_detections(torch.from_numpy(np.asarray(outs[0], np.float32)),
                                            [input_sizes[i] for i in idx], s)
            elif kind == "bls":
                res = [_decode_bls(outs, j, in_shape, input_sizes[i], s, self.kw, len(self.spec.classes))
                       for j, i in enumerate(idx)]
            else:
                preds = _yolo_preds(outs, self.kw["task"])
                res = ops.detections(preds, tuple(in_shape), [input_sizes[i] for i in idx], self.kw["task"], s,
                                     len(self.spec.classes), self.kw["end2end"], self.kw.get("kpt_shape"))
            for i, o in zip(idx, res):
                outputs[i] = o
        return outputs  # type: ignore[return-value]


def _needs_ultralytics(kw: dict[str, Any]) -> bool:
    """YOLO layouts and letterboxed inputs are pre- and post-processed with Ultralytics' own functions."""
    return kw["layout"] != "boxes_labels_scores" or kw.get("resize") == "letterbox"


def _require(uri: str, module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ModelLoadError(f"{uri} needs the {module} package, which is not installed; run {extra}")


def _input_size(spec: ModelSpec, requested: Any) -> list[int]:
    """The model input's [h, w] for a requested `img_size` (None: the export's own); a fixed-shape export takes
    only its own size (`InvalidArgumentError` naming it)."""
    kw = spec.arch_kwargs
    own = kw["imgsz"]
    if kw["dynamic"]:
        if kw["layout"] != "boxes_labels_scores":
            return ops.yolo_imgsz(requested, own, kw["stride"])
        return list(_pair(requested if requested is not None else own))
    if requested is not None and list(_pair(requested)) != list(_pair(own)):
        raise InvalidArgumentError(
            f"{spec.name} has a fixed {_pair(own)} input; img_size must be None or that size, got {requested!r}"
        )
    return list(_pair(own))


def _groups(raw):
    for group in raw:
        yield group if len(group) == 4 else (*group, None)


def _pair(size: Any) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _normalise(x: np.ndarray, norm: dict[str, Any]) -> np.ndarray:
    """uint8 NCHW -> float32 as the sidecar says: `scale` multiplies pixels; `mean`/`std` apply to pixels / 255."""
    x = x.astype(np.float32)
    if "mean" in norm:
        mean = np.asarray(norm["mean"], np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(norm["std"], np.float32).reshape(1, 3, 1, 1)
        return (x / 255.0 - mean) / std
    return x * np.float32(norm["scale"]) if norm["scale"] != 1 / 255 else x / 255.0


def _yolo_preds(outs: list[np.ndarray], task: str):
    """ONNX outputs -> what `_yolo_ops.detections` takes (the prototypes are the 4-D output of a segment model)."""
    import torch

    tensors = [torch.from_numpy(np.asarray(o, dtype=np.float32)) for o in outs]
    if task == "segment":
        det = next(t for t in tensors if t.ndim == 3)
        proto = next(t for t in tensors if t.ndim == 4)
        return [det, proto]
    return tensors[0]


def _decode_bls(outs, j: int, in_shape, size, s: dict[str, Any], kw: dict[str, Any], nc: int) -> ModelOutput:
    """One image's boxes / labels / scores -> `ModelOutput`: kept by conf and classes, best first, up to max_det,
    boxes mapped from the model input back to the image (`resize`: letterbox or stretch)."""
    names = kw.get("outputs") or {}
    order = kw["output_names"]
    pick = {k: order.index(names[k]) if k in names else (order.index(k) if k in order else i)
            for i, k in enumerate(("boxes", "labels", "scores"))}
    boxes, labels, scores = (np.asarray(outs[pick[k]]) for k in ("boxes", "labels", "scores"))
    if boxes.ndim == 3:  # batched outputs
        boxes, labels, scores = boxes[j], labels[j], scores[j]
    labels = labels.astype(np.int64) - int(kw["label_offset"])
    keep = (scores >= s["conf"]) & (labels >= 0) & (labels < nc)
    if s.get("classes") is not None:
        keep &= np.isin(labels, s["classes"])
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(-scores[idx], kind="stable")][: int(s["max_det"])]
    xyxy = _to_xyxy(boxes[idx].astype(np.float32), kw["box_format"], in_shape)
    xyxy = _unresize(xyxy, in_shape, size, kw["resize"])
    return ModelOutput(boxes=xyxy, scores=scores[idx].astype(np.float32), class_ids=labels[idx])


def _to_xyxy(b: np.ndarray, fmt: str, in_shape) -> np.ndarray:
    h, w = in_shape
    if fmt.startswith("cxcywh"):
        b = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)
    if fmt.endswith("n"):
        b = b * np.array([w, h, w, h], np.float32)
    return b.reshape(-1, 4)


def _unresize(b: np.ndarray, in_shape, size, resize: str) -> np.ndarray:
    if resize == "letterbox":
        import torch
        from ultralytics.utils import ops as uops

        return uops.scale_boxes(tuple(in_shape), torch.from_numpy(b), tuple(size)).numpy().astype(np.float32)
    (ih, iw), (h, w) = in_shape, size
    b = b * np.array([w / iw, h / ih, w / iw, h / ih], np.float32)
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    return b.astype(np.float32)
