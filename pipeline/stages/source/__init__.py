"""Stage 1, source: the arguments -> a lazy stream of item descriptors.

Nothing here reads pixels. Directories and projects are walked lazily, one folder (or one page of 1,000 platform
rows) at a time, so a 100,000-image input is never listed into memory as images and the first batch can be
predicted while the walk goes on. `SourcePlan.count()` gives the total for progress bars with a names-only pass.

    files.py     directories, local Supervisely project folders, paths / URLs / arrays / lists
    objects.py   object-store prefixes and objects (s3://, gs://, hdfs://: any pyarrow.fs URI)
    platform.py  platform images, datasets and projects
    video.py     video files, platform videos, the videos of a directory
"""

from __future__ import annotations

import os

import numpy as np

from pipeline.exceptions import InvalidArgumentError
from pipeline.stages.args import PredictArgs
from pipeline.stages.source.files import directory_plan, loose_plan, sly_project_plan
from pipeline.stages.source.objects import object_plan
from pipeline.stages.source.plan import SourcePlan, abs_path
from pipeline.stages.source.platform import platform_plan
from pipeline.stages.source.video import VideoFrames, platform_video_plan, video_file_plan
from workers.formats import is_url, is_video_file
from workers.objects import is_object_uri

__all__ = ["SourcePlan", "VideoFrames", "resolve_source"]


def resolve_source(args: PredictArgs, platform: object) -> SourcePlan:
    """Turn validated arguments into a `SourcePlan`. Raises before any work for inputs that cannot be read."""
    if args.from_platform:
        if args.video_id is not None:
            return platform_video_plan(args, platform)
        return platform_plan(args, platform)
    value = args.input
    if isinstance(value, str | os.PathLike):
        text = os.fspath(value)
        if is_url(text):
            return loose_plan([text], "a URL")
        if is_object_uri(text):
            return object_plan(text, args.recursive)
        path = abs_path(text[len("file://"):] if text.startswith("file://") else text)
        if not os.path.exists(path):
            raise InvalidArgumentError(f"input path does not exist: {text}")
        if os.path.isdir(path):
            if os.path.isfile(os.path.join(path, "meta.json")):
                return sly_project_plan(path)
            return directory_plan(path, args.recursive)
        if is_video_file(path):
            return video_file_plan(path, args)
        plan = loose_plan([value], "an image file")
        plan.name = os.path.splitext(os.path.basename(path))[0] or "Predictions"
        return plan
    if isinstance(value, list | tuple):
        if not value:
            raise InvalidArgumentError("input is an empty list")
        return loose_plan(list(value), f"a list of {len(value)} inputs")
    if isinstance(value, np.ndarray) and value.ndim == 4:
        return loose_plan(list(value), f"a batch of {len(value)} arrays")
    return loose_plan([value], f"a {type(value).__name__}")
