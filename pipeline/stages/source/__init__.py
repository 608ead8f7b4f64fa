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

import json
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

__all__ = ["SourcePlan", "VideoFrames", "check_same_source", "resolve_source", "source_identity"]


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


def source_identity(args: PredictArgs) -> str | None:
    """What a run's input is, as a job records it, so that a job id given again on another input is refused
    instead of "resuming" it (skipping nothing of the new input and mixing the two in the outputs): local paths as
    given ("input", normalised) and made absolute ("where"), URLs and URIs, platform ids, `recursive`, the video
    frame selection and the tracker with its settings. None for arrays and images given in memory, which have no
    identity beyond their position."""
    ident: dict[str, object] = {}
    given = getattr(args, "input", None)
    if given is not None:
        values = list(given) if isinstance(given, list | tuple) else [given]
        names, where = [], []
        for v in values:
            if not isinstance(v, str | os.PathLike):
                return None
            text = os.fspath(v)
            local = "://" not in text
            names.append(os.path.normpath(text) if local else text)
            where.append(os.path.realpath(os.path.expanduser(text)) if local else text)
        many = isinstance(given, list | tuple)
        ident["input"] = names if many else names[0]
        ident["where"] = where if many else where[0]
        ident["recursive"] = bool(getattr(args, "recursive", False))
    for key in ("project_id", "dataset_id", "image_ids", "video_id"):
        value = getattr(args, key, None)
        if value is not None:
            ident[key] = [int(v) for v in value] if isinstance(value, list | tuple) else int(value)
    frames = getattr(args, "video_params", None)
    if frames:
        ident["frames"] = {k: v for k, v in frames.items() if k != "tracker"}
    tracking = getattr(args, "tracking", None)
    if tracking is not None and hasattr(tracking, "tracker"):  # a resumed job re-tracks: with the same tracker
        ident["tracker"] = {"name": tracking.tracker, "settings": dict(getattr(tracking, "settings", {}) or {})}
    return json.dumps(ident, sort_keys=True, default=str)


def check_same_source(job_id: str, recorded: str | None, given: str | None) -> None:
    """`InvalidArgumentError` when job `job_id` recorded another input than this run's (either unknown: no check,
    as for jobs of earlier versions). Local paths match when they are the same files (`where`), or, in the folder
    Ray unpacks a submitted job into, when written the same (each submission gets another such folder)."""
    if recorded is None or given is None or recorded == given:
        return
    try:
        old, new = json.loads(recorded), json.loads(given)
    except ValueError:
        old, new = {"input": recorded}, {"input": given}
    rest_old = {k: v for k, v in old.items() if k not in ("input", "where")}
    rest_new = {k: v for k, v in new.items() if k not in ("input", "where")}
    same_files = "where" in old and old.get("where") == new.get("where")
    same_input = same_files or (_in_job_folders(old) and _in_job_folders(new) and old.get("input") == new.get("input"))
    if rest_old == rest_new and same_input:
        return
    raise InvalidArgumentError(
        f"job {job_id!r} was started on another input ({_shown(old)}); this run's is {_shown(new)}. A job "
        "resumes only on its own input (the same files, frame selection and tracker): give a new job_id (or none) "
        "for this one"
    )


def _in_job_folders(ident: dict) -> bool:
    """Whether every local path of an identity lies in the working folder Ray unpacks a submitted job into (another
    one each time it is submitted): there a relative path, written the same, names the same files."""
    where = ident.get("where")
    paths = where if isinstance(where, list) else [where] if where is not None else []
    return bool(paths) and all("/runtime_resources/working_dir_files/" in str(p) for p in paths)


def _shown(ident: dict) -> str:
    shown = {k: v for k, v in ident.items() if k != "input" or "where" not in ident}
    return ", ".join(f"{k}={v!r}" for k, v in shown.items() if k != "recursive" or v)
