"""Every error this package raises on purpose.

    PipelineError                       base of everything below
    ├── InvalidArgumentError(ValueError)   a wrong argument or argument combination, raised before any work
    │   └── ConfigError                    a YAML pipeline that does not validate (names the key and line)
    ├── NotFoundError(KeyError)            an id, task id or file that does not exist (names it)
    ├── FormatError(ValueError)            a malformed file: project folder, annotation JSON, image, video
    ├── CheckpointError(ValueError)        a file that is not a loadable checkpoint (or would run code)
    ├── ModelLoadError                     a checkpoint or pretrained model that could not be built
    ├── DeploymentError                    replicas that could not start, or asked for a device the cluster lacks
    └── RunError                           an error that ended a whole prediction run
        └── UploadError                    the upload stage could not write (database or disk unusable)
            └── DiskFullError              the disk of the platform's data dir is full (names it, says what to do)

Each message says what was wrong and what to change, e.g.
"upload='append' needs platform items (project_id, dataset_id or image_ids); got a directory".
"""

from __future__ import annotations

__all__ = [
    "PipelineError",
    "InvalidArgumentError",
    "ConfigError",
    "NotFoundError",
    "FormatError",
    "CheckpointError",
    "ModelLoadError",
    "DeploymentError",
    "UploadError",
    "DiskFullError",
    "RunError",
]


class PipelineError(Exception):
    """Base class of every error raised on purpose by this package."""


class InvalidArgumentError(PipelineError, ValueError):
    """A wrong argument or argument combination; raised before any work starts."""


class ConfigError(InvalidArgumentError):
    """A pipeline config that does not load or validate."""


class NotFoundError(PipelineError, KeyError):
    """An id (project, dataset, image, video, task) or a file that does not exist."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class FormatError(PipelineError, ValueError):
    """A malformed input file: project folder, annotation JSON, image or video."""


class CheckpointError(PipelineError, ValueError):
    """A file that is not a loadable pipeline checkpoint."""


class ModelLoadError(PipelineError):
    """A model that could not be built from its checkpoint or pretrained weights."""


class DeploymentError(PipelineError):
    """Replicas that could not be started or reached."""


class RunError(PipelineError):
    """An error that ended a whole prediction run (not a single item's error)."""


class UploadError(RunError):
    """The upload stage could not write (the database or the disk is unusable); the run ends."""


class DiskFullError(UploadError):
    """The disk holding the platform's data dir is full: nothing more can be written there, so the run ends (a
    full disk is never one item's error: every later item would fail the same way)."""
