"""Model adapters (framework -> code), the checkpoint format, and model specs."""

from workers.models.base import (
    DEFAULT_SETTINGS,
    ModelAdapter,
    ModelSpec,
    get_adapter,
    list_frameworks,
    register_adapter,
)
from workers.models.checkpoint import Checkpoint, load_checkpoint, parse_checkpoint, read_bytes, save_checkpoint

__all__ = [
    "DEFAULT_SETTINGS",
    "Checkpoint",
    "ModelAdapter",
    "ModelSpec",
    "get_adapter",
    "list_frameworks",
    "load_checkpoint",
    "parse_checkpoint",
    "read_bytes",
    "register_adapter",
    "save_checkpoint",
]
