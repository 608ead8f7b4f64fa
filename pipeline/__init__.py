"""Distributed batch inference for computer-vision models on Ray.

    import pipeline
    api = pipeline.Api()
    model = api.nn.deploy(model="checkpoints/shapes.pth")
    predictions = model.predict(input="images/")
"""

from pipeline.api import Api
from pipeline.exceptions import (
    CheckpointError,
    ConfigError,
    DeploymentError,
    FormatError,
    InvalidArgumentError,
    ModelLoadError,
    NotFoundError,
    PipelineError,
    RunError,
    UploadError,
)
from pipeline.prediction import Prediction, UploadTarget
from pipeline.stages.session import PredictionSession

__version__ = "0.1.0"

__all__ = [
    "Api",
    "CheckpointError",
    "ConfigError",
    "DeploymentError",
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
