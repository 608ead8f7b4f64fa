"""Ultralytics without its side effects: an offline import, safe reading of `.pt` files, a restricted YAML rebuild.

An Ultralytics `.pt` is a whole pickled `nn.Module`. It is never unpickled with `weights_only=False`:

1. every global the pickle names is listed without running anything (`torch.serialization` disassembles it);
2. each must be on the allow-list below (torch.nn layers, ultralytics.nn layers and models, numpy scalar/dtype
   reconstruction, argument namespaces, ...); anything else refuses the file, naming the global;
3. the file is read with `torch.load(weights_only=True)` and exactly those globals allowed, so torch's own
   restricted unpickler is the last line of defence (it can only build allow-listed classes and call
   allow-listed functions).

A model rebuilt from its YAML (a converted checkpoint) goes through Ultralytics' restricted mode: the YAML
`activation` string is parsed as `nn.<Layer>(literals)` instead of `eval`ed, and every layer named must be an
`nn.Module` class.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import importlib
import io
import os
import pickle
import shutil
import sys
import tempfile
import threading
import zipfile
from typing import Any

from pipeline.exceptions import CheckpointError, ModelLoadError

__all__ = [
    "undo_patches",
    "ULTRALYTICS_EXTRA",
    "prepare_environment",
    "import_ultralytics",
    "checkpoint_globals",
    "refused_globals",
    "safe_load_ultralytics",
    "restricted_build",
    "check_yaml",
]

ULTRALYTICS_EXTRA = "pip install 'cv-pipeline[ultralytics]'"

# torch's restricted unpickler reads its allow-list from one process-wide set that `safe_globals` edits on enter and
# exit: two loads at once would strip each other's entries.
_LOAD_LOCK = threading.Lock()

_CLASS_MODULE_PREFIXES = ("torch.nn.modules.", "ultralytics.nn.modules.", "ultralytics.nn.tasks")
# Plain classes Ultralytics pickles next to the model in older training checkpoints (a loss criterion that was not
# stripped): rebuilt by `__new__` + `__dict__` update, no code of theirs runs.
_PLAIN_CLASS_MODULES = ("ultralytics.utils.loss", "ultralytics.utils.tal")
_NUMPY_NAMES = (
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
)
_TV_TRANSFORMS = ("Compose", "Resize", "CenterCrop", "ToTensor", "Normalize")
_GETATTR_NAMES = frozenset({"forward", "forward_fuse"})


def prepare_environment() -> None:
    """Ultralytics' offline mode and a private settings dir, set before it is imported (its import resolves DNS
    names and writes a settings file in the home directory otherwise; matplotlib, which it imports, writes a font
    cache there too)."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"  # it would otherwise pip-install packages it misses, at run time
    for var, prefix in (("YOLO_CONFIG_DIR", "cv-pipeline-yolo-"), ("MPLCONFIGDIR", "cv-pipeline-mpl-")):
        if not os.environ.get(var):
            os.environ[var] = path = tempfile.mkdtemp(prefix=prefix)
            atexit.register(shutil.rmtree, path, ignore_errors=True)  # one per process: do not leave them behind


def import_ultralytics(what: str = "this model"):
    """`ultralytics.nn.tasks`, imported offline; a `ModelLoadError` naming the extra when it is not installed."""
    prepare_environment()
    import logging

    quiet = "ultralytics" not in sys.modules  # its first import announces the private settings file it creates
    try:
        if quiet:  # ("Creating new Ultralytics Settings ... file", three lines in every process): not news here
            logging.disable(logging.INFO)
        from ultralytics.nn import tasks
    except ImportError as exc:
        raise ModelLoadError(
            f"{what} needs the Ultralytics package, which is not installed ({exc}). Install the extra: "
            f"{ULTRALYTICS_EXTRA} (Ultralytics is AGPL-3.0), or convert the model to ONNX on a machine that has it."
        ) from None
    finally:
        if quiet:
            logging.disable(logging.NOTSET)
    undo_patches()
    return tasks


def undo_patches() -> None:
    """Put back what importing Ultralytics replaced process-wide: `PIL.Image.open` (its version installs a HEIF
    plugin on the first image Pillow cannot identify and raises other errors than Pillow's, which would change how
    the pipeline's loaders report a bad image) and `torch.save` (a retrying wrapper)."""
    import sys

    import torch
    from PIL import Image

    patches = sys.modules.get("ultralytics.utils.patches")
    if patches is None:
        return
    if Image.open is getattr(patches, "image_open", None) and hasattr(patches, "_image_open"):
        Image.open = patches._image_open
    if torch.save is getattr(patches, "torch_save", None) and hasattr(patches, "_torch_save"):
        torch.save = patches._torch_save


# ------------------------------------------------------------------------------------------------- scanning


