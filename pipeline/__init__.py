"""Distributed batch inference for computer-vision models on Ray.

    import pipeline
    api = pipeline.Api()
    model = api.nn.deploy(model="checkpoints/shapes.pth")
    predictions = model.predict(input="images/")

The names below are loaded on first use (PEP 562): importing `pipeline.exceptions` inside a Ray worker loads
nothing else of the driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline.exceptions import (
    CheckpointError,
    ConfigError,
    DeploymentError,
    DiskFullError,
    FormatError,
    InvalidArgumentError,
    ModelLoadError,
    NotFoundError,
    PipelineError,
    RunError,
    UploadError,
)

if TYPE_CHECKING:
    from pipeline.api import Api
    from pipeline.prediction import Prediction, UploadTarget
    from pipeline.stages.session import PredictionSession

__version__ = "0.1.0"

__all__ = [
    "Api",
    "CheckpointError",
    "ConfigError",
    "DeploymentError",
    "DiskFullError",
    "FormatError",
    "InvalidArgumentError",
    "ModelLoadError",
    "NotFoundError",
    "PipelineError",
    "Prediction",
    "PredictionSession",
    "RunError",
    "UploadError",
    "UploadTarget",
]

_LAZY = {
    "Api": "pipeline.api",
    "Prediction": "pipeline.prediction",
    "UploadTarget": "pipeline.prediction",
    "PredictionSession": "pipeline.stages.session",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
