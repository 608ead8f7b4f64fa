"""What a `deploy(model=...)` argument names, resolved in the driver into the `ModelSpec` replicas are built from
and the bytes they load, checked before any replica starts:

* a pretrained model `"<framework>/<name>"` (`torchvision/fasterrcnn_resnet50_fpn_v2`; `hf/<owner>/<repo>`: the
  local Hugging Face cache, read here and shipped to the replicas);
* a framework's own file or directory (a YOLO `.pt`, an `.onnx`, a saved transformers model), recognised by the
  adapters of `workers.models.base.FILE_FRAMEWORKS` (`ModelAdapter.sniff`, then `from_file`); a bare name like
  `yolo11n.pt` is looked up in the local weights folders (`workers.models.ultralytics.resolve_weights`), never
  downloaded;
* else our self-describing checkpoint (any `pyarrow.fs` URI).
"""

from __future__ import annotations

import os
from typing import Any

from pipeline.exceptions import InvalidArgumentError, ModelLoadError

__all__ = ["PRETRAINED_PREFIXES", "bare_weights_name", "resolve_model"]

# "<prefix>/<name>" names a pretrained model of the framework the prefix stands for.
PRETRAINED_PREFIXES: dict[str, str] = {"hf": "transformers"}

# How much of a file the adapters' `sniff` sees (a zip's first entry names, a protobuf's header, a safetensors header).
SNIFF_BYTES = 1 << 16


def _looks_pretrained(text: str) -> bool:
    return ("/" in text and "://" not in text and not text.startswith((".", "/", "~")) and not os.path.exists(text)
            and not text.endswith((".pth", ".pt", ".ckpt", ".bin", ".onnx", ".safetensors")))


def _pretrained(text: str) -> tuple[Any, bytes | None]:
    from workers.models import get_adapter

    prefix, name = text.split("/", 1)
    try:
        adapter = get_adapter(PRETRAINED_PREFIXES.get(prefix, prefix))
    except ModelLoadError as exc:
        raise ModelLoadError(
            f"{exc}. {text!r} was read as a pretrained model '<framework>/<name>'; if it is a file, it does not "
            "exist"
        ) from None
    resolved = adapter.resolve_pretrained(name)
    # (spec, bytes) from a framework whose pretrained models are files on this machine (transformers: the local
    # Hugging Face cache), shipped to the replicas as a file's; a spec alone: the replicas fetch the weights
    return _checked(adapter, *resolved) if isinstance(resolved, tuple) else (resolved, None)


def resolve_model(model: str | os.PathLike, **options: Any) -> tuple[Any, bytes | None]:
    """A model argument -> (ModelSpec, the bytes replicas load; None for a pretrained model its replicas fetch
    themselves). `options` are deploy's (`runtime`, ...), for the frameworks whose files take them."""
    from workers.models import get_adapter
    from workers.models.base import FILE_FRAMEWORKS
    from workers.models.checkpoint import read_bytes

    text = os.fspath(model) if not isinstance(model, str) else model
    if _looks_pretrained(text) and text.split("/", 1)[0] in {*PRETRAINED_PREFIXES, *_known_frameworks()}:
        _pytorch_only(text, options, "a pretrained model")
        return _pretrained(text)
    if os.path.isdir(os.path.expanduser(text)):
        path = os.path.abspath(os.path.expanduser(text))
        for framework in FILE_FRAMEWORKS:
            adapter = get_adapter(framework)
            if adapter.sniff(path, b""):
                return _checked(adapter, *adapter.from_file(path, b"", **options))
        raise ModelLoadError(f"{text} is a directory that holds no model this package can deploy (a saved "
                             "transformers model has config.json and model.safetensors)")
    if _looks_pretrained(text):
        _pytorch_only(text, options, "a pretrained model")
        return _pretrained(text)
    if bare_weights_name(text):  # "yolo11n.pt": a local weights folder, never a download
        from workers.models.ultralytics import resolve_weights

        text = resolve_weights(text)
    data = read_bytes(text)
    for framework in FILE_FRAMEWORKS:
        adapter = get_adapter(framework)
        if adapter.sniff(text, data[:SNIFF_BYTES]):
            return _checked(adapter, *adapter.from_file(text, data, **options))
    _pytorch_only(text, options, "a pipeline checkpoint")
    return _checkpoint(text, data)


def _pytorch_only(text: str, options: dict[str, Any], what: str) -> None:
    """`runtime` other than PyTorch for a model that only PyTorch runs: an error saying what to do instead."""
    runtime = options.get("runtime")
    if runtime not in (None, "pytorch"):
        raise InvalidArgumentError(
            f"{text} is {what}, which runs with PyTorch; runtime={runtime!r} runs ONNX files. Export the model to "
            "ONNX (a YOLO model: YOLO('best.pt').export(format='onnx'); a torchvision one: torch.onnx.export) and "
            f"deploy the .onnx with runtime={runtime!r}, or leave runtime out"
        )


def bare_weights_name(text: str) -> bool:
    """A file name like "yolo11n.pt" that is no path to an existing file (Ultralytics' way to name its models)."""
    return (text.endswith(".pt") and os.path.basename(text) == text and "://" not in text
            and not os.path.exists(text))


def _known_frameworks() -> list[str]:
    from workers.models import list_frameworks

    return list_frameworks()


def _checked(adapter: Any, spec: Any, payload: bytes) -> tuple[Any, bytes]:
    adapter.validate_spec(spec)
    return spec, payload


def _checkpoint(text: str, data: bytes) -> tuple[Any, bytes]:
    """Our self-describing checkpoint: parsed with `weights_only=True`, its weights checked against the
    architecture on PyTorch's meta device."""
    from workers.models import get_adapter
    from workers.models.base import ModelSpec
    from workers.models.checkpoint import parse_checkpoint

    ckpt = parse_checkpoint(data, text)
    spec = ModelSpec(
        framework=ckpt.framework,
        architecture=ckpt.architecture,
        task_type=ckpt.task_type,
        classes=ckpt.classes,
        img_size=ckpt.img_size,
        arch_kwargs=ckpt.arch_kwargs,
        source="checkpoint",
        name=text,
        identity=f"sha256:{ckpt.sha256}",
    )
    adapter = get_adapter(spec.framework)
    adapter.validate_spec(spec)
    adapter.check_weights(spec, ckpt.state_dict)
    return spec, data