def checkpoint_globals(data: bytes, uri: str) -> set[str]:
    """Every global (`module.name`) the pickle of a `torch.save` zip names, found without running anything."""
    import torch
    from torch import _weights_only_unpickler as wu

    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise CheckpointError(_not_zip_message(data, uri))
    try:
        names = set(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)))
    except Exception as exc:  # a zip that is not a torch archive, a TorchScript archive, a damaged pickle
        raise CheckpointError(f"{uri} is not a torch.save checkpoint ({type(exc).__name__}: {exc})") from None
    # The public scan leaves out globals another library registered as safe in this process; the full list
    # keeps the allow-list ours alone.
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if pkl and hasattr(wu, "get_globals_in_pkl"):
            with contextlib.suppress(Exception):
                names |= set(wu.get_globals_in_pkl(io.BytesIO(zf.read(pkl[0]))))
    return names - set(wu._get_allowed_globals())  # what torch allows by itself (tensors, OrderedDict...)


def _not_zip_message(data: bytes, uri: str) -> str:
    """Why a file that is not a zip is refused; a plain pickle is disassembled (never run) to name what it calls."""
    from workers.models.checkpoint import pickle_globals

    found = pickle_globals(data)
    called = f"; its pickle calls {', '.join(found)}" if found else ""
    return (
        f"{uri} was refused: it is not a torch.save zip archive (an Ultralytics .pt always is){called}. "
        "Nothing in it was run. Save the model again with Ultralytics (model.save('best.pt')) or deploy an export."
    )


def _resolve(name: str):
    """The object an allow-listed global name stands for, or None when the name is not allowed."""
    if name in _aliases():
        return _aliases()[name]
    module, _, attr = name.rpartition(".")
    if name in _NUMPY_NAMES or module == "numpy.dtypes":
        return _numpy_global(name)
    if module.startswith(_CLASS_MODULE_PREFIXES) or module == "ultralytics.nn.tasks":
        obj = _import_attr(module, attr)
        import torch.nn as nn

        return obj if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == module else None
    if module in _PLAIN_CLASS_MODULES:
        obj = _import_attr(module, attr)
        return obj if isinstance(obj, type) and obj.__module__ == module else None
    if module == "torchvision.transforms.transforms" and attr in _TV_TRANSFORMS:
        return _import_attr(module, attr)
    return None


def _import_attr(module: str, attr: str):
    try:
        return getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return None


def _numpy_global(name: str):
    import numpy as np

    if name.endswith(".scalar"):
        return np.float64(0).__reduce__()[0]  # numpy's scalar reconstructor, wherever this numpy keeps it
    if name.endswith("._reconstruct"):
        return np.ndarray.__reduce__(np.zeros(1))[0]
    if name == "numpy.ndarray":
        return np.ndarray
    if name == "numpy.dtype":
        return np.dtype
    obj = getattr(getattr(np, "dtypes", None), name.rpartition(".")[2], None)  # numpy.dtypes.Float64DType
    return obj if isinstance(obj, type) and issubclass(obj, np.dtype) else None


_ALIASES: dict[str, Any] | None = None


def _aliases() -> dict[str, Any]:
    """Names old or foreign-platform checkpoints use for objects that live elsewhere now (as Ultralytics maps them)."""
    global _ALIASES
    if _ALIASES is None:
        import pathlib
        import types

        import torch.nn as nn

        tasks = import_ultralytics("an Ultralytics checkpoint")
        from ultralytics.utils import IterableSimpleNamespace

        aliases: dict[str, Any] = {
            "builtins.getattr": _restricted_getattr,
            "types.SimpleNamespace": types.SimpleNamespace,
            "argparse.Namespace": types.SimpleNamespace,
            "ultralytics.utils.IterableSimpleNamespace": IterableSimpleNamespace,
            "ultralytics.yolo.utils.IterableSimpleNamespace": IterableSimpleNamespace,
            "ultralytics.nn.modules.block.Silence": nn.Identity,  # YOLOv9e
            "ultralytics.nn.tasks.YOLOv10DetectionModel": tasks.DetectionModel,
            "torchvision.transforms.functional.InterpolationMode": _import_attr(
                "torchvision.transforms.functional", "InterpolationMode"
            ),
        }
        for mod in ("pathlib", "pathlib._local"):
            for cls in ("PosixPath", "WindowsPath"):
                aliases[f"{mod}.{cls}"] = pathlib.PurePosixPath  # a path string, whatever system wrote it
        _ALIASES = aliases
    return _ALIASES


def _restricted_getattr(obj: Any, name: str) -> Any:
    """`getattr` as checkpoints use it: a fused layer's bound `forward_fuse`, an enum member, a layer's `forward`
    function. Anything else (a dunder, a module's globals) is refused, so a pickle cannot walk to `os`."""
    import enum

    import torch.nn as nn

    if not name.startswith("_"):
        if isinstance(obj, type) and issubclass(obj, enum.Enum):
            return getattr(obj, name)
        if isinstance(obj, type) and issubclass(obj, nn.Module) and name in _GETATTR_NAMES:
            return getattr(obj, name)
        if isinstance(obj, nn.Module) and name in _GETATTR_NAMES:
            return getattr(type(obj), name).__get__(obj)
    raise pickle.UnpicklingError(f"getattr({type(obj).__name__}, {name!r}) is not allowed in a checkpoint")


