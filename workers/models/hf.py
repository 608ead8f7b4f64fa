"""The `transformers` adapter: Hugging Face detectors and segmenters, and text-prompted (open-vocabulary) detectors.

Covered heads (the config's `architectures[0]`): `*ForObjectDetection` (DETR, Conditional / Deformable DETR,
RT-DETR, RT-DETRv2, D-FINE, YOLOS, ...), `*ForUniversalSegmentation` / `*ForInstanceSegmentation` (Mask2Former,
MaskFormer), `*ForSemanticSegmentation` (SegFormer, UperNet, DPT, ...), and the prompt models OWL-ViT / OWLv2 and
Grounding DINO, whose classes are `settings["prompts"]`.

A model arrives as one packed safetensors file (`workers/models/hf_pack.py`): a saved model directory packed by
`pack_directory`, a file written by `pipeline convert`, or `hf/<repo id>` from the local Hugging Face cache.
Pre- and post-processing are the model's own image processor (resize rule, normalisation, padding) and its
`post_process_*` functions; boxes and masks come back in the pixels of the images given.

Batching: images of the same size run as one batch; different sizes run as separate batches. Padding a mixed-size
batch changes DETR-family and Mask2Former results (their post-processing ignores the padding), so a batch gives
exactly what per-image calls give.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
import types
from typing import Any, ClassVar

import numpy as np

from pipeline.exceptions import CheckpointError, InvalidArgumentError, ModelLoadError
from workers.messages import ModelOutput
from workers.models import hf_post
from workers.models.base import DEFAULT_SETTINGS, ModelAdapter, ModelSpec, register_adapter
from workers.models.checkpoint import write_atomically
from workers.models.hf_pack import (
    build_config,
    check_files,
    import_transformers,
    is_model_dir,
    is_packed,
    model_config,
    offline,
    pack_directory,
    packed_task,
    read_packed,
    resolve_hub_name,
)

__all__ = ["HEADS", "PROMPT_MODELS", "SIZE_MULTIPLE", "TASKS", "TransformersAdapter", "convert"]

# architecture class-name suffix -> (task_type, default post-processing mode)
HEADS = (
    ("ForObjectDetection", "detection", "detection"),
    ("ForUniversalSegmentation", "instance_segmentation", "instance"),
    ("ForInstanceSegmentation", "instance_segmentation", "instance"),
    ("ForSegmentation", "instance_segmentation", "instance"),  # DetrForSegmentation (the panoptic DETR)
    ("ForSemanticSegmentation", "semantic_segmentation", "semantic"),
)
# model_type -> post-processing mode of the text-prompted detectors
PROMPT_MODELS = {"owlv2": "owl", "owlvit": "owl", "grounding-dino": "grounding", "mm-grounding-dino": "grounding"}
# the `task` option of from_file -> (task_type, mode); which heads allow which
TASKS = {
    "detection": ("detection", "detection"),
    "instance_segmentation": ("instance_segmentation", "instance"),
    "panoptic_segmentation": ("instance_segmentation", "panoptic"),
    "semantic_segmentation": ("semantic_segmentation", "semantic"),
}
_MODES_OF_HEAD = {"instance": ("instance", "panoptic", "semantic"), "detection": ("detection",),
                  "semantic": ("semantic",)}
# model_type -> the multiple every input side must be (the deepest feature map's stride: the encoder's fused
# feature maps of RT-DETR-like models must line up exactly)
SIZE_MULTIPLE = {"rt_detr": 32, "rt_detr_v2": 32, "d_fine": 32}
_UNSUPPORTED = {"oneformer": "OneFormer needs a task text input per image, which this adapter does not send yet"}


def _head(config, where: str) -> tuple[str, str, str]:
    archs = getattr(config, "architectures", None) or []
    if not archs:
        raise ModelLoadError(f"{where}/config.json lists no architectures: which head to build is unknown")
    arch = archs[0]
    if config.model_type in _UNSUPPORTED:
        raise ModelLoadError(f"{where}: {arch} is not supported: {_UNSUPPORTED[config.model_type]}")
    for suffix, task_type, mode in HEADS:
        if arch.endswith(suffix):
            return arch, task_type, PROMPT_MODELS.get(config.model_type, mode)
    heads = ", ".join(f"*{s}" for s, _, _ in HEADS)
    raise ModelLoadError(f"{where}: {arch} is a task this adapter does not map; supported heads: {heads}")


def _task(config, where: str, task: str | None) -> tuple[str, str, str]:
    """(architecture, task_type, mode), with the `task` option applied where the head allows it."""
    arch, task_type, mode = _head(config, where)
    if task is None:
        return arch, task_type, mode
    if task not in TASKS:
        raise InvalidArgumentError(f"task must be one of {sorted(TASKS)}; got {task!r}")
    new_type, new_mode = TASKS[task]
    if new_mode not in _MODES_OF_HEAD.get(mode, (mode,)):
        raise InvalidArgumentError(f"{where}: {arch} cannot do {task} (its head does {task_type})")
    return arch, new_type, new_mode


def _model_class(arch: str, where: str):
    """transformers' own model class named `arch` (never a class from the model's directory)."""
    transformers = import_transformers()
    cls = getattr(transformers, arch, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ModelLoadError(f"{where}: transformers {transformers.__version__} has no model class {arch!r} (a "
                             "newer transformers may have it; custom model code is never run)")
    return cls


def _processor_config(parsed: dict[str, Any], where: str) -> dict[str, Any]:
    pre = parsed.get("preprocessor_config.json")
    if isinstance(pre, dict):
        return pre
    proc = parsed.get("processor_config.json")
    if isinstance(proc, dict) and isinstance(proc.get("image_processor"), dict):
        return proc["image_processor"]
    raise CheckpointError(
        f"{where} has no preprocessor_config.json: the image processor (resize, normalisation) is unknown. Save "
        "it next to the model: AutoImageProcessor.from_pretrained(...).save_pretrained(dir)"
    )


def _img_size_of(proc_cfg: dict[str, Any]) -> int | None:
    """The spec's img_size: n for a processor that resizes to a fixed n x n square (RT-DETR, SegFormer, OWLv2),
    which is what an int img_size asks of it; None for the others (shortest/longest edge: the size follows each
    image; a fixed non-square size). Never a (h, w) pair: that would make the loading stage resize exactly,
    before the processor's own rule (OWLv2 pads to a square first)."""
    size = proc_cfg.get("size")
    if isinstance(size, dict) and isinstance(size.get("height"), int) and size.get("height") == size.get("width"):
        return size["height"]
    return None


