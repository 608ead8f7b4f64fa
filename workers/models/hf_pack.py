"""One file for a saved Hugging Face transformers model: packing, reading, and the safe-loading rules.

A transformers model is a directory (`config.json`, `model.safetensors`, `preprocessor_config.json`, tokenizer
files). It travels to the replicas, and `pipeline convert` writes it, as ONE safetensors file: the weights are
its tensors, unchanged, and the JSON/text files ride in its header's `__metadata__`::

    {"__metadata__": {"pipeline": "transformers/1", "format": "pt",
                      "pipeline.files": "{\\"config.json\\": \\"...\\", \\"preprocessor_config.json\\": ...}"},
     "<tensor name>": {"dtype": ..., "shape": ..., "data_offsets": ...}, ...}

`pipeline` is written first, so the first 50 bytes of a file say what it is (`sniff`). The file is a valid
safetensors file, so no pickle is ever read: a `pytorch_model.bin` is accepted only when packing, through
`torch.load(weights_only=True)`, and its tensors are re-saved as safetensors.

Safety rules, checked on the JSON alone before any model code runs (`check_files`): no `auto_map` (custom code,
`trust_remote_code`), only processor / tokenizer classes that ship with transformers, and no backbone that
transformers would look up on the Hugging Face Hub by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
from typing import Any

from pipeline.exceptions import CheckpointError, ModelLoadError

__all__ = [
    "FORMAT",
    "TEXT_FILES",
    "EXTRA",
    "SNIFF_BYTES",
    "is_packed",
    "is_model_dir",
    "pack_directory",
    "read_packed",
    "check_files",
    "resolve_hub_name",
    "packed_task",
    "import_transformers",
    "offline",
    "build_config",
    "model_config",
]

FORMAT = "transformers/1"
EXTRA = "pip install 'cv-pipeline[transformers]'"
# The JSON / text files a model, its image processor and its tokenizer are rebuilt from. Anything else in the
# directory (README, *.py, training state, other weights formats) is left out: nothing in it is needed, and code
# must never travel.
TEXT_FILES = (
    "config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
)
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
# what a packed file's bytes 8..50 are: its header starts with this metadata key
_MARKER = b'{"__metadata__":{"pipeline":"transformers/'
SNIFF_BYTES = 8 + len(_MARKER)
# safetensors refuses headers above 100 MB; tokenizer files are at most a few MB
_MAX_HEADER = 100_000_000


def import_transformers():
    """`transformers`, or a `ModelLoadError` naming the extra that installs it."""
    try:
        import transformers
    except ImportError as exc:
        raise ModelLoadError(
            f"transformers models need the transformers extra: {EXTRA} ({type(exc).__name__}: {exc})"
        ) from None
    return transformers


_offline_lock = threading.Lock()


@contextlib.contextmanager
def offline():
    """No request to the Hugging Face Hub can leave this block: huggingface_hub raises `OfflineModeIsEnabled`.

    Sets huggingface_hub's own switch (read at each request), not only the environment (read once, at import).
    """
    from huggingface_hub import constants

    with _offline_lock:
        saved = constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
        constants.HF_HUB_OFFLINE = True
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            yield
        finally:
            constants.HF_HUB_OFFLINE = saved[0]
            if saved[1] is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = saved[1]


def is_packed(head: bytes, path: str | None = None) -> bool:
    """Do the first bytes of a file (`SNIFF_BYTES` = 50 are enough) belong to a packed transformers model? A
    shorter `head` of a local `path` is completed from the file."""
    if len(head) < SNIFF_BYTES and path and os.path.isfile(path):
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    return head[8:SNIFF_BYTES] == _MARKER


def is_model_dir(path: str) -> bool:
    """Does `path` look like a saved transformers model directory (complete or not)? It holds transformers
    weights files, or a config.json that names a model_type or architectures."""
    if not os.path.isdir(path):
        return False
    names = set(os.listdir(path))
    if names & set(WEIGHTS_FILES):
        return True
    if "config.json" not in names:
        return False
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and ("model_type" in config or "architectures" in config)


# ---------------------------------------------------------------------------------------------------------------
# safetensors headers


def _split(data: bytes, where: str) -> tuple[dict[str, Any], memoryview]:
    """A safetensors file's header (dict) and its tensor data; `CheckpointError` if it is not one."""
    if len(data) < 8:
        raise CheckpointError(f"{where} is not a safetensors file (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER or 8 + n > len(data):
        raise CheckpointError(f"{where} is not a safetensors file (header length {n} does not fit the file)")
    try:
        header = json.loads(bytes(data[8 : 8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{where} is not a safetensors file (header: {exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where} is not a safetensors file (header is not a JSON object)")
    return header, memoryview(data)[8 + n :]


def _join(header: dict[str, Any], body: bytes | memoryview) -> bytes:
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the tensor data on 8 bytes
    return b"".join([struct.pack("<Q", len(raw)), raw, body])


def _with_files(weights: bytes, files: dict[str, str], where: str, task: str | None = None) -> bytes:
    """A safetensors file's bytes with `files` (and the `task` it is post-processed for, when given) in its
    metadata; the tensor bytes are kept as they are."""
    header, body = _split(weights, where)
    old_meta = header.pop("__metadata__", None) or {}
    meta = {"pipeline": FORMAT, "format": "pt"}
    meta.update({k: v for k, v in old_meta.items() if not k.startswith("pipeline") and k != "format"})
    meta["pipeline.files"] = json.dumps(dict(sorted(files.items())), ensure_ascii=True)
    if task is not None:
        meta["pipeline.task"] = task
    return _join({"__metadata__": meta, **header}, body)


def packed_task(data: bytes) -> str | None:
    """The task `pipeline convert --task` recorded in a packed model (None: the head's own)."""
    header, _ = _split(data, "<bytes>")
    task = (header.get("__metadata__") or {}).get("pipeline.task")
    return task if isinstance(task, str) else None


def read_packed(data: bytes, where: str = "<bytes>") -> tuple[dict[str, str], list[str]]:
    """The files (name -> text) and the tensor names of a packed model; `CheckpointError` if it is not one."""
    header, _ = _split(data, where)
    meta = header.get("__metadata__") or {}
    if meta.get("pipeline") != FORMAT:
        raise CheckpointError(
            f"{where} is a safetensors file but not a packed transformers model (no pipeline={FORMAT!r} "
            "in its metadata); pack the model's directory with `pipeline convert <dir> <file>`"
        )
    try:
        files = json.loads(meta.get("pipeline.files", ""))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{where}: unreadable pipeline.files metadata ({exc})") from None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise CheckpointError(f"{where}: pipeline.files must map file names to text")
    unknown = sorted(set(files) - set(TEXT_FILES))
    if unknown:
        raise CheckpointError(f"{where}: unexpected files {unknown} in the package (allowed: {list(TEXT_FILES)})")
    return files, [k for k in header if k != "__metadata__"]


# ---------------------------------------------------------------------------------------------------------------
# directories


def _read_text_files(path: str) -> dict[str, str]:
    files = {}
    for name in TEXT_FILES:
        p = os.path.join(path, name)
        if os.path.isfile(p):
            with open(p, encoding="utf-8") as f:
                files[name] = f.read()
    return files


def _load_bin(path: str) -> dict[str, Any]:
    """A `pytorch_model.bin` read with `weights_only=True`: a pickle that would call anything is refused."""
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:  # the globals its pickle names, read without building anything
            called = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:
            called = ""
        raise CheckpointError(
            f"{path} was refused: it is a pickle that is not plain weights; loading it would run code"
            + (f" (it calls {called})" if called else "") + ", which is never allowed. Nothing in it was run. "
            "Save the model with safetensors (model.save_pretrained(dir)) instead."
        ) from None
    except Exception as exc:
        raise CheckpointError(f"{path} is not a PyTorch weights file ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return obj


def _index_shards(path: str, index_name: str) -> list[str]:
    with open(os.path.join(path, index_name), encoding="utf-8") as f:
        weight_map = json.load(f).get("weight_map") or {}
    shards = sorted(set(weight_map.values()))
    bad = [s for s in shards if os.path.basename(s) != s or not os.path.isfile(os.path.join(path, s))]
    if not shards or bad:
        raise CheckpointError(f"{path}/{index_name} lists missing or invalid shard files: {bad or 'none'}")
    return [os.path.join(path, s) for s in shards]


def _weights_bytes(path: str) -> bytes:
    """The model's weights as the bytes of one safetensors file."""
    import safetensors.torch

    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        with open(single, "rb") as f:
            return f.read()
    tensors: dict[str, Any] = {}
    if os.path.isfile(os.path.join(path, "model.safetensors.index.json")):
        for shard in _index_shards(path, "model.safetensors.index.json"):
            tensors.update(safetensors.torch.load_file(shard))
    elif os.path.isfile(os.path.join(path, "pytorch_model.bin.index.json")):
        for shard in _index_shards(path, "pytorch_model.bin.index.json"):
            tensors.update(_load_bin(shard))
    elif os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        tensors = _load_bin(os.path.join(path, "pytorch_model.bin"))
    else:
        raise CheckpointError(
            f"{path} has no weights: expected model.safetensors (or sharded model-*.safetensors with "
            "model.safetensors.index.json, or pytorch_model.bin); save the model with model.save_pretrained(dir)"
        )
    # tied weights share storage, which safetensors refuses: each tensor gets its own copy
    return safetensors.torch.save({k: v.detach().contiguous().clone() for k, v in tensors.items()},
                                  metadata={"format": "pt"})


def pack_directory(path: str | os.PathLike, task: str | None = None) -> bytes:
    """The saved model directory `path` as the bytes of one packed safetensors file (the replica payload).

    Reads only `TEXT_FILES` and the weights; checks the safe-loading rules first (`check_files`). Deterministic:
    the same directory always gives the same bytes (the same sha256).
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path} is not a directory")
    files = _read_text_files(path)
    if "config.json" not in files:
        raise CheckpointError(
            f"{path} has no config.json: it is not a saved transformers model (save one with "
            "model.save_pretrained(dir) and processor.save_pretrained(dir))"
        )
    check_files(files, path)
    return _with_files(_weights_bytes(path), files, path, task)


# ---------------------------------------------------------------------------------------------------------------
# the Hugging Face cache


def resolve_hub_name(name: str) -> str:
    """`hf/<owner>/<repo>[@revision]` -> the directory of its snapshot in the local Hugging Face cache.

    Never downloads (`local_files_only=True`): deployments are offline. `ModelLoadError` when it is not cached.
    """
    repo = name[3:] if name.startswith("hf/") else name
    repo, _, revision = repo.partition("@")
    if not repo or repo.count("/") > 1 or any(part in ("", ".", "..") for part in repo.split("/")):
        raise ModelLoadError(f"{name!r} is not a Hugging Face model name; expected hf/<owner>/<repo>[@revision]")
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:
        raise ModelLoadError(f"hf/ models need the transformers extra: {EXTRA} ({exc})") from None
    try:
        return snapshot_download(repo, revision=revision or None, local_files_only=True)
    except LocalEntryNotFoundError:
        raise ModelLoadError(
            f"hf/{repo} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and deployments never "
            f"download. On a machine with network access run `hf download {repo}` (huggingface_hub's CLI), then "
            "copy its cache directory to this machine (or point HF_HOME / HF_HUB_CACHE at it); or save the model "
            "with save_pretrained(dir) and deploy the directory, or a file made by `pipeline convert`."
        ) from None


# ---------------------------------------------------------------------------------------------------------------
# safe-loading rules


def _walk(obj: Any, path: str = ""):
    """Every (json path, dict) in a JSON value, the value itself first."""
    if isinstance(obj, dict):
        yield path, obj
        for k, v in obj.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")


def _parse_json(files: dict[str, str], where: str) -> dict[str, Any]:
    parsed = {}
    for name, text in files.items():
        if not name.endswith(".json"):
            continue
        try:
            parsed[name] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{where}/{name} is not valid JSON ({exc})") from None
    if not isinstance(parsed.get("config.json"), dict):
        raise CheckpointError(f"{where} has no config.json object")
    return parsed


def _check_backbone(node: dict[str, Any], at: str, where: str) -> None:
    backbone = node.get("backbone")
    if not isinstance(backbone, str) or node.get("backbone_config") is not None:
        return
    # a timm model name ("resnet50") is built by timm from code, without weights (transformers 5 drops
    # use_pretrained_backbone: the weights come from the file); anything else is a Hub repository to look up
    if node.get("use_timm_backbone") is False or "/" in backbone or ":" in backbone:
        raise CheckpointError(
            f"{where}/config.json ({at or 'top level'}) names its backbone {backbone!r} without a "
            "backbone_config: transformers would fetch that backbone from the Hugging Face Hub, and deployments "
            "never download. Save the model with its backbone_config (a model built from a full config), or "
            "deploy a model whose directory carries every weight."
        )


def check_files(files: dict[str, str], where: str) -> dict[str, Any]:
    """Apply the safe-loading rules to a model's files (name -> text); return the parsed JSON files.

    Refused (`CheckpointError`): `auto_map` anywhere (custom code that needs `trust_remote_code`), a processor or
    tokenizer class that transformers does not ship, a backbone that would be fetched from the Hub by name.
    """
    parsed = _parse_json(files, where)
    for name, obj in parsed.items():
        for at, node in _walk(obj):
            if "auto_map" in node:
                raise CheckpointError(
                    f"{where}/{name} has an auto_map ({at or 'top level'}): the model needs custom code from its "
                    "repository (trust_remote_code), which is never run. Use a model whose architecture ships with "
                    "transformers."
                )
            if name == "config.json":
                _check_backbone(node, at, where)
    transformers = import_transformers()
    for name, key in (("preprocessor_config.json", "image_processor_type"), ("processor_config.json",
                      "processor_class"), ("tokenizer_config.json", "tokenizer_class")):
        cls = (parsed.get(name) or {}).get(key)
        if isinstance(cls, str) and not hasattr(transformers, cls.removesuffix("Fast")):
            raise CheckpointError(
                f"{where}/{name}: {key} {cls!r} is not a class of transformers {transformers.__version__} (custom "
                "code is never run; a newer transformers may know it)"
            )
    return parsed


def _explicit_timm_backbone(node: dict[str, Any]) -> dict[str, Any]:
    """A timm backbone in the form transformers 4.38 to 4.x saved it (DETR, Conditional / Deformable DETR, Table
    Transformer: `backbone: "resnet50"`, `use_timm_backbone: true`, `backbone_kwargs: {"out_indices": [1, 2, 3, 4],
    "in_chans": 3}`, no `backbone_config`), rewritten as the explicit `timm_backbone` sub-config transformers 5
    saves. transformers 5 reads the old form only after asking the Hub whether the timm name is a repository (a
    request, which an offline deployment refuses), so every DETR fine-tuned with those versions would be refused;
    the timm model it then builds is the one this sub-config builds. A null `backbone_kwargs` (which transformers
    5 cannot read) is dropped; an empty one is left to transformers' own conversion and its per-model defaults."""
    if node.get("backbone_config") is not None or "backbone_kwargs" not in node:
        return node
    kwargs = node["backbone_kwargs"]
    backbone = node.get("backbone")
    if not kwargs:
        return {k: v for k, v in node.items() if k != "backbone_kwargs"}
    if (not node.get("use_timm_backbone") or not isinstance(backbone, str) or not isinstance(kwargs, dict)
            or "out_indices" not in kwargs):
        return node
    sub = {"model_type": "timm_backbone", "backbone": backbone, "features_only": True,
           "use_pretrained_backbone": False, "out_indices": list(kwargs["out_indices"]),
           "num_channels": kwargs.get("in_chans", kwargs.get("num_channels", node.get("num_channels", 3)))}
    if kwargs.get("output_stride") is not None:
        sub["output_stride"] = kwargs["output_stride"]
    out = {k: v for k, v in node.items() if k not in ("backbone", "backbone_kwargs", "use_timm_backbone")}
    out["backbone_config"] = sub
    return out


def _no_pretrained_backbone(obj: Any) -> Any:
    """Every `use_pretrained_backbone` off: the backbone's weights are in the file, and no transformers version may
    fetch them at build time."""
    if isinstance(obj, dict):
        return {k: (False if k == "use_pretrained_backbone" else _no_pretrained_backbone(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_no_pretrained_backbone(v) for v in obj]
    return obj


def model_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config.json a model is built from: its backbone weights never fetched (they are in the file), and a
    timm backbone saved by transformers 4 in the explicit form transformers 5 reads offline."""
    return _no_pretrained_backbone(_explicit_timm_backbone(config))


def build_config(config: dict[str, Any], where: str):
    """The `PretrainedConfig` of a parsed config.json, built offline by transformers' own config class.

    Building a config runs no model code, but some configs resolve a backbone by name on the Hub while they are
    built: that request is blocked and reported as the reason the model is refused.
    """
    transformers = import_transformers()
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ModelLoadError(
            f"{where}/config.json: unknown model_type {model_type!r}: transformers {transformers.__version__} "
            "does not know it (a newer transformers may; custom model code is never run)"
        )
    try:
        with offline():
            return CONFIG_MAPPING[model_type].from_dict(model_config(config))
    except (ConnectionError, OSError) as exc:
        raise CheckpointError(
            f"{where}/config.json: building the {model_type} config would fetch something from the Hugging Face "
            f"Hub ({type(exc).__name__}: {str(exc)[:200]}); deployments never download. Save the model with every "
            "sub-config (e.g. backbone_config) in its config.json."
        ) from None
    except Exception as exc:
        raise ModelLoadError(f"{where}/config.json does not build a {model_type} config: {exc}") from None