def refused_globals(names: set[str]) -> list[str]:
    """The names not on the allow-list, sorted."""
    return sorted(n for n in names if _resolve(n) is None)


def safe_load_ultralytics(data: bytes, uri: str) -> dict[str, Any]:
    """Scan, then unpickle with `weights_only=True` and exactly the allow-listed globals the file names.

    Returns the checkpoint dict; raises `CheckpointError` naming any refused global (nothing has run then).
    """
    import torch

    import_ultralytics(uri)
    names = checkpoint_globals(data, uri)
    refused = refused_globals(names)
    if refused:
        raise CheckpointError(
            f"{uri} was refused: it references {', '.join(refused)}, which "
            f"{'is' if len(refused) == 1 else 'are'} not on the allow-list of an Ultralytics checkpoint (torch.nn "
            "and ultralytics.nn layers, numpy scalars, argument namespaces); loading it could run code, which is "
            "never allowed. Nothing in it was run. If the file is yours, save it again with Ultralytics "
            "(model.save('best.pt')) or export it to ONNX."
        )
    entries = [(_resolve(n), n) for n in sorted(names)]
    if "numpy.dtype" in names:  # numpy's dtype classes are pushed by a reduce, so the scan cannot see them
        entries += _numpy_dtype_classes()
    try:
        with _LOAD_LOCK, torch.serialization.safe_globals(entries):
            ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{uri} was refused by the restricted unpickler: {_first_line(str(exc))}") from None
    except Exception as exc:
        raise CheckpointError(f"{uri} is not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{uri} holds a {type(ckpt).__name__}, not an Ultralytics checkpoint dict")
    return ckpt


def _numpy_dtype_classes() -> list:
    import numpy as np

    out = []
    for code in "?bBhHiIlLqQefdgFDG":
        cls = type(np.dtype(code))
        out.append((cls, f"numpy.dtypes.{cls.__name__}"))
    return out


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else text)[:300]


# ---------------------------------------------------------------------------------------------- YAML rebuild


def check_yaml(cfg: Any, where: str) -> dict[str, Any]:
    """A model YAML dict that names only `nn.Module` layers and a literal activation; `ModelLoadError` otherwise.

    Checked before Ultralytics sees it: its `parse_model` looks layer names up in its module's globals and (outside
    restricted mode) `eval`s the activation string.
    """
    import torch.nn as nn

    tasks = import_ultralytics(where)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("backbone"), list) or not isinstance(cfg.get("head"), list):
        raise ModelLoadError(f"{where}: the model YAML must be a dict with 'backbone' and 'head' lists")
    for i, layer in enumerate(cfg["backbone"] + cfg["head"]):
        if not isinstance(layer, list | tuple) or len(layer) != 4 or not isinstance(layer[2], str):
            raise ModelLoadError(f"{where}: YAML layer {i} must be [from, repeats, module, args]; got {layer!r:.80}")
        name = layer[2]
        obj = getattr(nn, name[3:], None) if name.startswith("nn.") else getattr(tasks, name, None)
        if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
            raise ModelLoadError(f"{where}: YAML layer {i} names {name!r}, which is not an Ultralytics or torch.nn layer")
    act = cfg.get("activation")
    if act is not None:
        _check_activation(act, where)
    return cfg


def _check_activation(act: Any, where: str) -> None:
    try:
        call = ast.parse(str(act).strip(), mode="eval").body
        ok = isinstance(call, ast.Call) and all(isinstance(a, ast.Constant) for a in call.args)
        ok = ok and all(isinstance(k.value, ast.Constant) for k in call.keywords)
        func = ast.unparse(call.func) if ok else ""
        ok = ok and func.count(".") in (1, 2) and func.startswith(("nn.", "torch.nn."))
    except SyntaxError:
        ok = False
    if not ok:
        raise ModelLoadError(
            f"{where}: the YAML activation {act!r} is not of the form nn.<Layer>(literal arguments); it is never "
            "evaluated"
        )


@contextlib.contextmanager
def restricted_build():
    """Build Ultralytics models in its restricted mode on this thread (no `eval` of YAML strings)."""
    tasks = import_ultralytics("an Ultralytics model")
    safe = getattr(tasks, "_SafeLoad", None)
    local = getattr(safe, "_local", None)
    if local is None:  # an Ultralytics without restricted mode: `check_yaml` alone keeps strings from being run
        yield
        return
    previous = getattr(local, "active", False)
    local.active = True
    try:
        yield
    finally:
        local.active = previous