def _classes(config) -> list[str]:
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    n = max(id2label) + 1 if id2label else 0
    return [id2label.get(i, f"LABEL_{i}") for i in range(n)]


def _has_tokenizer(files: dict[str, str]) -> bool:
    return "tokenizer.json" in files or {"vocab.json", "merges.txt"} <= set(files) or "vocab.txt" in files


def _round_up(sides: list[int], multiple: int) -> Any:
    up = [-(-v // multiple) * multiple for v in sides]
    return up[0] if len(up) == 1 else tuple(up)


def _size_override(img_size: Any, default: Any) -> dict[str, int] | None:
    """`settings["img_size"]` -> the image processor's `size` argument, the processor's own way.

    (h, w) -> {"height": h, "width": w} (exact). An int n: a fixed-size processor (height/width: RT-DETR,
    SegFormer, OWLv2) gets n x n; a shortest/longest-edge processor (DETR family, Mask2Former, Grounding DINO)
    gets shortest_edge = longest_edge = n (the longer side becomes n, aspect kept).
    """
    if img_size is None:
        return None
    if not isinstance(img_size, int):
        return {"height": int(img_size[0]), "width": int(img_size[1])}
    n = int(img_size)
    keys = {k for k in ("height", "width", "shortest_edge", "longest_edge") if getattr(default, k, None)}
    if "height" in keys:
        return {"height": n, "width": n}
    if "shortest_edge" in keys and "longest_edge" not in keys:
        return {"shortest_edge": n}
    return {"shortest_edge": n, "longest_edge": n}


@register_adapter("transformers")
class TransformersAdapter(ModelAdapter):
    """Hugging Face transformers detection, instance / panoptic / semantic segmentation and prompt detectors.

    `spec.arch_kwargs`: `model_type`, `mode` (the post-processing: detection / instance / panoptic / semantic /
    owl / grounding) and `open_vocabulary` (True for prompt models: their classes are `settings["prompts"]`).
    """

    default_settings: ClassVar[dict[str, Any]] = {
        **DEFAULT_SETTINGS,
        "img_size": None,
        "mask_threshold": 0.5,  # instance / panoptic: a pixel belongs to a mask above this probability
        "overlap_mask_area_threshold": 0.8,  # Mask2Former: drop a segment that keeps less of its area than this
        "text_threshold": 0.25,  # Grounding DINO: token score that names the detected phrase
        "prompts": None,  # open-vocabulary models: the list of things to find; class_ids index into it
    }

    # -- driver side ---------------------------------------------------------------------------------------
    @classmethod
    def sniff(cls, path: str, head: bytes) -> bool:
        """A saved model directory (config.json / weights files), a file packed by `pipeline convert`, or (for
        `pipeline convert`) an `hf/<owner>/<repo>` name that is not a path."""
        if os.path.isdir(path):
            return is_model_dir(path)
        if path.startswith("hf/") and not os.path.exists(path):
            return True
        return is_packed(head, path)

    @classmethod
    def from_file(cls, uri: str, data: bytes, **options) -> tuple[ModelSpec, bytes]:
        """The spec of a saved model directory (`uri` a directory, `data` empty: packed by `pack_directory`) or
        of packed model bytes (`pipeline convert`), and the payload every replica loads.

        Options: `task` (detection / instance_segmentation / panoptic_segmentation / semantic_segmentation: a
        universal segmentation head can be post-processed as any of the three; default: the one `pipeline
        convert --task` recorded, else the head's own), `name`, `runtime` (only "pytorch").
        """
        runtime = options.get("runtime")
        if runtime not in (None, "pytorch"):
            raise InvalidArgumentError(f"{uri}: transformers models run with PyTorch; runtime={runtime!r} is not "
                                       "available for them (leave runtime out)")
        if os.path.isdir(uri):
            data = pack_directory(uri)
        files, _ = read_packed(data, uri)
        parsed = check_files(files, uri)
        config = build_config(parsed["config.json"], uri)
        arch, task_type, mode = _task(config, uri, options.get("task") or packed_task(data))
        _model_class(arch, uri)
        proc_cfg = _processor_config(parsed, uri)
        prompt = mode in ("owl", "grounding")
        if prompt and not _has_tokenizer(files):
            raise CheckpointError(f"{uri} is a text-prompted model without tokenizer files (tokenizer.json or "
                                  "vocab/merges): save its processor with processor.save_pretrained(dir)")
        return ModelSpec(
            framework="transformers",
            architecture=arch,
            task_type=task_type,
            classes=[] if prompt else _classes(config),
            img_size=_img_size_of(proc_cfg),
            arch_kwargs={"model_type": config.model_type, "mode": mode, "open_vocabulary": prompt,
                         "processor_size": proc_cfg.get("size"),
                         "processor_resizes": proc_cfg.get("do_resize", True) is not False,
                         "size_multiple": SIZE_MULTIPLE.get(config.model_type)},
            source="file",
            name=options.get("name") or uri.rstrip("/"),
            identity=hashlib.sha256(data).hexdigest(),
        ), data

    @classmethod
    def decode_hint(cls, spec: ModelSpec, img_size: int | tuple[int, int] | None) -> tuple | None:
        """The image processor's resize: height/width ("cover": OWLv2's pad-then-resize keeps less, so this asks
        for more than it needs), shortest/longest edge ("fit"); None when it does not resize or says neither."""
        if isinstance(img_size, tuple):
            return ("cover", *img_size)
        size = spec.arch_kwargs.get("processor_size")
        if not spec.arch_kwargs.get("processor_resizes", True) or not isinstance(size, dict):
            return None
        if img_size is not None and img_size != spec.img_size:
            size = _size_override(img_size, types.SimpleNamespace(**size))
        h, w = size.get("height"), size.get("width")
        if isinstance(h, int) and isinstance(w, int):
            return ("cover", h, w)
        short, long = size.get("shortest_edge"), size.get("longest_edge")
        if not isinstance(short, int) and not isinstance(long, int):
            return None
        inf = float("inf")
        return ("fit", short if isinstance(short, int) else inf, long if isinstance(long, int) else inf)

    @classmethod
    def from_directory(cls, path: str, **options) -> tuple[ModelSpec, bytes]:
        """`from_file` of a saved model directory, packed by `pack_directory`."""
        return cls.from_file(os.fspath(path), b"", **options)

    @classmethod
    def from_hub(cls, name: str, **options) -> tuple[ModelSpec, bytes]:
        """`hf/<owner>/<repo>[@revision]` from the local Hugging Face cache (never downloads), packed like a
        directory: its bytes travel to the replicas, so their nodes need no cache of their own."""
        if not name.startswith("hf/"):
            name = f"hf/{name}"
        return cls.from_directory(resolve_hub_name(name), **{"name": name, **options})

    @classmethod
    def resolve_pretrained(cls, name: str) -> tuple[ModelSpec, bytes]:
        """`deploy("hf/<owner>/<repo>")`: (spec, payload) of the model in the local Hugging Face cache."""
        return cls.from_hub(name)

    @classmethod
    def is_open_vocabulary(cls, spec: ModelSpec) -> bool:
        """Are the model's classes the `prompts` setting (OWL-ViT, OWLv2, Grounding DINO)?"""
        return bool(spec.arch_kwargs.get("open_vocabulary"))

    @classmethod
    def validate_settings(cls, spec: ModelSpec, settings: dict[str, Any]) -> None:
        """`InvalidArgumentError` for settings this model cannot use; the driver calls it before any work."""
        prompts, img_size = settings.get("prompts"), settings.get("img_size")
        what = spec.name or spec.architecture
        if cls.is_open_vocabulary(spec):
            if prompts is None or isinstance(prompts, str) or not isinstance(prompts, list | tuple) or not prompts:
                raise InvalidArgumentError(
                    f"{what} is a text-prompted model: give the classes to find, e.g. classes=['person', 'red car']"
                )
            bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
            if bad:
                raise InvalidArgumentError(f"prompts must be non-empty strings; got {bad!r} in {list(prompts)!r}")
        elif prompts is not None:
            raise InvalidArgumentError(
                f"{what} has fixed classes ({len(spec.classes)}); prompts are only for text-prompted models (OWLv2, "
                "Grounding DINO). Filter its classes with classes=[...]"
            )
        ok_int = isinstance(img_size, int) and not isinstance(img_size, bool) and img_size > 0
        ok_pair = (isinstance(img_size, list | tuple) and len(img_size) == 2
                   and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in img_size))
        if img_size is not None and not (ok_int or ok_pair):
            raise InvalidArgumentError(f"img_size must be a positive int or (height, width); got {img_size!r}")
        multiple = spec.arch_kwargs.get("size_multiple")
        sides = [img_size] if ok_int else list(img_size) if ok_pair else []
        if multiple and any(v % multiple for v in sides):
            raise InvalidArgumentError(
                f"{what} ({spec.architecture}) takes input sides that are multiples of {multiple}; img_size="
                f"{img_size!r} is not: use e.g. {_round_up(sides, multiple)}"
            )

    # -- replica side --------------------------------------------------------------------------------------
    def load(self, state_dict: Any) -> None:
        if isinstance(state_dict, bytes | bytearray | memoryview):
            return self.load_payload(bytes(state_dict))
        raise ModelLoadError("transformers models load from their packed file: use load_payload(bytes)")

    def load_payload(self, payload: bytes) -> None:
        """Rebuild the model and its (image) processor from the packed bytes, offline, in eval mode on
        `self.device`. `ModelLoadError` if the weights do not cover the model (a part would be random)."""
        import torch

        transformers = import_transformers()
        where = self.spec.name or "<payload>"
        files, _ = read_packed(payload, where)
        parsed = check_files(files, where)
        cls = _model_class(self.spec.architecture, where)
        with tempfile.TemporaryDirectory(prefix="pipeline-hf-") as tmp, offline():
            _write_dir(tmp, files, parsed, payload)
            # float32 whatever the file's dtype: the processors give float32 inputs, and the post-processing
            # thresholds are compared in the model's precision
            dtype = torch.float32
            try:
                model, info = cls.from_pretrained(tmp, local_files_only=True, use_safetensors=True,
                                                  output_loading_info=True, dtype=dtype)
                auto = transformers.AutoProcessor if self.spec.arch_kwargs.get("open_vocabulary") \
                    else transformers.AutoImageProcessor
                self.processor = auto.from_pretrained(tmp, local_files_only=True, trust_remote_code=False)
            except ImportError as exc:  # e.g. a timm backbone without timm
                raise ModelLoadError(f"{where}: building {self.spec.architecture} needs {exc}") from None
            except Exception as exc:
                raise ModelLoadError(f"{where}: cannot build {self.spec.architecture}: "
                                     f"{type(exc).__name__}: {str(exc)[:300]}") from None
        _check_loading_info(info, where)
        self.model = model.eval().to(torch.device(self.device))
        self.mode = self.spec.arch_kwargs.get("mode", "detection")
        self._forward_params = set(inspect.signature(self.model.forward).parameters)

    def run(self, images, orig_sizes, settings=None):
        s = self.settings_with_defaults(settings)
        self.validate_settings(self.spec, s)
        if self.mode in ("owl", "grounding"):
            self.check_prompts(s["prompts"])
        return super().run(images, orig_sizes, s)

    def check_loaded_settings(self, settings: dict[str, Any]) -> None:
        s = self.settings_with_defaults(settings)
        if self.mode in ("owl", "grounding") and s.get("prompts"):
            self.check_prompts(s["prompts"])

    def check_prompts(self, prompts: list[str]) -> None:
        """`InvalidArgumentError` for prompts longer than the text encoder reads: OWL reads each prompt alone, up
        to the tokenizer's model_max_length (16 tokens); Grounding DINO reads "p1. p2. ..." up to max_text_len."""
        key = tuple(prompts)
        if key == getattr(self, "_checked_prompts", None):
            return
        tok = self.processor.tokenizer
        if self.mode == "owl":
            limit = int(tok.model_max_length)
            lengths = {p: len(tok(p.strip())["input_ids"]) for p in prompts}
            long = {p: n for p, n in lengths.items() if n > limit}
            if long:
                raise InvalidArgumentError(f"prompts too long for {self.spec.architecture} (at most {limit} "
                                           f"tokens each): {long}")
        else:
            limit = int(getattr(self.model.config, "max_text_len", 256))
            n = len(tok(". ".join(p.strip().lower() for p in prompts) + ".")["input_ids"])
            if n > limit:
                raise InvalidArgumentError(f"prompts too long for {self.spec.architecture}: {n} tokens together, "
                                           f"it reads at most {limit}; use fewer or shorter prompts")
        self._checked_prompts = key

    def preprocess(self, images: list[np.ndarray]) -> Any:
        """The plan only: images grouped by size (each group is one batch of the model). The image processor runs
        in `predict`, where the settings (img_size, prompts) are known."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(tuple(img.shape[:2]), []).append(i)
        return images, list(groups.values())

    def _inputs(self, images: list[np.ndarray], settings: dict[str, Any]):
        kwargs: dict[str, Any] = {"return_tensors": "pt"}
        size = self._size(settings)
        if size is not None:
            kwargs["size"] = size
        if self.mode in ("owl", "grounding"):
            prompts = [p.strip() for p in settings["prompts"]]
            text = [prompts] * len(images)
            return self.processor(text=text, images=images, input_data_format="channels_last",
                                  **kwargs).to(self.device)
        kwargs.update(input_data_format="channels_last", device=self.device)
        return self.processor(images=images, **kwargs).to(self.device)

    def _size(self, settings: dict[str, Any]) -> dict[str, int] | None:
        """The processor's `size` for this call; None (its own) when img_size is the spec's: the processor's."""
        img_size = settings.get("img_size")
        if img_size is None or img_size == self.spec.img_size:
            return None
        return _size_override(img_size, self._image_processor().size)

    def _image_processor(self):
        return getattr(self.processor, "image_processor", self.processor)

    def predict(self, batch: Any, settings: dict[str, Any]) -> Any:
        images, groups = batch
        raw = []
        for idx in groups:
            inputs = self._inputs([images[i] for i in idx], settings)
            extra = {}
            if self._size(settings) is not None and "interpolate_pos_encoding" in self._forward_params:
                extra["interpolate_pos_encoding"] = True  # ViT position embeddings at another input size
            raw.append((idx, inputs, self.model(**inputs, **extra)))
        return raw

    def postprocess(self, raw, input_sizes, orig_sizes, settings) -> list[ModelOutput]:
        results: list[ModelOutput | None] = [None] * len(input_sizes)
        for idx, inputs, outputs in raw:
            sizes = [tuple(input_sizes[i]) for i in idx]
            for i, out in zip(idx, self._post(inputs, outputs, sizes, settings)):
                results[i] = hf_post.finish(out, settings)
        return results  # type: ignore[return-value]

    def _post(self, inputs, outputs, sizes, settings) -> list[ModelOutput]:
        mode, proc = self.mode, self.processor
        if mode == "detection":
            return hf_post.detections(proc, outputs, sizes, settings)
        if mode == "instance":
            return hf_post.instances(proc, outputs, sizes, settings)
        if mode == "panoptic":
            return hf_post.panoptic(proc, outputs, sizes, settings)
        if mode == "semantic":
            universal = getattr(outputs, "class_queries_logits", None) is not None
            return hf_post.semantic(proc, outputs, sizes, settings, universal)
        if mode == "owl":
            return hf_post.owl(proc, outputs, sizes, settings)
        if mode == "grounding":
            return hf_post.grounding(proc, outputs, inputs["input_ids"], sizes, settings)
        raise ModelLoadError(f"unknown post-processing mode {mode!r}")


def convert(source: str | os.PathLike, dest: str | os.PathLike | None = None, task: str | None = None,
            **options: Any) -> str:
    """`pipeline convert`: pack a model directory, or `hf/<owner>/<repo>` from the local cache, into the one file
    `dest` (default: `<directory>.safetensors`, or `<repo>.safetensors` in the current directory), written
    atomically after the model was checked as `deploy` checks it. `task` (a universal segmentation head as
    panoptic_segmentation or semantic_segmentation) is recorded in the file. Returns the path written."""
    if options:
        names = ", ".join("--" + k.replace("_", "-") for k in sorted(options))
        raise InvalidArgumentError(f"{names} {'does' if len(options) == 1 else 'do'} not apply to a transformers "
                                   "model (its files say its classes and sizes); only --task does")
    source = os.fspath(source)
    hub = source.startswith("hf/") and not os.path.exists(source)
    directory = resolve_hub_name(source) if hub else source
    data = pack_directory(directory, task)
    if dest is None:
        base = source.rstrip("/").split("@")[0]
        dest = os.path.basename(base) + ".safetensors" if hub else base + ".safetensors"
    dest = os.path.abspath(os.fspath(dest))
    TransformersAdapter.from_file(dest, data)  # what deploy would refuse is refused now, before writing
    write_atomically(dest, data)
    return dest


def _write_dir(tmp: str, files: dict[str, str], parsed: dict[str, Any], payload: bytes) -> None:
    """The package as the directory `from_pretrained` reads: the text files, and the payload itself as
    model.safetensors (a packed file is a valid safetensors file)."""
    for name, text in files.items():
        if name == "config.json":
            text = json.dumps(model_config(parsed[name]))
        with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
            f.write(text)
    with open(os.path.join(tmp, "model.safetensors"), "wb") as f:
        f.write(payload)


def _check_loading_info(info: dict[str, Any], where: str) -> None:
    missing, mismatched = sorted(info.get("missing_keys") or []), sorted(info.get("mismatched_keys") or [])
    if missing or mismatched:
        what = "; ".join(x for x in (
            f"{len(missing)} weights missing (e.g. {missing[:3]})" if missing else "",
            f"{len(mismatched)} with other shapes (e.g. {[str(m) for m in mismatched[:3]]})" if mismatched else "",
        ) if x)
        raise ModelLoadError(
            f"{where}: the weights do not cover the model ({what}): those parts would be random. The directory's "
            "weights must come from the same model (save it with model.save_pretrained(dir))."
        )
