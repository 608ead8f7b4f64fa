"""What a `deploy(model=...)` argument names: a checkpoint file (any `pyarrow.fs` URI) or a pretrained model
`"<framework>/<name>"`, resolved in the driver into the `ModelSpec` replicas are built from (and the bytes they
load), checked before any replica starts."""

from __future__ import annotations

import os
from typing import Any

from pipeline.exceptions import ModelLoadError

__all__ = ["resolve_model"]


def resolve_model(model: str | os.PathLike) -> tuple[Any, bytes | None]:
    """A model argument -> (ModelSpec, checkpoint bytes or None for pretrained)."""
    from workers.models import get_adapter
    from workers.models.base import ModelSpec
    from workers.models.checkpoint import parse_checkpoint, read_bytes

    text = os.fspath(model) if not isinstance(model, str) else model
    looks_pretrained = (
        "/" in text
        and "://" not in text
        and text.count("/") == 1
        and not text.startswith((".", "/", "~"))
        and not os.path.exists(text)
        and not text.endswith((".pth", ".pt", ".ckpt", ".bin"))
    )
    if looks_pretrained:
        framework, name = text.split("/", 1)
        try:
            adapter = get_adapter(framework)
        except ModelLoadError as exc:
            raise ModelLoadError(
                f"{exc}. {text!r} was read as a pretrained model '<framework>/<name>'; if it is a checkpoint "
                "file, it does not exist"
            ) from None
        return adapter.resolve_pretrained(name), None
    data = read_bytes(text)
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
