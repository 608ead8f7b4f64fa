"""The self-describing checkpoint file.

A checkpoint is one `torch.save`d dict that says what it is::

    {"format": "pipeline-checkpoint/1", "framework": "torchvision", "architecture": "maskrcnn_resnet50_fpn",
     "task_type": "instance_segmentation", "classes": ["circle", ...], "img_size": [256, 256] | 256 | None,
     "arch_kwargs": {...}, "state_dict": {...}}

It is always read with `torch.load(weights_only=True)`, so a checkpoint can never run code: a pickle that would
call a function is refused by the unpickler before anything runs. Files are read through `pyarrow.fs`, so local
paths, `file://` and any URI pyarrow understands (`s3://`, `gs://`, `hdfs://`) work.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any

from pipeline.exceptions import CheckpointError, NotFoundError
from workers.models.base import TASK_ALIASES, TASK_TYPES, normalize_task_type

FORMAT = "pipeline-checkpoint/1"
REQUIRED_KEYS = ("format", "framework", "architecture", "task_type", "classes", "state_dict")

__all__ = ["FORMAT", "TASK_TYPES", "Checkpoint", "read_bytes", "load_checkpoint", "parse_checkpoint", "pickle_globals",
           "save_checkpoint", "write_atomically"]


@dataclass
class Checkpoint:
    """A parsed checkpoint. `state_dict` tensors are float32 whatever precision they were stored in."""

    framework: str
    architecture: str
    task_type: str
    classes: list[str]
    img_size: int | tuple[int, int] | None
    arch_kwargs: dict[str, Any]
    state_dict: dict[str, Any] = field(repr=False)
    sha256: str = ""
    uri: str = ""


def _filesystem_and_path(uri: str):
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises ArrowInvalid / ArrowNotImplementedError for unknown schemes
        raise CheckpointError(f"cannot open checkpoint URI {uri!r}: {exc}") from exc


def read_bytes(uri: str | os.PathLike) -> bytes:
    """The bytes of a local path, `file://` URI or any `pyarrow.fs` URI. Missing -> `NotFoundError`."""
    uri = os.fspath(uri)
    fs, path = _filesystem_and_path(uri)
    import pyarrow.fs as pafs

    try:
        info = fs.get_file_info(path)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {uri!r}: {exc}") from exc
    if info.type == pafs.FileType.NotFound:
        raise NotFoundError(f"checkpoint {uri!r} does not exist")
    if info.type != pafs.FileType.File:
        raise CheckpointError(f"checkpoint {uri!r} is not a file")
    with fs.open_input_stream(path) as f:
        return f.read()


def _normalise_img_size(value: Any) -> int | tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return (int(value[0]), int(value[1]))
    raise CheckpointError(f"checkpoint img_size must be a positive int, [h, w] or null; got {value!r}")


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
    return (lines[0] if lines else text.strip())[:200]


def pickle_globals(data: bytes) -> list[str]:
    """The globals (`module.name`) a plain pickle of any protocol names, read with `pickletools` (a disassembler:
    nothing is built or run); [] when `data` is no readable pickle."""
    import pickletools

    found: list[str] = []
    strings: list[str] = []  # the strings pushed so far, for STACK_GLOBAL (protocol 4+: module and name pushed)
    memo: dict[int, str] = {}
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                strings.append(str(arg))
            elif op.name == "MEMOIZE" and strings:
                memo[len(memo)] = strings[-1]
            elif op.name in ("BINGET", "LONG_BINGET", "GET") and arg in memo:
                strings.append(memo[arg])
    except Exception:  # truncated or not a pickle: what was found so far
        pass
    return sorted(set(found))


def _globals_in_pickle(data: bytes) -> str:
    """The globals a plain (not zipped) pickle names, for the refusal message; "" if none."""
    return ", ".join(pickle_globals(data))


# What a file that no framework claimed turns out to be, from its first bytes: (magic, offset, what it is).
_NOT_MODELS = (
    (b"\x89PNG\r\n\x1a\n", 0, "a PNG image"), (b"\xff\xd8\xff", 0, "a JPEG image"), (b"GIF8", 0, "a GIF image"),
    (b"BM", 0, "a BMP image"), (b"II*\x00", 0, "a TIFF image"), (b"MM\x00*", 0, "a TIFF image"),
    (b"ftyp", 4, "an MP4 / MOV video (or other ISO media)"), (b"\x1aE\xdf\xa3", 0, "a Matroska / WebM video"),
    (b"RIFF", 0, "a RIFF file (AVI video, WAV sound or WebP image)"), (b"\x1f\x8b", 0, "a gzip archive"),
    (b"%PDF", 0, "a PDF document"),
)


def not_a_model(data: bytes, uri: str) -> str | None:
    """Why a file that no adapter recognised and that is no checkpoint is not a model, when its first bytes or
    name say what it is instead (an image, a video, a broken .onnx); None when they do not."""
    for magic, offset, what in _NOT_MODELS:
        if data[offset:offset + len(magic)] == magic:
            return (f"{uri} is not a model file: it is {what}. Deploy a pipeline checkpoint, an Ultralytics .pt, an "
                    ".onnx or a transformers model folder")
    name = uri.lower().rstrip("/")
    if name.endswith(".onnx"):
        return (f"{uri} is not a valid ONNX model: an ONNX file is a protobuf ModelProto that starts with its "
                "ir_version field, and this one does not (a truncated download, or another file renamed?)")
    return None


def parse_checkpoint(data: bytes, uri: str = "<bytes>") -> Checkpoint:
    """Parse checkpoint bytes with `torch.load(weights_only=True)`; raise `CheckpointError` naming the problem."""
    import torch

    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        # torch names the global the pickle wanted: "Unsupported global: GLOBAL os.system was not an allowed
        # global ..." or "Trying to load unsupported GLOBAL posix.system whose module posix is blocked."
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL)\s+([\w.]+)", text)
        called = found.group(1) if found else _globals_in_pickle(data)
        if called:
            raise CheckpointError(
                f"{uri} was refused: it is not a plain-weights checkpoint; loading it would run code "
                f"(it calls {called}), which is never allowed. Nothing in it was run"
            ) from None
        other = not_a_model(data, uri)
        if other:
            raise CheckpointError(other) from None
        marker = "WeightsUnpickler error:"
        detail = text.split(marker, 1)[1].strip().splitlines()[0] if marker in text else _first_line(text)
        raise CheckpointError(f"{uri} is not a PyTorch checkpoint file (unreadable pickle: {detail})") from None
    except Exception as exc:
        # a file that is not a zip nor a pickle at all: torch's own exception (often a bare KeyError of the
        # first byte) says nothing useful
        raise CheckpointError(
            not_a_model(data, uri) or f"{uri} is not a PyTorch checkpoint file (neither a torch.save zip archive nor "
            f"a pickle; {type(exc).__name__})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = f"format={obj.get('format')!r}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise CheckpointError(
            f"{uri} is not a pipeline checkpoint (expected format {FORMAT!r}, found {found}); "
            "save one with workers.models.save_checkpoint(...)"
        )
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"{uri} lacks the keys {missing}")
    task_type = normalize_task_type(obj["task_type"])
    if task_type is None:
        raise CheckpointError(f"{uri}: unknown task_type {obj['task_type']!r}; expected one of {list(TASK_TYPES)} "
                              f"(or the Supervisely SDK's {list(TASK_ALIASES)})")
    classes = obj["classes"]
    if not isinstance(classes, list | tuple) or not all(isinstance(c, str) for c in classes) or not classes:
        raise CheckpointError(f"{uri}: classes must be a non-empty list of strings")
    state_dict = obj["state_dict"]
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{uri}: state_dict must be a dict of tensors")
    state_dict = {
        k: (v.float() if isinstance(v, torch.Tensor) and v.dtype in (torch.float16, torch.bfloat16) else v)
        for k, v in state_dict.items()
    }
    return Checkpoint(
        framework=str(obj["framework"]),
        architecture=str(obj["architecture"]),
        task_type=task_type,
        classes=[str(c) for c in classes],
        img_size=_normalise_img_size(obj.get("img_size")),
        arch_kwargs=dict(obj.get("arch_kwargs") or {}),
        state_dict=state_dict,
        sha256=hashlib.sha256(data).hexdigest(),
        uri=uri,
    )


def load_checkpoint(uri: str | os.PathLike) -> Checkpoint:
    """Read and parse a checkpoint from a path or URI."""
    uri = os.fspath(uri)
    return parse_checkpoint(read_bytes(uri), uri)


def save_checkpoint(
    model: Any,
    path: str | os.PathLike,
    *,
    framework: str,
    architecture: str,
    task_type: str,
    classes: list[str],
    img_size: int | tuple[int, int] | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    half: bool = False,
) -> str:
    """Write `model` (a `torch.nn.Module` or a state dict) as a self-describing checkpoint.

    Args:
        half: store floating-point weights as float16 (half the file); they load back as float32.
    Returns:
        the sha256 of the file written.
    """
    import torch

    if normalize_task_type(task_type) is None:
        raise ValueError(f"task_type must be one of {list(TASK_TYPES)} (or the Supervisely SDK's "
                         f"{list(TASK_ALIASES)}); got {task_type!r}")
    task_type = normalize_task_type(task_type)
    state_dict = model.state_dict() if hasattr(model, "state_dict") else dict(model)
    state_dict = {
        k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
        for k, v in state_dict.items()
    }
    payload = {
        "format": FORMAT,
        "framework": framework,
        "architecture": architecture,
        "task_type": task_type,
        "classes": list(classes),
        "img_size": list(img_size) if isinstance(img_size, tuple | list) else img_size,
        "arch_kwargs": dict(arch_kwargs or {}),
        "state_dict": state_dict,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    path = os.fspath(path)
    fs, fpath = _filesystem_and_path(path)
    if "://" not in path or path.startswith("file://"):
        write_atomically(fpath, data)
    else:  # object stores write an object whole on close
        with fs.open_output_stream(fpath) as f:
            f.write(data)
    return hashlib.sha256(data).hexdigest()


def write_atomically(path: str, data: bytes) -> None:
    """Write a local file beside itself and rename it into place: never a half-written model file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
